"""Widths on a hardware grid: what ``dplib.budget.Greedy(multiple_of=8)`` buys and costs.

    python bench/grid.py                        # every row whose base network is cached
    python bench/grid.py --rows lenet5          # LeNet-5 on Fashion-MNIST only (minutes)

For each network and budget, the Dirichlet importance (the kit's defaults) allocates the widths
twice: freely and on the grid of multiples of 8. Both pruned networks get the same BatchNorm
re-estimation and the same fine-tuning as in the comparison at a MAC budget; the bench reports
MACs, the deployed CPU speed-up at batch 64 (BatchNorm folded, each network in its faster
memory format) and the validation accuracy right after pruning and after fine-tuning. The base
networks are those of the comparison (LeNet-5) and of make cifar (VGG-16, ResNet-56): their
caches are shared, so a row runs only where its pretraining exists or is affordable.
Writes figures/bench/grid.json and grid.md (the rows of the networks not run are kept).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import dplib
from dplib.experiments import cifar, compare
from dplib.experiments.experiment import Base, pretrain, prune_and_finetune, score
from dplib.files import atomic_write_text, read_json, write_json

ROOT = Path(__file__).resolve().parent.parent
# (name, setup, budget, cache root)
ROWS = {
    "lenet5": (compare.SETUPS["fashion_mnist-lenet5"], "4x", ROOT / "runs" / "cpu"),
    "vgg16": (cifar.SETUPS["cifar10-vgg16"], "8x", ROOT / "runs" / "cifar"),
    "resnet56": (cifar.SETUPS["cifar10-resnet56"], "2x", ROOT / "runs" / "cifar"),
}
GRID = 8


def measure(base: Base, importance: dplib.Importance, budget: str, grid: int) -> dict:
    """One pruned network: widths, MACs, deployed speed-up, accuracy before/after fine-tuning."""
    rule = dplib.budget.Greedy(multiple_of=grid)
    widths = dplib.choose_widths(base.model, importance, budget, rule, base.input_shape)
    experiment = base.experiment.replace(speedup_batch=64, keep_pruned=False)
    base = dataclasses.replace(base, experiment=experiment)
    row = prune_and_finetune(base, "dirichlet", importance, dplib.format_widths(widths))
    return row | {"multiple_of": grid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = parser.parse_args()
    results = []
    for name in args.rows:
        setup, budget, root = ROWS[name]
        base = pretrain(setup, root, 0)
        importance = score(base, "dirichlet")
        for grid in (1, GRID):
            row = measure(base, importance, budget, grid)
            results.append(row | {"network": name, "budget": budget})
            print(
                f"{name} {budget} multiple_of={grid}: {row['widths']} {row['macs']:,} MACs, "
                f"{row['speedup']:.2f}x, val {100 * row['pruned_val']:.2f} -> "
                f"{100 * row['finetuned_val']:.2f}%",
                flush=True,
            )
    results = merged(ROOT / "figures" / "bench" / "grid.json", results)
    write_json(ROOT / "figures" / "bench" / "grid.json", results)
    atomic_write_text(ROOT / "figures" / "bench" / "grid.md", table(results))


def merged(path: Path, results: list[dict]) -> list[dict]:
    """The rows of this run, and the committed rows of the networks it did not run, in the
    order of :data:`ROWS`."""
    ran = {r["network"] for r in results}
    kept = [r for r in read_json(path) if r["network"] not in ran] if path.exists() else []
    order = list(ROWS)
    return sorted(kept + results, key=lambda r: (order.index(r["network"]), r["multiple_of"]))


def table(results: list[dict]) -> str:
    """The bench's Markdown table."""
    lines = [
        "| network | budget | multiple_of | widths | MACs | deployed speed-up (CPU, batch 64) "
        "| val after pruning | val after fine-tune |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['network']} | {r['budget']} | {r['multiple_of']} | {r['widths']} | "
            f"{r['macs']:,} | {r['speedup']:.2f}x | {100 * r['pruned_val']:.2f} | "
            f"{100 * r['finetuned_val']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
