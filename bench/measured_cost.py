"""What the measured allocation costs as networks grow: ResNet-20, ResNet-56, VGG-16, ResNet-50.

    python bench/measured_cost.py                        # the four networks (about 15 minutes)
    python bench/measured_cost.py --networks resnet20 --exhaustive   # and the exhaustive rule
    python bench/measured_cost.py --networks vgg16 --trained 1   # trained one epoch on CIFAR-10

Each network (random weights, BatchNorm statistics as after training, L1 scores) is allocated
by dplib.choose_widths with the measured rule (dplib.budget.Measured): CIFAR networks at 32x32
with two fixed batches of 128 images (what the kit's CIFAR rows read), ResNet-50 from torchvision at
224x224 with two batches of 16. The table counts the removals, the forward passes and the
images they forwarded, and times the whole allocation; ``--exhaustive`` also times the rule that
measures every offer at every removal (what the kit did before), for the ratio in one run.
``--trained N`` trains a CIFAR network N epochs on CIFAR-10 first (dplib.fit, float32 and
channels-last, the fastest on a CPU without bfloat16 units) and allocates on two fixed batches of
its training images: trained weights take more passes than random ones, and the row gives the
allocation's cost in the training epochs it timed.
The table goes to figures/bench/measured_cost.md, the rows to figures/bench/measured_cost.json.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from zoo import as_trained
from zoo import build as build_zoo

import dplib
from dplib.experiments import profiles
from dplib.files import atomic_write_text, read_json, write_json

ROOT = Path(__file__).resolve().parent.parent
NETWORKS = {  # name: (input size, images per batch, budget)
    "resnet20": (32, 128, "4x"),
    "resnet56": (32, 128, "4x"),
    "vgg16": (32, 128, "2x"),
    "resnet50": (224, 16, "2x"),
}


def network(name: str) -> torch.nn.Module:
    """The network with random weights (seed 0), BatchNorm as after training, in eval mode."""
    if name == "resnet50":
        return build_zoo(name)[0]
    return as_trained(dplib.models.build(name, seed=0)).eval()


@contextlib.contextmanager
def counting(counts: dict[str, int]) -> Iterator[None]:
    """Count the measured rule's forward passes and the images they forward."""
    original = dplib.measured.batch_statistics

    def spy(model: torch.nn.Module, copies: int) -> Any:
        counts["passes"] += 1
        counts["rows"] += copies
        return original(model, copies)

    dplib.measured.batch_statistics = spy
    try:
        yield
    finally:
        dplib.measured.batch_statistics = original


def random_batches(model: torch.nn.Module, shape: tuple, batch: int) -> list:
    """Two batches of noise, labelled by the network: a removed unit that matters raises the
    loss."""
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(batch, *shape[1:], generator=generator) for _ in range(2)]
    with torch.no_grad():
        return [(x, model(x).argmax(1)) for x in images]


def trained(name: str, epochs: float, batch: int) -> tuple[torch.nn.Module, list, dict]:
    """The CIFAR network trained ``epochs`` on CIFAR-10 (seed 0), two fixed batches of its
    training images, and what the training measured."""
    loaders = dplib.data.loaders("cifar10", download=False)
    model = dplib.models.build(name, seed=0)
    recipe = profiles.SETUPS["cifar"][f"cifar10-{name}"].pretraining  # the kit's, in float32
    history = dplib.fit(model, loaders.train, recipe, epochs=epochs, amp=False)
    fixed = dplib.data.random_subset(loaders.splits.train, 2 * batch, seed=0)
    data = list(dplib.data.make_loader(fixed, batch, shuffle=False))
    about = {"trained_epochs": epochs, "epoch_seconds": history["seconds_per_epoch"]}
    about["val_accuracy"] = dplib.evaluate(model, loaders.val)["accuracy"]
    about["data_source"] = loaders.splits.source
    return model.eval(), data, about


def run(name: str, exhaustive: bool, epochs: float = 0) -> dict[str, Any]:
    """One network's row: its size, and per rule the time, removals and passes."""
    size, batch, budget = NETWORKS[name]
    shape = (1, 3, size, size)
    row = {"network": name, "budget": budget, "input": size, "batch": batch}
    if epochs:
        model, data, about = trained(name, epochs, batch)
        row |= about
    else:
        model = network(name)
        data = random_batches(model, shape, batch)
    importance = dplib.criteria.l1_importance(model, coupled=True)
    row |= {"layers": len(importance.names), "macs": dplib.count(model, shape).macs}
    rules = {"lazy": dplib.measured.AT_ONCE} | ({"exhaustive": 10**6} if exhaustive else {})
    for rule, at_once in rules.items():
        counts = {"passes": 0, "rows": 0}
        dplib.measured.AT_ONCE = at_once
        started = time.perf_counter()
        with counting(counts):
            measured = dplib.budget.Measured(data)
            widths = dplib.choose_widths(model, importance, budget, measured, shape)
        seconds = time.perf_counter() - started
        dplib.measured.AT_ONCE = rules["lazy"]
        images = counts["rows"] * batch  # per batch: rows x batch images
        row[rule] = {"seconds": seconds, "forwarded_images": images, **counts, "widths": widths}
        print(f"{name} {rule}: {seconds:.1f} s, {counts['passes']} passes", flush=True)
    return row


def key(row: dict[str, Any]) -> str:
    """A row's name in the file: the network, and how long it was trained."""
    epochs = row.get("trained_epochs")
    return f"{row['network']}, trained {epochs:g} epochs" if epochs else row["network"]


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the rows."""
    lines = [
        "| network | input, batch | budget | gated layers | MACs | seconds | forward passes | "
        "images forwarded | exhaustive rule: seconds, images forwarded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in (row for row in rows if not row.get("trained_epochs")):
        lazy, old = row["lazy"], row.get("exhaustive")
        before = f"{old['seconds']:.1f}, {old['forwarded_images']:,}" if old else "not timed"
        lines.append(
            f"| {row['network']} | {row['input']}x{row['input']}, 2 x {row['batch']} | "
            f"{row['budget']} | {row['layers']} | {row['macs']:,} | {lazy['seconds']:.1f} | "
            f"{lazy['passes']:,} | {lazy['forwarded_images']:,} | {before} |"
        )
    return "\n".join(lines) + "\n" + depth_ratio(rows) + trained_table(rows)


def trained_table(rows: list[dict[str, Any]]) -> str:
    """The rows of networks trained on CIFAR-10: the allocation in training epochs."""
    lines = [
        "",
        "Trained briefly (`--trained`; float32, channels-last, this machine), allocated on two "
        "fixed batches of 128 training images:",
        "",
        "| network | data | budget | trained epochs | validation accuracy | seconds per training "
        "epoch | allocation seconds | forward passes | allocation in training epochs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    shown = [row for row in rows if row.get("trained_epochs")]
    for row in shown:
        lazy, epoch = row["lazy"], row["epoch_seconds"]
        lines.append(
            f"| {row['network']} | {row.get('data_source', 'CIFAR-10')} | {row['budget']} | "
            f"{row['trained_epochs']:g} | "
            f"{100 * row['val_accuracy']:.2f}% | {epoch:.1f} | {lazy['seconds']:.1f} | "
            f"{lazy['passes']:,} | {lazy['seconds'] / epoch:.2f} |"
        )
    return "\n".join(lines) + "\n" if shown else ""


def depth_ratio(rows: list[dict[str, Any]]) -> str:
    """ResNet-56 against ResNet-20, the cost against depth (time both in one run)."""
    by_name = {row["network"]: row for row in rows}
    if not {"resnet20", "resnet56"} <= by_name.keys():
        return ""
    deep, shallow = by_name["resnet56"]["lazy"], by_name["resnet20"]["lazy"]
    ratios = [deep[key] / shallow[key] for key in ("seconds", "passes", "forwarded_images")]
    macs = by_name["resnet56"]["macs"] / by_name["resnet20"]["macs"]
    return (
        f"\nResNet-56 against ResNet-20 (55 against 19 convolutions): {ratios[0]:.2f}x the "
        f"seconds, {ratios[1]:.2f}x the forward passes and {ratios[2]:.2f}x the images, each "
        f"image {macs:.2f}x the MACs.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--exhaustive", action="store_true", help="time the exhaustive rule too")
    parser.add_argument("--trained", type=float, default=0, help="CIFAR-10 epochs first")
    args = parser.parse_args()
    if args.trained < 0 or (args.trained and "resnet50" in args.networks):
        parser.error("--trained takes a positive number of epochs and the CIFAR networks only")
    out = ROOT / "figures" / "bench"
    rows_path = out / "measured_cost.json"
    rows = {key(r): r for r in (read_json(rows_path) if rows_path.exists() else [])}
    for name in args.networks:
        row = run(name, args.exhaustive, args.trained)
        rows[key(row)] = row
    ordered = sorted(rows.values(), key=lambda r: (list(NETWORKS).index(r["network"]), key(r)))
    write_json(rows_path, ordered)
    text = "# The measured allocation's cost against depth\n\n" + table(ordered)
    atomic_write_text(out / "measured_cost.md", text)
    print(text)


if __name__ == "__main__":
    main()
