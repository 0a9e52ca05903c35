"""The paper's CIFAR-10 networks on one GPU: VGG-16, ResNet-56 and WideResNet-28-10.

    python bench/cifar_gpu.py                    # on a machine with one GPU, about 8 minutes
    python bench/cifar_gpu.py --toy --device cpu # the same code at toy size (the tests)

The experiment of ``make cifar`` (dplib.experiments.cifar) with the paper's networks and the
schedules one GPU allows: the images and their augmentation on the GPU, bfloat16 autocast,
channels-last. It is sized by measurement, not by guess: for each network a few timed SGD steps
give the seconds per training epoch, and the pretraining epochs are chosen so that pretraining
takes at most ``PRETRAIN_SHARE`` of the network's share of ``--budget`` seconds (the rest is
importance learning and the fine-tuning of every criterion at 2x fewer MACs and at the
reference widths, at a tenth of the pretraining epochs each). The rows go to
bench/results/cifar_gpu/<setup>.json with the device named; figures/cifar.md reads
bench/results/cifar/ only, so CPU and GPU numbers are never mixed.
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

ROOT = Path(__file__).resolve().parent.parent
SHARES = {"cifar10-resnet56": 0.25, "cifar10-vgg16": 0.25, "cifar10-wrn28_10": 0.5}
PRETRAIN_SHARE = 0.6
CRITERIA = ("dirichlet", "l1", "tp_l2")


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
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    plan = {}
    for name, setup in setups(args.device, args.toy).items():
        epoch = seconds_per_epoch(setup, args.device, images)
        epochs = max(1, math.floor(PRETRAIN_SHARE * SHARES[name] * args.budget / epoch))
        plan[name] = dataclasses.replace(
            setup, pretrain_epochs=epochs, finetune_epochs=max(0.5, epochs / 10)
        )
        print(f"{name}: {epoch:.1f} s per epoch measured -> {epochs} pretraining epochs")
    started = time.perf_counter()
    cifar.run(
        list(plan.values()),
        args.root,
        criteria=CRITERIA,
        budgets=("1.5x",) if args.toy else ("2x",),  # toy widths cannot reach 2x
        subset=subset,
        eval_subset=subset,
        results=args.out,
        note={"device": device_name, "budget_seconds": args.budget},
    )
    print(f"done in {time.perf_counter() - started:.0f} s on {device_name}")


if __name__ == "__main__":
    main()
