"""Training, evaluation, seeds, devices and checkpoints.

``fit`` trains with SGD (momentum, weight decay, cosine learning rate) and keeps the weights of
the epoch with the best *validation* accuracy, never the test accuracy. Checkpoints are written
atomically and carry the architecture they belong to, so loading one into another network fails
with a message that says so.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from . import distributed
from .checks import check_data
from .data import random_crop_flip, reseed
from .files import atomic_torch_save, read_torch_file
from .progress import progress

CHECKPOINT_FORMAT = "dplib-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (corrupt, or of another architecture)."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to torch.device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'") from error


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def evaluate(
    model: nn.Module, loader: DataLoader, device: str | torch.device = "auto"
) -> dict[str, float]:
    """Mean cross-entropy ``loss`` and ``accuracy`` (0..1) of ``model`` over ``loader``.

    The model is put in eval mode for the pass and its mode restored afterwards.
    """
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
            count += labels.numel()
    model.train(was_training)
    if count == 0:
        raise ValueError("the loader is empty: nothing to evaluate")
    return {"loss": total_loss / count, "accuracy": correct / count}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: DataLoader, batches: int = 20) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` batches of ``loader``.

    Surgery keeps each BatchNorm's statistics for the channels it keeps, but a layer whose
    inputs were pruned computes different outputs, so its stored statistics are stale: a
    pruned residual network scores near chance until they are re-estimated. The weights are not
    changed (a forward pass in train mode with a cumulative average, then eval mode), so
    "accuracy right after pruning" stays a measure of the kept units. Returns the number of
    BatchNorm modules reset (0: nothing to do, the model is untouched).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    if batches < 1:
        raise ValueError(f"recalibrating BatchNorm needs at least one batch, got {batches}")
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches seen
    model.train()
    device = next(model.parameters()).device
    for index, (images, _) in enumerate(loader):
        if index == batches:
            break
        model(images.to(device))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.train(was_training)
    return len(norms)


def copy_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module``'s state dict (weights, buffers), to restore it later."""
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    epochs: float = 1,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
    val_loader: DataLoader | None = None,
    keep_best: bool = True,
    device: str | torch.device = "auto",
    seed: int = 0,
    augment: bool = False,
    amp: bool | str = "auto",
    channels_last: bool = False,
    checkpoint: str | os.PathLike | None = None,
    show_progress: bool = True,
    desc: str = "train",
) -> dict[str, Any]:
    """Train ``model`` in place with SGD and return its history.

    Args:
        epochs: passes over ``train_loader`` (a fraction trains on part of one pass).
        schedule: ``"cosine"`` (decay to 0 over the run), ``"onecycle"`` (a linear warm-up
            from lr/25 to lr over the first 30% of the steps, then cosine decay to 0) or
            ``"constant"``.
        val_loader: evaluated after each epoch; with ``keep_best`` the weights of the epoch with
            the best validation accuracy are restored at the end.
        seed: seeds the weights' updates and the data order (epoch e is shuffled with
            seed + e, so a resumed run sees the same batches as an uninterrupted one).
        augment: random crops (4-pixel padding) and horizontal flips, for CIFAR-like images.
        amp: mixed precision, see :func:`autocast_dtype`: ``"auto"`` is float16 autocast with a
            gradient scaler on CUDA and none on the CPU; ``"bfloat16"`` (or True on the CPU)
            runs the forward pass in bfloat16 autocast, fast on CPUs with bfloat16 support.
        channels_last: the model and the images in the channels-last memory format during
            training (faster convolutions on CPUs); the model is returned in the usual format.
        checkpoint: a file where the training state (weights, optimiser, random generators,
            history) is written after every completed epoch. When it exists at the start, the
            run resumes from it and ends with the same weights as an uninterrupted run.

    Under ``torchrun`` (see :mod:`dplib.distributed`) the loader is sharded, gradients are
    averaged by DistributedDataParallel, and rank 0 writes the checkpoint.

    Returns:
        ``{"epochs": [...], "val_accuracy": [...], "train_loss": [...], "seconds": ...,
        "seconds_per_epoch": ...}``.
    """
    _check_schedule(epochs, schedule)
    check_data(model, train_loader, "fit")
    device = resolve_device(device)
    set_seed(seed)
    loader = distributed.shard(train_loader, seed)
    sgd = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
    run = _start_run(model, loader, device, epochs, amp, channels_last, checkpoint, sgd)
    main = distributed.is_main()
    bar = progress(total=run.total_steps, desc=desc, enabled=show_progress and main)
    steps = {"lr": lr, "schedule": schedule, "augment": augment}
    saving = checkpoint if main else None
    seconds = _train_epochs(run, loader, seed, steps, val_loader, keep_best, saving, bar)
    return _finish(run, seconds)


def _start_run(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    epochs: float,
    amp: bool | str,
    channels_last: bool,
    checkpoint: str | os.PathLike | None,
    sgd: dict[str, float],
) -> _Run:
    """The model on its device (and memory format), its SGD optimiser, and the state of a
    resumed run when ``checkpoint`` exists."""
    precision = autocast_dtype(device, amp)
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, **sgd)
    network = _parallel(model, device)
    run = _Run(model, network, optimizer, device, precision, epochs, len(loader), channels_last)
    if checkpoint is not None and Path(checkpoint).exists():
        run.state, run.history = _resume(checkpoint, model, run.optimizer, run.scaler)
    return run


SCHEDULES = ("cosine", "onecycle", "constant")
ONECYCLE_WARMUP = 0.3  # share of the steps over which "onecycle" warms up


def _check_schedule(epochs: float, schedule: str) -> None:
    """A ValueError for a schedule :func:`fit` cannot run."""
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


def learning_rate(schedule: str, lr: float, step: int, total: int) -> float:
    """The learning rate of ``schedule`` at ``step`` of ``total`` (peak ``lr``)."""
    if schedule == "constant":
        return lr
    if schedule == "onecycle":
        warmup = ONECYCLE_WARMUP * total
        if step < warmup:
            return lr * (1 / 25 + (1 - 1 / 25) * step / warmup)
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    return lr * 0.5 * (1 + math.cos(math.pi * step / total))


def autocast_dtype(device: torch.device, amp: bool | str) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device`` (None: full precision).

    ``"auto"``: float16 on CUDA, none on the CPU; ``"bfloat16"``: bfloat16 on either; True:
    float16 on CUDA, bfloat16 on the CPU; False: none.
    """
    if amp not in (True, False, "auto", "bfloat16"):
        raise ValueError(f"amp must be True, False, 'auto' or 'bfloat16', got {amp!r}")
    if amp == "bfloat16" or (amp is True and device.type == "cpu"):
        return torch.bfloat16
    if device.type == "cuda" and amp in (True, "auto"):
        return torch.float16
    return None


def _train_epochs(
    run: _Run,
    loader: DataLoader,
    seed: int,
    steps: dict[str, Any],
    val_loader: DataLoader | None,
    keep_best: bool,
    checkpoint: str | os.PathLike | None,
    bar: Any,
) -> float:
    """Train epoch after epoch until the run's steps are done; the seconds it took in all
    (a resumed run's earlier seconds included). The training state is saved after each."""
    started = time.perf_counter() - run.state["seconds"]
    bar.update(run.state["step"])
    while run.state["step"] < run.total_steps:
        reseed(loader, seed + run.state["epoch"])
        distributed.set_epoch(loader, run.state["epoch"])
        train_loss = _train_epoch(run, loader, bar=bar, **steps)
        _end_epoch(run, train_loss, val_loader, keep_best, bar)
        run.state["seconds"] = time.perf_counter() - started
        if checkpoint is not None:
            _save_training_state(checkpoint, run)
    bar.close()
    return time.perf_counter() - started


@dataclass
class _Run:
    """What one call of :func:`fit` carries from step to step (and to its checkpoint)."""

    model: nn.Module
    network: nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    device: torch.device
    autocast: torch.dtype | None  # the forward pass's autocast dtype (None: float32)
    epochs: float
    steps_per_epoch: int
    channels_last: bool = False
    state: dict[str, Any] = field(
        default_factory=lambda: {
            "epoch": 0,
            "step": 0,
            "best_accuracy": -1.0,
            "best_state": None,
            "seconds": 0.0,
        }
    )
    history: dict[str, Any] = field(
        default_factory=lambda: {"epochs": [], "val_accuracy": [], "train_loss": []}
    )

    def __post_init__(self) -> None:
        self.total_steps = max(1, math.ceil(self.epochs * self.steps_per_epoch))
        # float16 needs its gradients scaled; bfloat16 has float32's range and does not
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast == torch.float16)


def _parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """The model wrapped in DistributedDataParallel under ``torchrun``, else the model."""
    if not distributed.is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _train_epoch(
    run: _Run, loader: DataLoader, *, lr: float, schedule: str, augment: bool, bar: Any
) -> float:
    """SGD over one pass of ``loader`` (or what is left of the run); the mean training loss."""
    # summed on the device and read once per epoch: reading it every step would make a GPU
    # wait for the host between batches (float64 as Python's float; Apple's MPS has none)
    total_dtype = torch.float32 if run.device.type == "mps" else torch.float64
    running, seen = torch.zeros((), dtype=total_dtype, device=run.device), 0
    for images, labels in loader:
        step = run.state["step"]
        if step >= run.total_steps:
            break
        if schedule != "constant":
            for group in run.optimizer.param_groups:
                group["lr"] = learning_rate(schedule, lr, step, run.total_steps)
        images, labels = images.to(run.device), labels.to(run.device)
        if augment:
            images = random_crop_flip(images)
        if run.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        enabled = run.autocast is not None
        with torch.autocast(run.device.type, dtype=run.autocast, enabled=enabled):
            loss = F.cross_entropy(run.network(images), labels)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        running += loss.detach().to(total_dtype) * labels.numel()
        seen += labels.numel()
        run.state["step"] = step + 1
        bar.update(1)
    return running.item() / max(seen, 1)


def _end_epoch(
    run: _Run, train_loss: float, val_loader: DataLoader | None, keep_best: bool, bar: Any
) -> None:
    """Record the epoch; evaluate on validation data and keep the best weights."""
    run.state["epoch"] += 1
    run.history["epochs"].append(run.state["step"] / run.steps_per_epoch)
    run.history["train_loss"].append(train_loss)
    if val_loader is None:
        return
    accuracy = evaluate(run.model, val_loader, run.device)["accuracy"]
    run.history["val_accuracy"].append(accuracy)
    bar.set_postfix(val_acc=f"{accuracy:.4f}")
    if keep_best and accuracy > run.state["best_accuracy"]:
        run.state["best_accuracy"] = accuracy
        run.state["best_state"] = copy_state(run.model)
    run.model.train()


def _finish(run: _Run, seconds: float) -> dict[str, Any]:
    """Restore the best weights (if kept), put the model in eval mode, close the history."""
    if run.state["best_state"] is not None:
        run.model.load_state_dict(run.state["best_state"])
    run.history["seconds"] = seconds
    run.history["seconds_per_epoch"] = seconds / (run.total_steps / run.steps_per_epoch)
    if run.channels_last:
        run.model.to(memory_format=torch.contiguous_format)
    run.model.eval()
    return run.history


def _save_training_state(path: str | os.PathLike, run: _Run) -> None:
    """Write the training state of ``run`` (resumable by :func:`_resume`), atomically."""
    payload = {
        "format": "dplib-training-state-1",
        "architecture": architecture(run.model),
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "state": run.state,
        "history": run.history,
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        },
    }
    if torch.cuda.is_available():
        payload["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    atomic_torch_save(payload, path)


def _resume(path, model, optimizer, scaler) -> tuple[dict, dict]:
    # not weights_only: the state holds Python's and NumPy's random generator states
    payload = read_torch_file(
        path,
        "dplib-training-state-1",
        "training state",
        error=CheckpointError,
        weights_only=False,
    )
    if [tuple(x) for x in payload["architecture"]] != architecture(model):
        raise CheckpointError(
            f"{path} is the training state of another architecture; delete it or use the "
            "model it was written for"
        )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["rng"]["torch"])
    random.setstate(payload["rng"]["python"])
    np.random.set_state(payload["rng"]["numpy"])
    if "cuda" in payload["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    return payload["state"], payload["history"]


# Checkpoints -------------------------------------------------------------------------------
def architecture(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The (name, shape) of every entry of the state dict: what a checkpoint must match."""
    return [(name, tuple(value.shape)) for name, value in model.state_dict().items()]


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, *, model_name: str, **extra: Any
) -> Path:
    """Write ``model``'s weights and architecture to ``path`` atomically.

    ``extra`` (plain Python values: widths, metrics, configuration) is stored beside them.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_name": model_name,
        "architecture": architecture(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra,
    }
    return atomic_torch_save(payload, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file; a missing or corrupt file raises a clear error."""
    return read_torch_file(path, CHECKPOINT_FORMAT, "checkpoint", error=CheckpointError)


def load_checkpoint(path: str | os.PathLike, model: nn.Module) -> dict[str, Any]:
    """Load the weights at ``path`` into ``model``; return the stored ``extra`` dict.

    Raises:
        CheckpointError: the file is corrupt, or it belongs to another architecture (the
            message names both and the first difference).
    """
    payload = read_checkpoint(path)
    expected = [(name, tuple(shape)) for name, shape in payload["architecture"]]
    actual = architecture(model)
    if expected != actual:
        saved = dict(expected)
        here = dict(actual)
        differences = [
            f"{name}: checkpoint {saved.get(name)} vs model {here.get(name)}"
            for name in list(dict.fromkeys([*saved, *here]))
            if saved.get(name) != here.get(name)
        ]
        raise CheckpointError(
            f"{path} holds a {payload['model_name']!r} network of another architecture than "
            f"this {type(model).__name__}: {'; '.join(differences[:3])}"
            f"{' ...' if len(differences) > 3 else ''}. Build the model the checkpoint was "
            "saved from (same name and widths) or retrain."
        )
    model.load_state_dict(payload["state_dict"])
    return payload["extra"]
