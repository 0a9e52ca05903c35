"""What coarser blocks would cost the measured allocation on a deep network (ResNet-56).

    python bench/measured_blocks.py      # about 14 minutes on 2 cores

The measured rule cuts every layer into 16 blocks (dplib.measured.BLOCKS_PER_LAYER), so a deeper
network offers more blocks, makes more removals and more forward passes, each of a larger network:
its time grows faster than the cost of one pass. Offering about 192 blocks in all at any depth
(16 per layer up to 12 layers, 192 / L beyond: 7 for ResNet-56's 30) would keep the passes level.
This script measures what that costs in accuracy: ResNet-56 (seed 0) trained briefly on CIFAR-10
with :func:`dplib.fit` (``--epochs``, default half an epoch: a base far short of the paper's,
cheap enough for the CPU), L1 scores, the measured rule at 4x fewer MACs with 16 blocks per layer
and with 7, on the same two fixed training batches of 128 images. For each: the allocation's
seconds and forward passes, and validation accuracy right after pruning (BatchNorm re-estimated
on 20 fixed training batches) over the whole validation split. No fine-tuning: the question is
whether coarser blocks choose worse widths, which the accuracy right after pruning shows first.
The table goes to figures/bench/measured_blocks.md, the rows to measured_blocks.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import dplib
from dplib.experiments.reports import frame_markdown
from dplib.files import atomic_write_text, write_json
from dplib.train import recalibrate_batchnorm

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = ("4x",)
SHAPE = (1, 3, 32, 32)
NETWORK_BLOCKS = 192  # the blocks a network would offer in all (16 per layer up to 12 layers)


def allocate(model: torch.nn.Module, importance: Any, budget: str, data: list, blocks: int):
    """Widths of the measured rule with ``blocks`` blocks per layer; seconds and passes."""
    passes = {"n": 0}
    original_count = dplib.measured.BLOCKS_PER_LAYER
    original_stats = dplib.measured.batch_statistics

    def spy(net: torch.nn.Module, copies: int) -> Any:
        passes["n"] += 1
        return original_stats(net, copies)

    dplib.measured.BLOCKS_PER_LAYER = blocks
    dplib.measured.batch_statistics = spy
    try:
        started = time.perf_counter()
        rule = dplib.budget.Measured(data)
        widths = dplib.choose_widths(model, importance, budget, rule, SHAPE)
        seconds = time.perf_counter() - started
    finally:
        dplib.measured.BLOCKS_PER_LAYER = original_count
        dplib.measured.batch_statistics = original_stats
    return widths, seconds, passes["n"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=0.5, help="ResNet-56's training epochs")
    args = parser.parse_args()
    loaders = dplib.data.loaders("cifar10", download=False)
    model = dplib.models.build("resnet56", seed=0)
    history = dplib.fit(
        model, loaders.train, epochs=args.epochs, val_loader=loaders.val, channels_last=True
    )
    base = dplib.evaluate(model, loaders.val)["accuracy"]
    importance = dplib.criteria.l1_importance(model, coupled=True)
    fixed = dplib.data.random_subset(loaders.splits.train, 40 * 128, seed=0)
    fixed = dplib.data.make_loader(fixed, 128, shuffle=False)  # 40 fixed training batches
    data = [batch for _, batch in zip(range(2), fixed)]  # the rule reads the first two
    depth = -(-NETWORK_BLOCKS // len(importance.names))  # 192 / L, rounded up: 7 for ResNet-56
    rows = []
    for budget in BUDGETS:
        for blocks in (dplib.measured.BLOCKS_PER_LAYER, depth):
            widths, seconds, passes = allocate(model, importance, budget, data, blocks)
            pruned = dplib.prune(model, importance, widths)
            recalibrate_batchnorm(pruned, fixed)
            accuracy = dplib.evaluate(pruned, loaders.val)["accuracy"]
            rows.append(
                {"budget": budget, "blocks": blocks, "seconds": seconds, "passes": passes}
                | {"val_after_pruning": accuracy, "macs": dplib.count(pruned, SHAPE).macs}
                | {"widths": widths}
            )
            print(rows[-1] | {"widths": None}, flush=True)
    out = ROOT / "figures" / "bench"
    meta = {"epochs": args.epochs, "base_val": base}
    meta["seconds_per_epoch"] = history["seconds_per_epoch"]
    write_json(out / "measured_blocks.json", {"base": meta, "rows": rows})
    atomic_write_text(out / "measured_blocks.md", table(meta, rows))
    print(table(meta, rows))


def table(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The Markdown page of the rows."""
    frame = pd.DataFrame(rows)
    shown = pd.DataFrame(
        {
            "budget": frame["budget"],
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
        f"{100 * meta['base_val']:.2f}% validation accuracy; L1 scores; two fixed batches of 128.",
        "",
        frame_markdown(shown),
    ]
    for fine, coarse in zip(rows[::2], rows[1::2]):  # per budget: 16 blocks, then the depth's
        drop = 100 * (coarse["val_after_pruning"] - fine["val_after_pruning"])
        lines.append(
            f"\nAt {fine['budget']}, {coarse['blocks']} blocks per layer against "
            f"{fine['blocks']}: {coarse['seconds'] / fine['seconds']:.2f}x the seconds, "
            f"{drop:+.2f} points right after pruning."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
