"""The measured LeNet-5 pipeline on full Fashion-MNIST (issue: the dplib core).

Pretrain LeNet-5, learn Dirichlet importance for one epoch, and for three width settings (about
2x, 10x and 20x fewer MACs) plus the three of notebooks/METHOD.md section 7, prune with every
criterion, fine-tune for one epoch, and report validation and test accuracy right after pruning
and after fine-tuning, params, MACs, measured CPU speed-up, the Spearman correlation of each
criterion with the oracle per layer, and the importance-learning time as a fraction of one
training epoch. Nothing is tuned on the test split; test numbers are reported, never used.

    python bench/lenet_pipeline.py            # about 15 minutes on 2 CPU cores
    python bench/lenet_pipeline.py --quick    # a 2-minute sanity run on a data subset

Artefacts (checkpoint, importances) are cached under runs/bench/; results go to
figures/bench/lenet_pipeline.{json,md,png} (a --quick run's stay under runs/bench/).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import dplib  # noqa: E402
from dplib.experiments import compare  # noqa: E402
from dplib.experiments.cache import cached  # noqa: E402
from dplib.experiments.experiment import pretrain, prune_and_finetune, score  # noqa: E402
from dplib.experiments.figures import save_png  # noqa: E402
from dplib.files import atomic_write_text, write_json  # noqa: E402
from dplib.measure import spearman  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = {
    "2x": "14-35-350",
    "10x": "6-12-100",
    "20x": "4-8-50",
    "method 10-25-250": "10-25-250",
    "method 5-10-76": "5-10-76",
    "method 3-6-30": "3-6-30",
}
# The Dirichlet settings measured: the method as specified (notebooks/METHOD.md sections 2-3), the
# reference code's gate without the factor K (notebooks/METHOD.md section 7), and the kit's defaults
# (chosen by the study, notebooks/05_study).
# the comparison's LeNet-5 on Fashion-MNIST (its cache is the cpu profile's), speed-ups measured
EXPERIMENT = compare.SETUPS["fashion_mnist-lenet5"].replace(speedup_batch=64, speedup_repeats=30)
LAYOUT = {"channels_last": EXPERIMENT.importance.channels_last}  # the base network's memory
DIRICHLET = {
    "dirichlet": dplib.DirichletSettings.as_specified().replace(**LAYOUT),
    "dirichlet_noK": dplib.DirichletSettings.as_specified().replace(scale="none", **LAYOUT),
    "dirichlet_kit": dplib.DirichletSettings(**LAYOUT),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small subset, for a sanity run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    experiment, root = EXPERIMENT, ROOT / "runs" / "cpu"
    if args.quick:  # a sanity check, not a result: it stays out of figures/
        experiment, root = (
            experiment.replace(subset=4000, eval_subset=1000),
            ROOT / "runs" / "bench",
        )
    base = pretrain(experiment, root, args.seed)
    print(f"data: {base.loaders.splits.source}; sizes {base.loaders.splits.sizes}")
    importances = {
        name: score(
            dataclasses.replace(base, experiment=experiment.replace(importance=settings)),
            "dirichlet",
        )
        for name, settings in DIRICHLET.items()
    }
    importances |= {name: score(base, name) for name in ("l1", "taylor", "random")}
    oracle = cached(
        base.folder / "oracle-validation.pt",
        {"base": base.key},
        lambda: (dplib.criteria.compute("oracle", base.model, base.loaders.val), {}),
        save=lambda importance, path: importance.save(path),
        load=lambda path, _: dplib.Importance.load(path),
    ).value
    rows = [
        prune_and_finetune(base, criterion, importance, widths) | {"setting": setting}
        for setting, widths in WIDTHS.items()
        for criterion, importance in {**importances, "oracle": oracle}.items()
    ]
    results = {
        "command": "python bench/lenet_pipeline.py" + (" --quick" if args.quick else ""),
        "data": base.loaders.splits.source,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "base": base.metrics,
        "importance_fraction_of_epoch": {
            name: importances[name].history["seconds"] / base.metrics["seconds_per_epoch"]
            for name in DIRICHLET
        },
        "dirichlet_settings": {name: s.to_dict() for name, s in DIRICHLET.items()},
        "spearman_with_oracle": {
            criterion: {name: spearman(imp.scores[name], oracle.scores[name]) for name in imp.names}
            for criterion, imp in importances.items()
        },
        "rows": rows,
    }
    out = runs_folder(root, args) if args.quick else ROOT / "figures" / "bench"
    write_json(out / "lenet_pipeline.json", results)
    write_markdown(results, out / "lenet_pipeline.md")
    plot(results, out / "lenet_pipeline.png")
    print((out / "lenet_pipeline.md").read_text())


def runs_folder(root: Path, args: argparse.Namespace) -> Path:
    """Where a quick run's results go (under runs/, never figures/)."""
    return root / f"lenet_pipeline-quick-seed{args.seed}"


def write_markdown(results: dict, path: Path) -> None:
    """The results as markdown tables."""
    base = results["base"]
    lines = [
        "# LeNet-5 on Fashion-MNIST: criteria through the same surgery",
        "",
        f"`{results['command']}` (torch {results['torch']}, {results['threads']} threads). "
        f"Base: val {base['val']:.4f}, test {base['test']:.4f}, {base['params']:,} params, "
        f"{base['macs']:,} MACs, {base['seconds_per_epoch']:.1f} s per training epoch.",
        "",
        "Importance learning (1 epoch) as a fraction of one training epoch: "
        + ", ".join(f"{k} {v:.2f}" for k, v in results["importance_fraction_of_epoch"].items()),
        "",
        "Accuracy (%): validation right after pruning / after 1 epoch of fine-tuning "
        "[test after fine-tuning].",
        "",
    ]
    criteria = list(dict.fromkeys(row["criterion"] for row in results["rows"]))
    lines.append("| widths | params | MACs (ratio) | speed-up b64 | " + " | ".join(criteria) + " |")
    lines.append("|---" * (4 + len(criteria)) + "|")
    for widths in dict.fromkeys(row["widths"] for row in results["rows"]):
        rows = {r["criterion"]: r for r in results["rows"] if r["widths"] == widths}
        first = next(iter(rows.values()))
        cells = [
            f"{100 * rows[c]['pruned_val']:.1f} / {100 * rows[c]['finetuned_val']:.2f} "
            f"[{100 * rows[c]['finetuned_test']:.2f}]"
            for c in criteria
        ]
        lines.append(
            f"| {widths} | {first['params']:,} | {first['macs']:,} "
            f"({first['base_macs'] / first['macs']:.1f}x) | {first['speedup']:.2f}x | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", "Spearman correlation with the oracle (validation loss increase), per layer:", ""]
    layers = list(next(iter(results["spearman_with_oracle"].values())))
    lines.append("| criterion | " + " | ".join(layers) + " |")
    lines.append("|---" * (1 + len(layers)) + "|")
    for criterion, values in results["spearman_with_oracle"].items():
        lines.append(f"| {criterion} | " + " | ".join(f"{values[k]:.2f}" for k in layers) + " |")
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot(results: dict, path: Path) -> None:
    """Validation accuracy against MACs, before and after fine-tuning, one line per criterion."""
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    rows = sorted(results["rows"], key=lambda r: r["macs"])
    for criterion in dict.fromkeys(r["criterion"] for r in rows):
        mine = [r for r in rows if r["criterion"] == criterion]
        for axis, key in zip(axes, ("pruned_val", "finetuned_val"), strict=True):
            axis.plot(
                [r["macs"] for r in mine], [100 * r[key] for r in mine], marker="o", label=criterion
            )
    for axis, title in zip(
        axes, ("right after pruning", "after 1 epoch of fine-tuning"), strict=True
    ):
        axis.set_xscale("log")
        axis.set_xlabel("MACs per image")
        axis.set_ylabel("validation accuracy (%)")
        axis.set_title(f"LeNet-5 / Fashion-MNIST, {title}")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    save_png(figure, path)


if __name__ == "__main__":
    sys.exit(main())
