"""Measured CPU inference speed-up of pruned CIFAR networks, next to their MAC ratio.

    python bench/cifar_speedup.py        # about 5 minutes on 2 CPU cores

Each pair is measured twice: as built (NCHW, BatchNorm as a layer) and as deployed (BatchNorm
folded into the convolutions, each network in its faster memory format: NCHW or channels-last).
Networks and widths: VGG-16 at the reference widths (notebooks/METHOD.md, section 5); ResNet-56
at the reference inner widths 11-18-30 (every block of a stage), and with its residual stages pruned
too (coupled groups, 12-24-48). Speed-up = median latency of the base / of the pruned network,
each the median of repeated forward passes, interleaved over rounds; batch 64 and batch 1.
Weights are random (speed does not depend on them). Results: figures/bench/cifar_speedup.{json,md}.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import torch

import dplib
from dplib.files import atomic_write_text, write_json

ROOT = Path(__file__).resolve().parent.parent
VGG_REFERENCE = "39-39-63-48-55-88-87-52-62-22-42-47-47-47"


def resnet_widths(inner: tuple[int, int, int], stages: tuple[int, int, int] | None) -> dict:
    """Widths of resnet56 by name: every block's inner width per stage, and the stage widths."""
    widths = {}
    for stage, width in enumerate(inner, start=1):
        widths.update({f"layer{stage}.{block}.conv1": width for block in range(9)})
    if stages is not None:  # the coupled groups are named after their first layer
        widths.update(dict(zip(("conv1", "layer2.0.conv2", "layer3.0.conv2"), stages, strict=True)))
    return widths


CASES = [
    ("vgg16", "reference widths", VGG_REFERENCE, False),
    ("resnet56", "inner 11-18-30", resnet_widths((11, 18, 30), None), False),
    (
        "resnet56",
        "inner 11-18-30 + stages 12-24-48",
        resnet_widths((11, 18, 30), (12, 24, 48)),
        True,
    ),
]
SHAPES = {"batch 64": (64, 3, 32, 32), "batch 1": (1, 3, 32, 32)}
REPEATS = {"batch 64": 7, "batch 1": 50}
ROUNDS = 5


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for name, label, widths, coupled in CASES:
        base = dplib.models.build(name, seed=0).eval()
        order = dplib.criteria.l1_importance(base, coupled=coupled)
        pruned = dplib.prune(base, order, widths).eval()
        base_count = dplib.count(base, (1, 3, 32, 32))
        pruned_count = dplib.count(pruned, (1, 3, 32, 32))
        row = {
            "network": name,
            "pruned": label,
            "widths": widths
            if isinstance(widths, str)
            else dplib.format_widths(dplib.parse_widths(widths, order.units)),
            "params": [base_count.params, pruned_count.params],
            "macs": [base_count.macs, pruned_count.macs],
            "mac_ratio": base_count.macs / pruned_count.macs,
            "param_ratio": base_count.params / pruned_count.params,
        }
        deployed = (dplib.measure.for_inference(base), dplib.measure.for_inference(pruned))
        for mode, (slow_net, fast_net), memory_format in (
            ("as built", (base, pruned), "contiguous"),
            ("deployed", deployed, "auto"),
        ):
            for shape_name, shape in SHAPES.items():
                ratios, base_times, pruned_times = [], [], []
                for _ in range(ROUNDS):
                    options = {
                        "repeats": REPEATS[shape_name],
                        "warmup": 2,
                        "memory_format": memory_format,
                    }
                    slow = dplib.latency(slow_net, shape, **options)
                    fast = dplib.latency(fast_net, shape, **options)
                    ratios.append(slow / fast)
                    base_times.append(slow)
                    pruned_times.append(fast)
                row[f"{mode}, {shape_name}"] = {
                    "base_ms": 1000 * statistics.median(base_times),
                    "pruned_ms": 1000 * statistics.median(pruned_times),
                    "speedup": statistics.median(ratios),
                    "speedup_min_max": [min(ratios), max(ratios)],
                }
            row[f"{mode}: speedup / mac ratio, batch 64"] = (
                row[f"{mode}, batch 64"]["speedup"] / row["mac_ratio"]
            )
        rows.append(row)
        print(json.dumps(row, indent=1))
    out = ROOT / "figures" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "cifar_speedup.json",
        {
            "command": "python bench/cifar_speedup.py",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "rows": rows,
        },
    )
    lines = [
        "# Measured CPU speed-up of pruned CIFAR networks",
        "",
        f"`python bench/cifar_speedup.py` (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median over {ROUNDS} interleaved rounds). "
        "MACs per 32x32 image, one multiply-add = 1 MAC. *As built*: NCHW, BatchNorm as a "
        "layer. *Deployed*: BatchNorm folded, each network in its faster memory format.",
        "",
        "| network | pruned | params | MACs | MAC ratio | mode | batch 64: base / pruned ms, "
        "speed-up | batch 1: base / pruned ms, speed-up | speed-up / MAC ratio (b64) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for mode in ("as built", "deployed"):
            b64, b1 = row[f"{mode}, batch 64"], row[f"{mode}, batch 1"]
            lines.append(
                f"| {row['network']} | {row['pruned']} | {row['params'][0]:,} -> "
                f"{row['params'][1]:,} | {row['macs'][0]:,} -> {row['macs'][1]:,} | "
                f"{row['mac_ratio']:.2f}x | {mode} | {b64['base_ms']:.1f} / "
                f"{b64['pruned_ms']:.1f}, {b64['speedup']:.2f}x | {b1['base_ms']:.2f} / "
                f"{b1['pruned_ms']:.2f}, {b1['speedup']:.2f}x | "
                f"{row[f'{mode}: speedup / mac ratio, batch 64']:.2f} |"
            )
    atomic_write_text(out / "cifar_speedup.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
