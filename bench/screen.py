"""Dirichlet settings screened over seeds on what pruning needs: how the defaults were chosen.

    python bench/screen.py                                   # every candidate, 4 LeNets, 3 seeds
    python bench/screen.py --setups mnist5k-lenet300 --seeds 0 --candidates variational lr0.3

Each candidate learns Dirichlet importance on the comparison's base networks
(``dplib.experiments.compare.SETUPS``, cached under runs/cpu, shared with make compare) and is
pruned to the comparison's ``uniform`` widths (the uniform allocation) at 4x, 10x and 20x fewer
MACs: validation accuracy right after pruning against the best other criterion at the same
widths, the posterior's spread, the ranking's late change and the importance's cost. Writes
bench/results/screen.json (every row) and prints the summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import pandas as pd

from dplib import find_prunable_layers
from dplib.experiments import cifar, compare, reports
from dplib.experiments.experiment import pretrain, prune_and_finetune, score
from dplib.files import atomic_write_text, read_json, write_json
from dplib.settings import DirichletSettings

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("l1", "taylor", "random", "tp_l2", "tp_taylor")
SETUPS = compare.SETUPS | cifar.SETUPS  # CIFAR-10's under --root runs/cifar
CANDIDATES: dict[str, dict] = {
    "variational": {},
    "lr0.3": {"lr": 0.3},
    "lr1": {"lr": 1.0},
    "phi10": {"phi_init": 10.0},
    "phi10-lr0.3": {"phi_init": 10.0, "lr": 0.3},
    "phi30": {"phi_init": 30.0},
    "phi50": {"phi_init": 50.0},
    "lr0.2": {"lr": 0.2},
    "phi50-lr0.2": {"phi_init": 50.0, "lr": 0.2},
    "phi3": {"phi_init": 3.0},
    "kl0": {"kl_weight": 0.0},
    "phi10-kl0": {"phi_init": 10.0, "kl_weight": 0.0},
    "point": {"estimator": "point"},
    "scale-none": {"scale": "none"},
    "authors": "authors",
    "authors-joint": "authors-joint",
    "authors-split": "authors-split",
    # the authors' recipe (the setup's BatchNorm mode and precision) with knobs changed;
    # "epochs_factor" scales the setup's epochs per layer; the defaults are "authors-lr3e-2"
    "authors-lr3e-3": ("authors", {"lr": 3e-3}),
    "authors-lr1e-2": ("authors", {"lr": 1e-2}),
    "authors-lr3e-2": ("authors", {"lr": 3e-2}),
    "authors-lr1e-1": ("authors", {"lr": 0.1}),
    "authors-lr3e-2-half-epochs": ("authors", {"lr": 3e-2, "epochs_factor": 0.5}),
    "authors-lr3e-2-quarter-epochs": ("authors", {"lr": 3e-2, "epochs_factor": 0.25}),
    "authors-lr1e-2-2x-epochs": ("authors", {"lr": 1e-2, "epochs_factor": 2.0}),
    "authors-lr1e-2-quarter-epochs": ("authors", {"lr": 1e-2, "epochs_factor": 0.25}),
    "authors-sample": ("authors", {"estimator": "sample"}),
    "authors-2x-epochs": ("authors", {"epochs_factor": 2.0}),
    "authors-half-epochs": ("authors", {"epochs_factor": 0.5}),
    "authors-quarter-epochs": ("authors", {"epochs_factor": 0.25}),
}


def settings_for(name: str, setup: DirichletSettings, layers: int) -> DirichletSettings:
    """A candidate's settings at the ``setup``'s importance epochs (``authors``: that many per
    layer; ``authors-split``: that many in all, shared by the ``layers``); the other
    ``authors-*`` candidates change the authors' learning rate and epochs in the setup's own
    settings (its BatchNorm mode and precision kept)."""
    changes, epochs = CANDIDATES[name], setup.epochs
    if isinstance(changes, tuple):
        knobs = {"lr": DirichletSettings.authors().lr} | changes[1]
        factor = knobs.pop("epochs_factor", 1.0)
        return setup.replace(epochs=epochs * factor, **knobs)
    if changes == "authors":
        return DirichletSettings.authors().replace(epochs=epochs)
    if changes == "authors-split":
        return DirichletSettings.authors().replace(epochs=epochs / layers)
    if changes == "authors-joint":
        return DirichletSettings.authors().replace(epochs=epochs, layerwise=False)
    # every other candidate changes DirichletSettings.variational(), the former defaults
    return DirichletSettings.variational().replace(epochs=epochs, **changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--setups", nargs="+", default=list(compare.DEFAULT_SETUPS), choices=list(SETUPS)
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES)
    )
    parser.add_argument(
        "--fresh-peers",
        action="store_true",
        help="score the other criteria on these base networks too (where the committed rows "
        "come from other networks: a base that does not retrain bit for bit)",
    )
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "screen.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "figures" / "study" / "screen.md")
    args = parser.parse_args()
    rows = read_json(args.out)["rows"] if args.out.exists() else []
    done = {(r["setup"], r["seed"], r["criterion"], r["candidate"], r["budget"]) for r in rows}
    for name in args.setups:
        experiment = SETUPS[name]
        budgets = cifar.BUDGETS if name in cifar.SETUPS else compare.BUDGETS
        for seed in args.seeds:
            base = pretrain(experiment, args.root, seed)
            jobs = [(peer, None) for peer in PEERS] if args.fresh_peers else []
            jobs += [("dirichlet", candidate) for candidate in args.candidates]
            for criterion, candidate in jobs:
                label = candidate or criterion
                wanted = [b for b in budgets if (name, seed, criterion, label, b) not in done]
                if not wanted:
                    continue
                scored_base = base
                if candidate is not None:
                    layers = len(
                        find_prunable_layers(base.model, coupled=experiment.coupled).layers
                    )
                    settings = settings_for(candidate, experiment.importance, layers)
                    scored_base = dataclasses.replace(
                        base, experiment=experiment.replace(importance=settings)
                    )
                started = time.perf_counter()
                importance = score(scored_base, criterion)
                seconds = importance.history.get("seconds_total", time.perf_counter() - started)
                for budget in wanted:
                    row = prune_and_finetune(
                        base, criterion, importance, budget, "uniform", finetune=False
                    )
                    rows.append(
                        {
                            "setup": name,
                            "seed": seed,
                            "criterion": criterion,
                            "candidate": label,
                            "budget": budget,
                            "pruned_val": row["pruned_val"],
                            "importance_seconds": seconds,
                            "spread": importance.history.get("spread"),
                            "late_change": importance.history.get("late_change"),
                        }
                    )
                write_json(args.out, {"rows": rows})
                accuracies = [r["pruned_val"] for r in rows[-len(wanted) :]]
                print(name, seed, label, [f"{a:.3f}" for a in accuracies], f"{seconds:.1f}s")
    print(json.dumps(summary(rows), indent=1))
    write_markdown(rows, args.markdown)


def committed_peers(rows: list[dict] = ()) -> dict[tuple, dict[str, float]]:
    """The other criteria at the same widths, right after pruning, per (setup, seed, budget),
    from the comparison's committed rows (the base networks are seeded: the same networks), or
    from the screen's own ``rows`` of them where it scored them (``--fresh-peers``)."""
    peers: dict[tuple, dict[str, float]] = {}
    committed = compare.load_results(compare.committed_results(), compare.committed_results())
    committed |= compare.load_results(cifar.committed_results(), cifar.committed_results())
    for name, result in committed.items():
        for r in result["rows"]:
            if r["allocation"] == "uniform" and r["criterion"] in PEERS:
                key = (name, r["seed"], r["budget"])
                peers.setdefault(key, {})[r["criterion"]] = r["pruned_val"]
    fresh: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if r["criterion"] in PEERS:
            fresh.setdefault((r["setup"], r["seed"], r["budget"]), {})[r["criterion"]] = r[
                "pruned_val"
            ]
    return peers | fresh


def leads(rows: list[dict]) -> pd.DataFrame:
    """Per (candidate, setup, budget): the mean over seeds of the validation accuracy right after
    pruning, the best other criterion's at the same seeds, the lead (points) and the seconds."""
    peers = committed_peers(rows)
    table = []
    rows = [r for r in rows if r["criterion"] == "dirichlet"]
    for r in rows:
        others = peers.get((r["setup"], r["seed"], r["budget"]))
        if others:
            table.append({**r, **{f"peer_{c}": v for c, v in others.items()}})
    frame = pd.DataFrame(table)
    keys = ["candidate", "setup", "budget"]
    peer_columns = [c for c in frame.columns if c.startswith("peer_")]
    means = frame.groupby(keys)[["pruned_val", "importance_seconds", *peer_columns]].mean()
    means["seeds"] = frame.groupby(keys).size()
    means["best_other"] = means[peer_columns].max(axis=1)
    means["lead"] = 100 * (means["pruned_val"] - means["best_other"])
    return means.reset_index()


def summary(rows: list[dict]) -> dict:
    """Per candidate: cases at least the best other criterion, mean and worst lead (points)."""
    table = leads(rows)
    result = {}
    for candidate, group in table.groupby("candidate", sort=False):
        result[candidate] = {
            "cases": len(group),
            "at_least": int((group["lead"] >= 0).sum()),
            "mean": round(group["lead"].mean(), 2),
            "worst": round(group["lead"].min(), 2),
            "seconds": round(group["importance_seconds"].median(), 1),
        }
    return result


def write_markdown(rows: list[dict], path: Path) -> None:
    """The screen's two tables: each candidate over every case, and its lead per setup."""
    table = leads(rows)
    lenets = [r for r in rows if r["setup"] in compare.DEFAULT_SETUPS]  # the 12 LeNet cases
    overall = pd.DataFrame.from_dict(summary(lenets), orient="index")
    overall.insert(0, "settings", [describe(c) for c in overall.index])
    per_setup = table.pivot_table(index="candidate", columns="setup", values="lead")
    seconds = table.pivot_table(index="candidate", columns="setup", values="importance_seconds")
    seeds = "/".join(str(n) for n in sorted(set(table["seeds"])))
    text = [
        "# Dirichlet settings screened over seeds",
        "",
        f"Written by `python bench/screen.py` from bench/results/screen.json ({seeds} seeds a "
        "case). Validation accuracy right after pruning at the comparison's `uniform` widths (the "
        "uniform allocation) at 4x, 10x and 20x fewer MACs, mean over seeds, against the best "
        "other criterion (L1, Taylor, random, Torch-Pruning's L2 and Taylor) at the same widths "
        "and seeds, read from the comparison's committed rows. `at_least`: cases where the "
        "candidate is at least as high; `mean`, `worst`: its lead in points (negative: behind); "
        "`seconds`: the median cost of learning the importance. A candidate with 6 cases was "
        "run on the two LeNet-5 setups only. The kit's defaults "
        "(`DirichletSettings()`) are `authors-lr3e-2`; `variational` is the former defaults, "
        "`DirichletSettings.variational()`, which every other candidate changes.",
        "",
        reports.frame_markdown(overall.reset_index(names="candidate")),
        "",
        "Mean lead per setup (points; the ResNet-20s, where run, are not in the table above):",
        "",
        reports.frame_markdown(per_setup.round(2).reset_index()),
        "",
        "ResNet-20 on Fashion-MNIST (32x32, half width, stages pruned as coupled groups) is one "
        "seed, the other criteria scored on the same base network (`--fresh-peers`: it does not "
        "retrain bit for bit, so the comparison's committed rows do not pair); at these widths "
        "every criterion is near chance right after pruning. ResNet-20 on CIFAR-10 "
        "(`--setups cifar10-resnet20 --root runs/cifar`) is three seeds at 2x and 4x fewer MACs "
        "against the committed rows of `figures/cifar.md` (one training epoch: 56.3 s); there "
        "the default keeps its full pass per layer: on the LeNets half of it does as well, on "
        "ResNet-20 half of it leads by less and a quarter of it falls behind.",
        "",
        "Seconds of importance learning (mean over seeds; the authors' recipe learns one layer "
        "at a time, one pass each):",
        "",
        reports.frame_markdown(seconds.round(1).reset_index()),
        "",
    ]
    atomic_write_text(path, "\n".join(text))


def describe(candidate: str) -> str:
    """The settings of a candidate, in words."""
    changes = CANDIDATES[candidate]
    if isinstance(changes, tuple):
        knobs = dict(changes[1])
        factor = knobs.pop("epochs_factor", None)
        changed = [f"{k}={v}" for k, v in knobs.items()]
        changed += [f"{factor:g} x the setup's epochs per layer"] if factor else []
        return f"the authors' recipe, {', '.join(changed)}"
    if isinstance(changes, str):
        return {
            "authors": "DirichletSettings.authors(), the setup's epochs per layer",
            "authors-joint": "DirichletSettings.authors(), layerwise=False",
            "authors-split": "DirichletSettings.authors(), the setup's epochs shared by the layers",
        }[changes]
    changed = ", ".join(f"{k}={v}" for k, v in changes.items())
    return f"variational(), {changed}" if changed else "DirichletSettings.variational()"


if __name__ == "__main__":
    main()
