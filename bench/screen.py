"""Dirichlet settings screened over seeds on what pruning needs (issue: the defaults), resumable.

    python bench/screen.py                                   # every candidate, 4 LeNets, 3 seeds
    python bench/screen.py --setups mnist5k-lenet300 --seeds 0 --candidates defaults lr0.3

Each candidate learns Dirichlet importance on the comparison's base networks
(``dplib.experiments.compare.SETUPS``, cached under runs/cpu, shared with make compare) and is
pruned to the comparison's ``same`` widths (the uniform allocation) at 4x, 10x and 20x fewer
MACs: validation accuracy right after pruning against the best other criterion at the same
widths, the posterior's spread, the ranking's late change and the importance's cost. Writes
bench/results/screen.json (every row) and prints the summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from dplib.experiments import compare
from dplib.experiments.experiment import pretrain, prune_and_finetune, score
from dplib.files import read_json, write_json
from dplib.settings import DirichletSettings

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("l1", "taylor", "random", "tp_l2", "tp_taylor")
CANDIDATES: dict[str, dict] = {
    "defaults": {},
    "lr0.3": {"lr": 0.3},
    "lr1": {"lr": 1.0},
    "phi10": {"phi_init": 10.0},
    "phi10-lr0.3": {"phi_init": 10.0, "lr": 0.3},
    "phi30": {"phi_init": 30.0},
    "phi3": {"phi_init": 3.0},
    "kl0": {"kl_weight": 0.0},
    "phi10-kl0": {"phi_init": 10.0, "kl_weight": 0.0},
    "point": {"estimator": "point"},
    "scale-none": {"scale": "none"},
    "authors": "authors",
    "authors-joint": "authors-joint",
}


def settings_for(name: str, epochs: float) -> DirichletSettings:
    """A candidate's settings at the setup's importance epochs (authors: their own length)."""
    changes = CANDIDATES[name]
    if changes == "authors":
        return DirichletSettings.authors().replace(epochs=epochs)
    if changes == "authors-joint":
        return DirichletSettings.authors().replace(epochs=epochs, layerwise=False)
    return DirichletSettings(epochs=epochs).replace(**changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=list(compare.DEFAULT_SETUPS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--peers", nargs="*", default=list(PEERS))
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "screen.json")
    args = parser.parse_args()
    rows = read_json(args.out)["rows"] if args.out.exists() else []
    done = {(r["setup"], r["seed"], r["criterion"], r["candidate"], r["budget"]) for r in rows}
    for name in args.setups:
        experiment = compare.SETUPS[name]
        for seed in args.seeds:
            base = pretrain(experiment, args.root, seed)
            jobs = [(peer, None) for peer in args.peers]
            jobs += [("dirichlet", candidate) for candidate in args.candidates]
            for criterion, candidate in jobs:
                label = candidate or criterion
                wanted = [
                    b for b in compare.BUDGETS if (name, seed, criterion, label, b) not in done
                ]
                if not wanted:
                    continue
                scored_base = base
                if candidate is not None:
                    settings = settings_for(candidate, experiment.importance.epochs)
                    scored_base = dataclasses.replace(
                        base, experiment=experiment.replace(importance=settings)
                    )
                started = time.perf_counter()
                importance = score(scored_base, criterion)
                seconds = importance.history.get("seconds_total", time.perf_counter() - started)
                for budget in wanted:
                    row = prune_and_finetune(
                        base, criterion, importance, budget, "same", finetune=candidate is None
                    )
                    rows.append(
                        {
                            "setup": name,
                            "seed": seed,
                            "criterion": criterion,
                            "candidate": label,
                            "budget": budget,
                            "pruned_val": row["pruned_val"],
                            "finetuned_val": row.get("finetuned_val"),
                            "importance_seconds": seconds,
                            "spread": importance.history.get("spread"),
                            "late_change": importance.history.get("late_change"),
                        }
                    )
                write_json(args.out, {"rows": rows})
                accuracies = [r["pruned_val"] for r in rows[-len(wanted) :]]
                print(name, seed, label, [f"{a:.3f}" for a in accuracies], f"{seconds:.1f}s")
    print(json.dumps(summary(rows), indent=1))


def summary(rows: list[dict]) -> dict:
    """Per candidate: cases at least the best peer, mean and worst lead (points), seconds."""
    peers: dict[tuple, float] = {}
    for r in rows:
        if r["criterion"] != "dirichlet":
            key = (r["setup"], r["seed"], r["budget"])
            peers.setdefault(key, {})[r["criterion"]] = r["pruned_val"]
    result = {}
    for candidate in dict.fromkeys(r["candidate"] for r in rows if r["criterion"] == "dirichlet"):
        cases: dict[tuple, list[float]] = {}
        for r in rows:
            if r["candidate"] == candidate and (r["setup"], r["seed"], r["budget"]) in peers:
                cases.setdefault((r["setup"], r["budget"]), []).append(
                    (r["pruned_val"], peers[(r["setup"], r["seed"], r["budget"])])
                )
        leads = []
        for pairs in cases.values():
            ours = statistics.mean(p[0] for p in pairs)
            best = max(statistics.mean(p[1][c] for p in pairs) for c in pairs[0][1])
            leads.append(100 * (ours - best))
        if leads:
            result[candidate] = {
                "cases": len(leads),
                "at_least": sum(lead >= 0 for lead in leads),
                "mean": round(statistics.mean(leads), 2),
                "worst": round(min(leads), 2),
            }
    return result


if __name__ == "__main__":
    main()
