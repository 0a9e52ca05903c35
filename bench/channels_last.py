"""Channels-last against channels-first memory for the LeNets on the CPU: speed and accuracy.

    python bench/channels_last.py     # about 3 minutes on 2 cores

Whether the LeNets train faster in channels-last memory (``channels_last=True`` of
``dplib.TrainSettings`` and ``dplib.DirichletSettings``; ``make cifar`` trains that way). For
LeNet-5 on Fashion-MNIST and the authors' LeNet-5 with BatchNorm on mnist5k, each step of the main
job is timed in both layouts, interleaved, the same seed and data order in each: one pretraining
epoch from the same initial weights, one epoch of importance learning (a third of an epoch per
gated layer for LeNet-5, layerwise), one epoch of fine-tuning of the network pruned to medium
widths by L1. Prints and saves figures/bench/channels_last.md and .json: the median seconds over
``REPEATS`` rounds, the ratio, and the validation accuracy after the pretraining epoch in each
layout.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

import dplib
from dplib.files import atomic_write_text, write_json

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 3
CASES = {  # network, data set, the medium widths of the profiles
    "lenet5": ("fashion_mnist", "5-10-76"),
    "lenet5_bn": ("mnist5k", "6-7-35-17"),
}
LAYOUTS = {"channels-first": False, "channels-last": True}
WHERE_USED = (
    "The kit trains LeNet-5 in channels-last memory (`CHANNELS_LAST` of "
    "dplib/experiments/experiment.py: the comparison and the notebooks' profiles); the BatchNorm "
    "LeNet-5 stays channels-first, and LeNet-300-100 has no convolutions."
)


def timed_steps(model: str, loaders: dplib.data.Loaders, widths: str, last: bool) -> dict:
    """Seconds of each step in one memory layout, and the validation accuracy after pretraining."""
    network = dplib.models.build(model, seed=0)
    started = time.perf_counter()
    training = dplib.TrainSettings(epochs=1, keep_best=False, channels_last=last)
    dplib.fit(network, loaders.train, training, device="cpu", seed=0)
    seconds = {"pretraining": time.perf_counter() - started}
    accuracy = dplib.evaluate(network, loaders.val)["accuracy"]
    gated = dplib.attach_gates(network)
    layers = len(gated.layers)
    started = time.perf_counter()
    dplib.learn_importance(gated, loaders.train, epochs=1 / layers, channels_last=last, seed=0)
    seconds["importance"] = time.perf_counter() - started
    gated.remove()
    scores = dplib.criteria.compute("l1", network)
    small = dplib.prune(network, scores, dplib.parse_widths(widths, scores.units))
    started = time.perf_counter()
    finetuning = training.replace(lr=0.01)
    dplib.fit(small, loaders.train, finetuning, device="cpu", seed=0)
    seconds["fine-tuning"] = time.perf_counter() - started
    return {"seconds": seconds, "val_accuracy": accuracy}


def main() -> None:
    rows: list[dict[str, Any]] = []
    lines = [
        "# Channels-last memory for the LeNets on the CPU",
        "",
        f"`python bench/channels_last.py` (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {REPEATS} interleaved rounds, "
        "seconds of one epoch of each step).",
        "",
        "| network | data | step | channels-first s | channels-last s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for model, (dataset, widths) in CASES.items():
        loaders = dplib.data.loaders(dataset, batch_size=128, seed=0)
        runs = {layout: [] for layout in LAYOUTS}
        for _ in range(REPEATS):
            for layout, last in LAYOUTS.items():
                runs[layout].append(timed_steps(model, loaders, widths, last))
        for step in runs["channels-first"][0]["seconds"]:
            first, last = (statistics.median(r["seconds"][step] for r in runs[x]) for x in LAYOUTS)
            speedup = first / last
            rows.append(
                {
                    "model": model,
                    "dataset": dataset,
                    "step": step,
                    "first": first,
                    "last": last,
                    "speedup": speedup,
                }
            )
            lines.append(
                f"| {model} | {dataset} | {step} | {first:.2f} | {last:.2f} | {speedup:.2f}x |"
            )
        accuracies = {x: runs[x][0]["val_accuracy"] for x in LAYOUTS}
        rows.append({"model": model, "dataset": dataset, "val_accuracy": accuracies})
        print("\n".join(lines[-3:]), accuracies, flush=True)
    lines += ["", "Validation accuracy after the pretraining epoch, the same initial weights:", ""]
    lines += [
        f"- {row['model']}: " + ", ".join(f"{k} {v:.4f}" for k, v in row["val_accuracy"].items())
        for row in rows
        if "val_accuracy" in row
    ]
    lines += ["", WHERE_USED]
    folder = ROOT / "figures" / "bench"
    write_json(folder / "channels_last.json", {"repeats": REPEATS, "rows": rows})
    atomic_write_text(folder / "channels_last.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
