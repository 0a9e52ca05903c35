"""Why the measured allocation keeps a floor: the measured rule with each layer keeping a
fraction of its units while another can still give a block (``dplib.budget.Measured(data,
floor=..., uniform_floor=0)``; 0: no floor; the uniform floor, which the rule adds in plain
chains, is off here: figures/bench/finetune_noise.md measures it), on the comparison's LeNet
setups, seeds and budgets, paired against the greedy rule's committed rows
(bench/results/compare/), right after pruning and after fine-tuning.

    python bench/measured_floor.py                      # floors 0, 0.05 (the default), 0.1
    python bench/measured_floor.py --floors 0.15 --setups fashion_mnist-lenet5

Rows are cached under runs/cpu/ like the comparison's; the table goes to
figures/study/measured_floor.md, the rows to bench/results/measured_floor.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from pathlib import Path

from dplib.budget import Measured
from dplib.experiments import compare, experiment
from dplib.files import atomic_write_text, read_json, write_json
from dplib.measured import FLOOR
from dplib.surgery import widths_of

ROOT = Path(__file__).resolve().parent.parent
CRITERIA = ("dirichlet", "l1")


def allocation(floor: float) -> str:
    """The row name of the measured rule with ``floor`` and no uniform floor, registered with
    the experiments."""
    name = f"measured-floor{floor:g}"
    experiment.ALLOCATIONS[name] = lambda base: Measured(
        experiment.recalibration_loader(base), floor=floor, uniform_floor=0.0
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
                        row = experiment.prune_and_finetune(
                            base, criterion, importance, budget, allocation(floor)
                        )
                        rows.append(row | {"setup": name, "seed": seed, "floor": floor})
                        print(
                            f"{name} seed {seed} {criterion} {budget} floor {floor:g}: "
                            f"{row['widths']} val {row['pruned_val']:.4f} -> "
                            f"{row['finetuned_val']:.4f}",
                            flush=True,
                        )
    return rows


@functools.cache
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


def _fractions(row: dict) -> list[float]:
    """Each layer's kept fraction of the row's widths, against the full network's widths."""
    full = widths_of(compare.SETUPS[row["setup"]].network()).values()
    kept = [int(w) for w in row["widths"].split("-")]
    return [k / f for k, f in zip(kept, full)]


def page(rows: list[dict]) -> str:
    """figures/study/measured_floor.md: what the rows are, and their table."""
    header = (
        "# The measured allocation's floor\n\nWritten by `python bench/measured_floor.py`. "
        "Each layer keeps at least `floor` of its units while another layer can still give a "
        f"block (0: no floor; {FLOOR:g}: the default), the uniform floor off "
        "([finetune_noise.md](../bench/finetune_noise.md) measures it); gains over the greedy "
        "rule of the same criterion, validation accuracy in points, mean over 3 seeds, against "
        "the comparison's committed greedy rows (figures/compare.md). Without a floor, removal "
        "by the loss right after pruning can leave a layer a unit or two that fine-tuning does "
        "not recover.\n\n"
    )
    return header + table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=list(compare.DEFAULT_SETUPS))
    parser.add_argument("--floors", nargs="+", type=float, default=[0.0, FLOOR, 0.1])
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
    atomic_write_text(ROOT / "figures" / "study" / "measured_floor.md", page(kept + rows))
    print(json.dumps({"rows": len(kept + rows)}))


if __name__ == "__main__":
    main()
