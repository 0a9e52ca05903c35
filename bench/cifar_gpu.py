"""The paper's CIFAR-10 networks on one GPU: VGG-16, ResNet-56 and WideResNet-28-10.

    python bench/cifar_gpu.py                    # on a machine with one GPU, about 8 minutes
    python bench/cifar_gpu.py --toy --device cpu # the same code at toy size (the tests)

The experiment of ``make cifar`` (dplib.experiments.cifar) with the paper's networks and the
schedules one GPU allows: the images and their augmentation on the GPU, bfloat16 autocast,
channels-last, and batches of ``BATCH_SIZE`` images. Small networks leave a GPU waiting on the
host for each kernel (on the H200 this kit was run on, ResNet-56 at batch 128 took 12 s per
epoch), so the batch is 4x the CPU's 128 with the learning rates scaled linearly (the usual
rule), and importance learning runs 4 epochs: the same number of steps of the gates' optimiser
as the method's one epoch at batch 128.

It is sized by measurement, not by guess: for each network a few timed SGD steps give the
seconds per training epoch, and the pretraining epochs E are the most for which the network's
whole run fits its share of ``--budget`` seconds: E epochs of pretraining, the importance
epochs and, for every criterion, a fine-tuning of E/10 epochs (at least half an epoch) at 2x
fewer MACs in both allocations and at the reference widths. A fine-tuning epoch of a pruned
network is counted as one of the full network, since small layers do not run proportionally
faster on a GPU. The rows go to bench/results/cifar_gpu/<setup>.json with the device named,
and ``make figures`` draws figures/cifar_gpu.md, .csv and cifar_gpu_<model>.png from them, apart
from figures/cifar.* (the CPU's rows), so CPU and GPU numbers are never mixed.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")

import dplib  # noqa: E402
from dplib.experiments import cifar, profiles  # noqa: E402
from dplib.experiments.experiment import Experiment  # noqa: E402
from dplib.files import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARES = {"cifar10-resnet56": 0.35, "cifar10-vgg16": 0.2, "cifar10-wrn28_10": 0.45}
CRITERIA = ("dirichlet", "l1", "tp_l2")
FINETUNE_FRACTION = 0.1  # of the pretraining epochs, for each fine-tuning
BATCH_SIZE = 512
SCALE = BATCH_SIZE / 128  # of the CPU setups' learning rates and importance epochs


def setups(device: str, toy: bool) -> dict[str, Experiment]:
    """The GPU setups: the CPU ones of dplib.experiments.cifar, images held on ``device``."""
    chosen = {
        "cifar10-resnet56": cifar.SETUPS["cifar10-resnet56"],
        "cifar10-vgg16": cifar.SETUPS["cifar10-vgg16"],
        "cifar10-wrn28_10": profiles.cifar_setup("wrn28_10", 10, 1),
    }
    changes = {"data_device": device, "speedup_batch": None, "keep_pruned": False}
    if toy:
        changes |= {"width_multiplier": 0.0625, "batch_size": 32, "widths": ()}
        changes |= {"subset": 512, "eval_subset": 512}
    return {name: _scaled(setup).replace(**changes) for name, setup in chosen.items()}


def _scaled(setup: Experiment) -> Experiment:
    """Batch ``BATCH_SIZE``: learning rates x ``SCALE``, importance epochs x ``SCALE``."""
    return setup.replace(
        batch_size=BATCH_SIZE,
        pretraining=setup.pretraining.replace(lr=setup.pretraining.lr * SCALE),
        finetuning=setup.finetuning.replace(lr=setup.finetuning.lr * SCALE),
        importance=setup.importance.replace(epochs=setup.importance.epochs * SCALE),
    )


def seconds_per_epoch(setup: Experiment, device: str, images: int, steps: int = 5) -> float:
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


def pretraining_epochs(
    seconds: float, epoch_seconds: float, finetunings: int, importance_epochs: float = 1.0
) -> int:
    """The most pretraining epochs E (at least one) for which E + ``importance_epochs`` +
    ``finetunings`` x max(0.5, E/10) fine-tuning epochs take at most ``seconds``."""
    epochs = seconds / epoch_seconds - importance_epochs
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
    if args.budget <= 0:
        parser.error(f"--budget is in seconds and must be positive, got {args.budget}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(
            "--device cuda, but torch sees no CUDA GPU here; on a CPU try it at toy "
            "size: --toy --device cpu"
        )
    images = 512 if args.toy else 45000
    budgets = ("1.5x",) if args.toy else ("2x",)  # toy widths cannot reach 2x
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    plan = {}
    for name, setup in setups(args.device, args.toy).items():
        epoch = seconds_per_epoch(setup, args.device, images)
        finetunings = len(CRITERIA) * (2 * len(budgets) + len(setup.widths))
        share = SHARES[name] * args.budget
        epochs = pretraining_epochs(share, epoch, finetunings, setup.importance.epochs)
        finetune = max(0.5, FINETUNE_FRACTION * epochs)
        setup = setup.replace(
            pretraining=setup.pretraining.replace(epochs=epochs),
            finetuning=setup.finetuning.replace(epochs=finetune),
        )
        plan[name] = (setup, epoch)
        print(f"{name}: {epoch:.1f} s per epoch measured -> {epochs} pretraining epochs")
    for name, (setup, epoch) in plan.items():
        started = time.perf_counter()
        note = {"device": device_name, "budget_seconds": args.budget, "epoch_seconds": epoch}
        done = cifar.run(
            [setup],
            args.root,
            criteria=CRITERIA,
            budgets=budgets,
            results=args.out,
            note=note,
        )[setup.name]
        done["seconds"] = time.perf_counter() - started  # the whole setup, as run
        write_json(args.out / f"{setup.name}.json", done)
        print(f"{name}: done in {done['seconds']:.0f} s on {device_name}")


if __name__ == "__main__":
    main()
