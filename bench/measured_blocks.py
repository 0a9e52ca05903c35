"""What the measured allocation's coarser blocks on a deep network cost: ResNet-56 on CIFAR-10.

    python bench/measured_blocks.py      # about 35 minutes on 2 cores

A network of more than 12 prunable layers offers 192 / L blocks per layer instead of 16
(:func:`dplib.measured.blocks_per_layer`; 7 for ResNet-56's 30 layers), so that the whole network
offers about 192 blocks at any depth and the allocation's passes stay about level as it deepens.
This script measures what that costs in accuracy: ResNet-56 (seed 0) trained briefly on CIFAR-10
with :func:`dplib.fit` (``--epochs``, default half an epoch: a base far short of the paper's, cheap
enough for the CPU), L1 scores, the measured rule at 4x fewer MACs with 16 blocks per layer and with
the depth's, each on the same two fixed training batches of 128 images, drawn with each of
``--seeds`` (default 0, 1 and 2; the rows of other seeds already in the file are kept when they
share the base). For each: the allocation's seconds and forward passes, and validation accuracy
right after pruning (BatchNorm re-estimated on 20 fixed training batches) over the whole validation
split. No fine-tuning: the question is whether coarser blocks choose worse widths, which the
accuracy right after pruning shows first. The table goes to figures/bench/measured_blocks.md, the
rows to measured_blocks.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from measured_cost import counting

import dplib
from dplib.experiments.reports import frame_markdown
from dplib.files import atomic_write_text, read_json, write_json
from dplib.train import recalibrate_batchnorm

ROOT = Path(__file__).resolve().parent.parent
BUDGET = "4x"
SHAPE = (1, 3, 32, 32)


def allocate(model: torch.nn.Module, importance: Any, budget: str, data: list, blocks: int):
    """Widths of the measured rule with ``blocks`` blocks per layer; seconds and passes."""
    counts = {"passes": 0, "rows": 0}
    original = dplib.measured.blocks_per_layer
    dplib.measured.blocks_per_layer = lambda layers: blocks
    try:
        started = time.perf_counter()
        with counting(counts):  # bench/measured_cost.py's count of the rule's passes
            rule = dplib.budget.Measured(data)
            widths = dplib.choose_widths(model, importance, budget, rule, SHAPE)
        seconds = time.perf_counter() - started
    finally:
        dplib.measured.blocks_per_layer = original
    return widths, seconds, counts["passes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=0.5, help="ResNet-56's training epochs")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="fixed batches' seeds"
    )
    args = parser.parse_args()
    loaders = dplib.data.loaders("cifar10", download=False)
    model = dplib.models.build("resnet56", seed=0)
    history = dplib.fit(
        model, loaders.train, epochs=args.epochs, val_loader=loaders.val, channels_last=True
    )
    base = dplib.evaluate(model, loaders.val)["accuracy"]
    importance = dplib.criteria.l1_importance(model, coupled=True)
    depth = dplib.measured.blocks_per_layer(len(importance.names))  # 7 for ResNet-56
    rows = []
    for seed in args.seeds:  # the fixed batches drawn with this seed
        fixed = dplib.data.random_subset(loaders.splits.train, 40 * 128, seed=seed)
        fixed = dplib.data.make_loader(fixed, 128, shuffle=False)  # 40 fixed training batches
        data = [batch for _, batch in zip(range(2), fixed)]  # the rule reads the first two
        for blocks in (dplib.measured.BLOCKS_PER_LAYER, depth):
            widths, seconds, passes = allocate(model, importance, BUDGET, data, blocks)
            pruned = dplib.prune(model, importance, widths)
            recalibrate_batchnorm(pruned, fixed)
            accuracy = dplib.evaluate(pruned, loaders.val)["accuracy"]
            rows.append(
                {"seed": seed, "blocks": blocks, "seconds": seconds, "passes": passes}
                | {"val_after_pruning": accuracy, "macs": dplib.count(pruned, SHAPE).macs}
                | {"widths": widths}
            )
            print(rows[-1] | {"widths": None}, flush=True)
    out = ROOT / "figures" / "bench"
    meta = {"epochs": args.epochs, "base_val": base, "budget": BUDGET}
    meta["seconds_per_epoch"] = history["seconds_per_epoch"]
    rows = sorted(kept_rows(out / "measured_blocks.json", meta, args.seeds) + rows, key=_order)
    write_json(out / "measured_blocks.json", {"base": meta, "rows": rows})
    atomic_write_text(out / "measured_blocks.md", table(meta, rows))
    print(table(meta, rows))


def kept_rows(path: Path, meta: dict[str, Any], seeds: list[int]) -> list[dict[str, Any]]:
    """The rows already in ``path`` of the seeds not run now, when they share this run's base
    (the same epochs and validation accuracy); none otherwise."""
    if not path.exists():
        return []
    earlier = read_json(path)
    same = all(earlier["base"].get(key) == meta[key] for key in ("epochs", "base_val", "budget"))
    return [row for row in earlier["rows"] if row["seed"] not in seeds] if same else []


def _order(row: dict[str, Any]) -> tuple[int, bool]:
    """Per seed, the 16-block row first (the table pairs them)."""
    return row["seed"], row["blocks"] != dplib.measured.BLOCKS_PER_LAYER


def table(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The Markdown page of the rows."""
    frame = pd.DataFrame(rows)
    shown = pd.DataFrame(
        {
            "fixed batches' seed": frame["seed"],
            "blocks per layer": frame["blocks"],
            "seconds": frame["seconds"].map("{:.1f}".format),
            "forward passes": frame["passes"],
            "MACs": frame["macs"].map("{:,}".format),
            "val after pruning": (100 * frame["val_after_pruning"]).map("{:.2f}".format),
        }
    )
    lines = [
        "# The measured allocation with coarser blocks: ResNet-56 on CIFAR-10",
        "",
        f"Base: ResNet-56 after {meta['epochs']:g} training epochs, "
        f"{100 * meta['base_val']:.2f}% validation accuracy; L1 scores; {meta['budget']} fewer "
        "MACs; two fixed batches of 128 training images, drawn with each seed.",
        "",
        frame_markdown(shown),
    ]
    pairs = list(zip(rows[::2], rows[1::2]))  # per seed: 16 blocks, then the depth's
    drops = [100 * (c["val_after_pruning"] - f["val_after_pruning"]) for f, c in pairs]
    times = [c["seconds"] / f["seconds"] for f, c in pairs]
    lines.append(
        f"\n{pairs[0][1]['blocks']} blocks per layer against {pairs[0][0]['blocks']}, per seed: "
        + ", ".join(f"{t:.2f}x the seconds, {d:+.2f} points" for t, d in zip(times, drops))
        + f" right after pruning (mean {sum(drops) / len(drops):+.2f} points)."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
