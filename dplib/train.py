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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .data import reseed
from .files import read_torch_file
from .importance import atomic_torch_save
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
    checkpoint: str | os.PathLike | None = None,
    show_progress: bool = True,
    desc: str = "train",
) -> dict[str, Any]:
    """Train ``model`` in place with SGD and return its history.

    Args:
        epochs: passes over ``train_loader`` (a fraction trains on part of one pass).
        schedule: ``"cosine"`` (decay to 0 over the run) or ``"constant"``.
        val_loader: evaluated after each epoch; with ``keep_best`` the weights of the epoch with
            the best validation accuracy are restored at the end.
        seed: seeds the weights' updates and the data order (epoch e is shuffled with
            seed + e, so a resumed run sees the same batches as an uninterrupted one).
        augment: random crops (4-pixel padding) and horizontal flips, for CIFAR-like images.
        amp: mixed precision (float16 autocast with a gradient scaler) on CUDA; ``"auto"`` turns
            it on when the device is CUDA. Ignored on the CPU.
        checkpoint: a file where the training state (weights, optimiser, random generators,
            history) is written after every completed epoch. When it exists at the start, the
            run resumes from it and ends with the same weights as an uninterrupted run.

    Under ``torchrun`` (see :mod:`dplib.distributed`) the loader is sharded, gradients are
    averaged by DistributedDataParallel, and rank 0 writes the checkpoint.

    Returns:
        ``{"epochs": [...], "val_accuracy": [...], "train_loss": [...], "seconds": ...,
        "seconds_per_epoch": ...}``.
    """
    from . import distributed
    from .data import random_crop_flip

    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or 'constant'")
    device = resolve_device(device)
    use_amp = device.type == "cuda" and (amp is True or amp == "auto")
    set_seed(seed)
    loader = distributed.shard(train_loader, seed)
    model.to(device).train()
    network = model
    if distributed.is_distributed():
        ids = [device.index] if device.type == "cuda" else None
        network = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    steps_per_epoch = len(loader)
    total_steps = max(1, math.ceil(epochs * steps_per_epoch))
    history: dict[str, Any] = {"epochs": [], "val_accuracy": [], "train_loss": []}
    state = {"epoch": 0, "step": 0, "best_accuracy": -1.0, "best_state": None, "seconds": 0.0}
    if checkpoint is not None and Path(checkpoint).exists():
        state, history = _resume(checkpoint, model, optimizer, scaler)
    started = time.perf_counter() - state["seconds"]
    step, epoch = state["step"], state["epoch"]
    bar = progress(total=total_steps, desc=desc, enabled=show_progress and distributed.is_main())
    bar.update(step)
    while step < total_steps:
        reseed(loader, seed + epoch)
        distributed.set_epoch(loader, epoch)
        running, seen = 0.0, 0
        for images, labels in loader:
            if step >= total_steps:
                break
            if schedule == "cosine":
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            images, labels = images.to(device), labels.to(device)
            if augment:
                images = random_crop_flip(images)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = F.cross_entropy(network(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            running += loss.item() * labels.numel()
            seen += labels.numel()
            step += 1
            bar.update(1)
        epoch += 1
        history["epochs"].append(step / steps_per_epoch)
        history["train_loss"].append(running / max(seen, 1))
        if val_loader is not None:
            accuracy = evaluate(model, val_loader, device)["accuracy"]
            history["val_accuracy"].append(accuracy)
            bar.set_postfix(val_acc=f"{accuracy:.4f}")
            if keep_best and accuracy > state["best_accuracy"]:
                state["best_accuracy"] = accuracy
                state["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.train()
        state.update(epoch=epoch, step=step, seconds=time.perf_counter() - started)
        if checkpoint is not None and distributed.is_main():
            _save_training_state(checkpoint, model, optimizer, scaler, state, history)
    bar.close()
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    history["seconds"] = time.perf_counter() - started
    history["seconds_per_epoch"] = history["seconds"] / (total_steps / steps_per_epoch)
    model.eval()
    return history


def _save_training_state(path, model, optimizer, scaler, state, history) -> None:
    payload = {
        "format": "dplib-training-state-1",
        "architecture": architecture(model),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "state": state,
        "history": history,
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


def fit_or_load(
    model: nn.Module,
    checkpoint: str | os.PathLike,
    train_loader: DataLoader,
    *,
    model_name: str,
    **fit_options: Any,
) -> bool:
    """Load ``checkpoint`` into ``model``, or train it with :func:`fit` and save it there.

    A missing, corrupt or mismatched checkpoint is (re)built. Returns True when it was loaded.
    """
    try:
        load_checkpoint(checkpoint, model)
        return True
    except (FileNotFoundError, ValueError):
        fit(model, train_loader, **fit_options)
        save_checkpoint(checkpoint, model, model_name=model_name)
        return False
