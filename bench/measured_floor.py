"""Does a floor keep the measured allocation from starving a layer that fine-tuning then cannot
recover? The measured rule with every layer keeping at least a fraction of its units, on the
comparison's LeNet setups, seeds and budgets, after fine-tuning, paired against the greedy rule's
committed rows (bench/results/compare/).

    python bench/measured_floor.py                      # floors 0 (the rule as it is), 0.05, 0.1
    python bench/measured_floor.py --floors 0.15 --setups fashion_mnist-lenet5

Floor 0 reruns the committed measured rows: it checks that this machine pairs with them. Rows
are cached under runs/cpu/ like the comparison's; the table goes to
figures/study/measured_floor.md, the rows to bench/results/measured_floor.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dplib.budget import BudgetError, Measured
from dplib.experiments import compare, experiment
from dplib.files import atomic_write_text, read_json, write_json

ROOT = Path(__file__).resolve().parent.parent
CRITERIA = ("dirichlet", "l1")


def allocation(floor: float) -> str:
    """The row name of the measured rule with ``floor``, registered with the experiments."""
    if floor == 0:
        return "measured"
    name = f"measured-floor{floor:g}"
    experiment.ALLOCATIONS[name] = lambda base: Measured(
        experiment.recalibration_loader(base), min_keep=floor
    )
    return name


def run(setups: list[str], floors: list[float], seeds: list[int]) -> list[dict]:
    """The rows of every floor, setup, seed, criterion and budget (cached)."""
    rows = []
    for name in setups:
        setup = compare.SETUPS[name]
        for seed in seeds:
            base = experiment.pretrain(setup, ROOT / "runs" / "cpu", seed)
            for criterion in CRITERIA:
                importance = experiment.score(base, criterion)
                for floor in floors:
                    for budget in compare.BUDGETS:
                        try:
                            row = experiment.prune_and_finetune(
                                base, criterion, importance, budget, allocation(floor)
                            )
                        except BudgetError:  # the floors alone cost more than the budget
                            print(f"{name} {budget} floor {floor:g}: infeasible", flush=True)
                            continue
                        rows.append(row | {"setup": name, "seed": seed, "floor": floor})
                        print(
                            f"{name} seed {seed} {criterion} {budget} floor {floor:g}: "
                            f"{row['widths']} val {row['pruned_val']:.4f} -> "
                            f"{row['finetuned_val']:.4f}",
                            flush=True,
                        )
    return rows


def committed(setup: str) -> dict[tuple, dict]:
    """The comparison's committed rows of ``setup`` by (criterion, allocation, budget, seed)."""
    rows = read_json(compare.committed_results() / f"{setup}.json")["rows"]
    return {(r["criterion"], r["allocation"], r["budget"], r["seed"]): r for r in rows}


def table(rows: list[dict]) -> str:
    """Markdown: per floor, setup, criterion and budget, the mean gain over the greedy rule
    after pruning and after fine-tuning (validation, points, mean over seeds)."""
    lines = [
        "| floor | setup | criterion | budget | gain after pruning | gain after fine-tune "
        "| smallest layer kept (of its units) |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["floor"], row["setup"], row["criterion"], row["budget"]), [])
        groups[(row["floor"], row["setup"], row["criterion"], row["budget"])].append(row)
    worst: dict[float, list[float]] = {}
    for (floor, setup, criterion, budget), group in groups.items():
        pairs = committed(setup)
        greedy = [pairs[(criterion, "greedy", budget, r["seed"])] for r in group]
        pruned = [100 * (r["pruned_val"] - g["pruned_val"]) for r, g in zip(group, greedy)]
        tuned = [100 * (r["finetuned_val"] - g["finetuned_val"]) for r, g in zip(group, greedy)]
        worst.setdefault(floor, []).append(statistics.mean(tuned))
        smallest = min(min(_fractions(r)) for r in group)
        lines.append(
            f"| {floor:g} | {setup} | {criterion} | {budget} | {statistics.mean(pruned):+.2f} | "
            f"{statistics.mean(tuned):+.2f} | {smallest:.0%} |"
        )
    lines += ["", "| floor | cases | mean gain after fine-tune | worst case | cases below -0.1 |"]
    lines.append("|---|---|---|---|---|")
    for floor, gains in worst.items():
        below = sum(g < -0.1 for g in gains)
        lines.append(
            f"| {floor:g} | {len(gains)} | {statistics.mean(gains):+.2f} | {min(gains):+.2f} | "
            f"{below} |"
        )
    return "\n".join(lines) + "\n"


def reproduced(rows: list[dict]) -> str:
    """How many floor-0 rows equal the committed measured rows (widths and accuracies)."""
    plain = [r for r in rows if r["floor"] == 0]
    keys = ("widths", "pruned_val", "finetuned_val")
    same = sum(
        all(
            r[k] == committed(r["setup"])[(r["criterion"], "measured", r["budget"], r["seed"])][k]
            for k in keys
        )
        for r in plain
    )
    return f"Floor 0 reproduces the committed measured rows: {same} of {len(plain)} identical."


def _fractions(row: dict) -> list[float]:
    """Each layer's kept fraction of the row's widths, against the base network's widths."""
    full = {"lenet300": (300, 100), "lenet5": (20, 50, 500)}[row["setup"].split("-")[1]]
    kept = [int(w) for w in row["widths"].split("-")]
    return [k / f for k, f in zip(kept, full)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=list(compare.DEFAULT_SETUPS))
    parser.add_argument("--floors", nargs="+", type=float, default=[0.0, 0.05, 0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    rows = run(args.setups, args.floors, args.seeds)
    out = ROOT / "bench" / "results" / "measured_floor.json"
    previous = read_json(out)["rows"] if out.exists() else []
    done = {(r["setup"], r["seed"], r["criterion"], r["budget"], r["floor"]) for r in rows}
    kept = [
        r
        for r in previous
        if (r["setup"], r["seed"], r["criterion"], r["budget"], r["floor"]) not in done
    ]
    write_json(out, {"rows": kept + rows})
    header = (
        "# The measured allocation with a floor\n\nWritten by `python bench/measured_floor.py`. "
        "Each layer keeps at least `floor` of its units (0: the rule as it is); gains over the "
        "greedy rule of the same criterion, validation accuracy in points, mean over 3 seeds, "
        "against the comparison's committed greedy rows (figures/compare.md). A case missing "
        "from a floor's rows: its floors alone cost more than the budget.\n\n"
    )
    header += f"{reproduced(kept + rows)}\n\n"
    atomic_write_text(ROOT / "figures" / "study" / "measured_floor.md", header + table(kept + rows))
    print(json.dumps({"rows": len(kept + rows)}))


if __name__ == "__main__":
    main()
