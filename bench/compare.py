"""Criteria compared at 2x, 4x, 10x and 20x fewer MACs (dplib.compare), resumable.

    python bench/compare.py                                  # the cpu run: LeNets, 3 seeds
    python bench/compare.py --setups fashion_mnist32-resnet20   # resnet20 (about an hour)
    python bench/compare.py --setups mnist5k-lenet300 --seeds 0

Results are cached under runs/compare/<dataset>-<model>/seed<k>/ (a rerun continues where it
stopped); the raw rows go to runs/compare/<dataset>-<model>/rows.json, the figures
(compare_<model>_<dataset>.png, settling_<dataset>-<model>.png) and the table (compare.md) to
figures/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dplib import compare  # noqa: E402
from dplib.artefacts import atomic_write_text, read_json, write_json  # noqa: E402
from dplib.files import atomic_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def save_png(figure: plt.Figure, path: Path) -> None:
    """Write ``figure`` as a PNG atomically and close it."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=130, metadata={"Software": None})
    plt.close(figure)


def report(result: dict, out: Path) -> str:
    """Figures of one setup; returns its Markdown section."""
    setup = compare.SETUPS[result["setup"]]
    summary = compare.summarise(result["rows"])
    base = result["bases"]
    val = [b["val"] for b in base]
    title = f"{setup.model} on {setup.dataset}"
    save_png(
        compare.plot_comparison(summary, title), out / f"compare_{setup.model}_{setup.dataset}.png"
    )
    section = compare.markdown_table(summary, f"{title} ({len(base)} seeds)")
    section += (
        f"\nBase network: {100 * sum(val) / len(val):.2f}% validation accuracy (mean over "
        f"seeds), {base[0]['params']:,} params, {base[0]['macs']:,} MACs; fine-tuning "
        f"{setup.finetune_epochs} epoch(s) at lr {compare.FINETUNE_LR}, constant.\n\n"
        "Dirichlet (own allocation) minus the best other criterion, validation, points:\n\n"
    )
    for margin in compare.dirichlet_margins(summary):
        section += (
            f"- {margin['budget']}: after pruning {100 * margin['pruned_val']:+.2f} "
            f"(best other: {margin['pruned_val_best_other']}), after fine-tuning "
            f"{100 * margin['finetuned_val']:+.2f} (best other: "
            f"{margin['finetuned_val_best_other']})\n"
        )
    if result["settling"]:
        save_png(
            compare.plot_settling(result["settling"], f"how fast the ranking settles: {title}"),
            out / f"settling_{setup.name}.png",
        )
        section += "\nKendall tau with the final ranking (mean over seeds) at 10%, 25%, 50% of "
        section += "importance learning: "
        section += "; ".join(
            f"{layer} " + " / ".join(f"{v:.2f}" for v in taus.values())
            for layer, taus in compare.settling_summary(result["settling"]).items()
        )
        section += "\n"
    return section


def goal_lines(name: str, result: dict) -> list[str]:
    """Rows of the goals table: Dirichlet against the best other criterion, own allocation."""

    def pct(pair) -> str:
        return f"{100 * pair[0]:.2f} ± {100 * pair[1]:.2f}"

    lines = []
    summary = compare.summarise(result["rows"])
    for m in compare.dirichlet_margins(summary):
        if m["budget"] == "2x":
            continue
        lines.append(
            f"| {name} | {m['budget']} | {len(result['bases'])} "
            f"| {pct(m['pruned_val_dirichlet'])} "
            f"| {m['pruned_val_best_other']} {pct(m['pruned_val_other'])} "
            f"| {pct(m['finetuned_val_dirichlet'])} "
            f"| {m['finetuned_val_best_other']} {pct(m['finetuned_val_other'])} "
            f"| {100 * m['pruned_val']:+.2f} / {100 * m['finetuned_val']:+.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--setups", nargs="+", default=list(compare.DEFAULT_SETUPS), choices=list(compare.SETUPS)
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", default=list(compare.BUDGETS))
    parser.add_argument("--criteria", nargs="+", default=None)
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "compare")
    parser.add_argument("--out", type=Path, default=ROOT / "figures")
    args = parser.parse_args()
    for name in args.setups:
        started = time.perf_counter()
        result = compare.run_setup(
            compare.SETUPS[name],
            args.root,
            seeds=args.seeds,
            budgets=args.budgets,
            criteria=args.criteria
            or compare.criteria_for(compare.SETUPS[name].model, torch_pruning=True),
            log=lambda line: print(line, flush=True),
        )
        write_json(args.root / name / "rows.json", result)
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    # The table and figures cover every setup with results, so that a run of one setup (or one
    # seed at a time) keeps the others' sections.
    sections, goals = [], []
    for name in compare.SETUPS:
        rows = args.root / name / "rows.json"
        if rows.exists():
            result = read_json(rows)
            sections.append(report(result, args.out))
            goals += goal_lines(name, result)
    header = [
        "# Criteria compared at a MAC budget (`make compare`)\n",
        "Own allocation, validation accuracy %, mean ± std over seeds; the best other criterion "
        "is the one with the highest mean. Goal: Dirichlet at least as high after fine-tuning "
        "and highest right after pruning, at 4x, 10x and 20x fewer MACs.\n",
        "| setup | budget | seeds | Dirichlet after pruning | best other | Dirichlet after "
        "fine-tune | best other | lead after pruning / after fine-tune (points) |",
        "|---|---|---|---|---|---|---|---|",
        *goals,
        "",
    ]
    sections = ["\n".join(header)] + sections
    atomic_write_text(args.out / "compare.md", "\n".join(sections))
    print(json.dumps({"written": str(args.out / "compare.md")}))


if __name__ == "__main__":
    main()
