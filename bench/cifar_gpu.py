"""The paper's CIFAR-10 networks on one GPU: VGG-16, ResNet-56 and WideResNet-28-10.

    python bench/cifar_gpu.py                    # on a machine with one GPU, about 8 minutes
    python bench/cifar_gpu.py --toy --device cpu # the same code at toy size (the tests)

The experiment of ``make cifar`` (dplib.experiments.cifar) with the paper's networks and the
schedules one GPU allows: the images and their augmentation on the GPU, bfloat16 autocast,
channels-last. It is sized by measurement, not by guess: for each network a few timed SGD steps
give the seconds per training epoch, and the pretraining epochs E are the most for which the
network's whole run fits its share of ``--budget`` seconds: E epochs of pretraining, one epoch
of importance learning and, for every criterion, a fine-tuning of E/10 epochs (at least half an
epoch) at 2x fewer MACs in both allocations and at the reference widths. A fine-tuning epoch of
a pruned network is counted as one of the full network, since small layers do not run
proportionally faster on a GPU. The rows go to bench/results/cifar_gpu/<setup>.json with the
device named; figures/cifar.md reads bench/results/cifar/ only, so CPU and GPU numbers are never
mixed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")

import dplib  # noqa: E402
from dplib.experiments import cifar  # noqa: E402
from dplib.files import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARES = {"cifar10-resnet56": 0.25, "cifar10-vgg16": 0.25, "cifar10-wrn28_10": 0.5}
CRITERIA = ("dirichlet", "l1", "tp_l2")
FINETUNE_FRACTION = 0.1  # of the pretraining epochs, for each fine-tuning


def setups(device: str, toy: bool) -> dict[str, cifar.Setup]:
    """The GPU setups: the CPU ones of dplib.experiments.cifar, images held on ``device``."""
    wrn = cifar.cifar_setup("wrn28_10", 10, 1)
    chosen = {
        "cifar10-resnet56": cifar.SETUPS["cifar10-resnet56"],
        "cifar10-vgg16": cifar.SETUPS["cifar10-vgg16"],
        "cifar10-wrn28_10": wrn,
    }
    changes = {"data_device": device, "speedup_batch": None, "keep_pruned": False}
    if toy:
        changes |= {"width_multiplier": 0.0625, "batch_size": 32, "widths": ()}
    return {name: dataclasses.replace(setup, **changes) for name, setup in chosen.items()}


def seconds_per_epoch(setup: cifar.Setup, device: str, images: int, steps: int = 5) -> float:
    """Time ``steps`` SGD steps of the setup's network (after one warm-up step)."""
    model = dplib.models.build(setup.model, width_multiplier=setup.width_multiplier).to(device)
    model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = torch.randn(setup.batch_size, 3, 32, 32, device=device)
    batch = batch.contiguous(memory_format=torch.channels_last)
    labels = torch.zeros(setup.batch_size, dtype=torch.long, device=device)
    for step in range(steps + 1):
        if step == 1:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps * math.ceil(images / setup.batch_size)


def pretraining_epochs(seconds: float, epoch_seconds: float, finetunings: int) -> int:
    """The most pretraining epochs E (at least one) for which E + 1 importance epoch +
    ``finetunings`` x max(0.5, E/10) fine-tuning epochs take at most ``seconds``."""
    epochs = seconds / epoch_seconds - 1
    scaled = epochs / (1 + FINETUNE_FRACTION * finetunings)
    if FINETUNE_FRACTION * scaled < 0.5:  # each fine-tuning's half-epoch floor applies
        scaled = epochs - 0.5 * finetunings
    return max(1, math.floor(scaled))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all networks")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--toy", action="store_true", help="toy widths and data (tests)")
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "cifar_gpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cifar_gpu")
    args = parser.parse_args()
    subset = 512 if args.toy else None
    images = subset or 45000
    budgets = ("1.5x",) if args.toy else ("2x",)  # toy widths cannot reach 2x
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    plan = {}
    for name, setup in setups(args.device, args.toy).items():
        epoch = seconds_per_epoch(setup, args.device, images)
        finetunings = len(CRITERIA) * (2 * len(budgets) + len(setup.widths))
        epochs = pretraining_epochs(SHARES[name] * args.budget, epoch, finetunings)
        finetune = max(0.5, FINETUNE_FRACTION * epochs)
        plan[name] = (
            dataclasses.replace(setup, pretrain_epochs=epochs, finetune_epochs=finetune),
            epoch,
        )
        print(f"{name}: {epoch:.1f} s per epoch measured -> {epochs} pretraining epochs")
    for name, (setup, epoch) in plan.items():
        started = time.perf_counter()
        note = {"device": device_name, "budget_seconds": args.budget, "epoch_seconds": epoch}
        done = cifar.run(
            [setup],
            args.root,
            criteria=CRITERIA,
            budgets=budgets,
            subset=subset,
            eval_subset=subset,
            results=args.out,
            note=note,
        )[setup.name]
        done["seconds"] = time.perf_counter() - started  # the whole setup, as run
        write_json(args.out / f"{setup.name}.json", done)
        print(f"{name}: done in {done['seconds']:.0f} s on {device_name}")


if __name__ == "__main__":
    main()
