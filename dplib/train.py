"""Training, evaluation and checkpoints.

:func:`fit` trains with SGD (:class:`dplib.TrainSettings`) on :class:`dplib.loop.Loop` and keeps
the weights of the epoch with the best *validation* accuracy, never the test accuracy.
Checkpoints are written atomically and carry their architecture, so loading one into another
network fails with a message that says so.
"""

from __future__ import annotations

import itertools
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

from .checks import check_data
from .data import random_crop_flip
from .files import atomic_torch_save, read_torch_file
from .loop import Loop, device_of, evaluating, set_seed, total_dtype
from .settings import TrainSettings, with_knobs

CHECKPOINT_FORMAT = "dplib-checkpoint-1"
TRAINING_STATE_FORMAT = "dplib-training-state-2"
ONECYCLE_WARMUP = 0.3  # share of the steps over which "onecycle" warms up


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (corrupt, or of another architecture)."""


def evaluate(
    model: nn.Module, loader: DataLoader, device: str | torch.device | None = None
) -> dict[str, float]:
    """Mean cross-entropy ``loss`` and ``accuracy`` (0..1) of ``model`` over ``loader``, in eval
    mode on ``device`` (default: where the model is), both restored afterwards; the sums stay on
    the device and are read once, at the end."""
    with evaluating(model, device) as device, torch.no_grad():
        total_loss = torch.zeros((), dtype=total_dtype(device), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        count = 0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            loss = F.cross_entropy(logits, labels, reduction="sum")
            total_loss += loss.to(total_loss.dtype)
            correct += (logits.argmax(1) == labels).sum()
            count += labels.numel()
    if count == 0:
        raise ValueError("the loader is empty: nothing to evaluate")
    return {"loss": total_loss.item() / count, "accuracy": correct.item() / count}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: DataLoader, batches: int = 20) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` batches of ``loader``
    (a pruned network's are stale: a residual one scores near chance); the weights do not
    change, so accuracy right after pruning still measures the kept units. Returns the number
    of BatchNorm modules reset (0: the model is untouched)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms and batches < 1:
        raise ValueError(f"recalibrating BatchNorm needs at least one batch, got {batches}")
    # torch's SWA helper: reset, then a cumulative average over the batches in train mode
    torch.optim.swa_utils.update_bn(itertools.islice(loader, batches), model, device_of(model))
    return len(norms)


def copy_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``module``'s state dict (weights, buffers), to restore it later."""
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


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


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    settings: TrainSettings | None = None,
    *,
    val_loader: DataLoader | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    **knobs: Any,
) -> dict[str, Any]:
    """Train ``model`` in place with SGD; its history: lists ``epochs``, ``val_accuracy``,
    ``train_loss``, and ``seconds``, ``seconds_per_epoch``.

    Args:
        settings: the knobs (:class:`dplib.TrainSettings`); single ``knobs`` given as keywords
            override them (``fit(model, loader, epochs=3)``).
        val_loader: evaluated after each epoch (for ``keep_best``).
        seed: seeds the updates and the data order (epoch e is shuffled with seed + e).
        checkpoint: the training state, written after every epoch; a run that finds it resumes
            and ends with the same weights as an uninterrupted run.
    """
    settings = with_knobs(settings, TrainSettings, knobs)
    check_data(model, train_loader, "fit")
    set_seed(seed)
    training = _Training.start(
        model, Loop.plan(train_loader, settings, device), settings, checkpoint
    )
    started = time.perf_counter() - training.seconds
    training.loop.run(
        train_loader,
        seed,
        training.step,
        lambda: training.end_epoch(val_loader, checkpoint, started),
        "fit",
    )
    return training.finish(time.perf_counter() - started)


@dataclass
class _Training:
    """What one call of :func:`fit` carries from step to step (and to its training state)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loop: Loop
    settings: TrainSettings
    best_accuracy: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    seconds: float = 0.0
    history: dict[str, list[float]] = field(
        default_factory=lambda: {"epochs": [], "val_accuracy": [], "train_loss": []}
    )

    def __post_init__(self) -> None:
        # float16 needs its gradients scaled; bfloat16 has float32's range and does not
        enabled = self.loop.precision == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=enabled)
        # the epoch's loss, summed on the device and read once at the epoch's end
        self.running = torch.zeros((), dtype=total_dtype(self.loop.device), device=self.loop.device)
        self.seen = 0

    @classmethod
    def start(
        cls,
        model: nn.Module,
        loop: Loop,
        settings: TrainSettings,
        checkpoint: str | os.PathLike | None,
    ) -> _Training:
        """The model on its device and format, its optimiser, and a resumed state if any."""
        model.to(loop.device).train()
        if loop.channels_last:
            model.to(memory_format=torch.channels_last)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            trainable,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
        training = cls(model, optimizer, loop, settings)
        if checkpoint is not None and Path(checkpoint).exists():
            _resume(checkpoint, training)
        return training

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """One SGD step on a batch (the schedule's learning rate, augmentation, precision)."""
        settings, loop = self.settings, self.loop
        if settings.schedule != "constant":
            rate = learning_rate(settings.schedule, settings.lr, loop.step, loop.total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = rate
        if settings.augment:
            images = random_crop_flip(images)
        with loop.autocast():
            loss = F.cross_entropy(self.model(loop.formatted(images)), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.running += loss.detach().to(self.running.dtype) * labels.numel()
        self.seen += labels.numel()

    def end_epoch(
        self, val_loader: DataLoader | None, checkpoint: str | os.PathLike | None, started: float
    ) -> dict[str, str] | None:
        """Record the epoch (the one read of its loss), evaluate on validation data and keep
        the best weights, save the training state; the progress bar's postfix."""
        self.history["epochs"].append(self.loop.step / self.loop.steps_per_epoch)
        self.history["train_loss"].append(self.running.item() / max(self.seen, 1))
        self.running.zero_()
        self.seen = 0
        postfix = None
        if val_loader is not None:
            accuracy = evaluate(self.model, val_loader, self.loop.device)["accuracy"]
            self.history["val_accuracy"].append(accuracy)
            postfix = {"val_acc": f"{accuracy:.4f}"}
            if self.settings.keep_best and accuracy > self.best_accuracy:
                self.best_accuracy, self.best_state = accuracy, copy_state(self.model)
        self.seconds = time.perf_counter() - started
        if checkpoint is not None:
            _save_training_state(checkpoint, self)
        return postfix

    def finish(self, seconds: float) -> dict[str, Any]:
        """Restore the best weights (if kept), eval mode, the usual memory format; the history."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        epochs = self.loop.total_steps / self.loop.steps_per_epoch
        history = {**self.history, "seconds": seconds, "seconds_per_epoch": seconds / epochs}
        if self.loop.channels_last:
            self.model.to(memory_format=torch.contiguous_format)
        self.model.eval()
        return history


def _save_training_state(path: str | os.PathLike, training: _Training) -> None:
    """Write what :func:`_resume` needs to continue ``training``, atomically."""
    payload = {
        "format": TRAINING_STATE_FORMAT,
        "architecture": architecture(training.model),
        "model": {k: v.detach().cpu() for k, v in training.model.state_dict().items()},
        "optimizer": training.optimizer.state_dict(),
        "scaler": training.scaler.state_dict(),
        "progress": {
            "step": training.loop.step,
            "epoch": training.loop.epoch,
            "best_accuracy": training.best_accuracy,
            "best_state": training.best_state,
            "seconds": training.seconds,
        },
        "history": training.history,
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        },
    }
    if torch.cuda.is_available():
        payload["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    atomic_torch_save(payload, path)


def _resume(path: str | os.PathLike, training: _Training) -> None:
    """Continue ``training`` from the state at ``path`` (weights, optimiser, generators)."""
    # not weights_only: the state holds Python's and NumPy's random generator states
    payload = read_torch_file(
        path, TRAINING_STATE_FORMAT, "training state", error=CheckpointError, weights_only=False
    )
    if [tuple(x) for x in payload["architecture"]] != architecture(training.model):
        raise CheckpointError(
            f"{path} is the training state of another architecture; delete it or use the "
            "model it was written for"
        )
    training.model.load_state_dict(payload["model"])
    training.optimizer.load_state_dict(payload["optimizer"])
    training.scaler.load_state_dict(payload["scaler"])
    done = payload["progress"]
    training.loop.step, training.loop.epoch = done["step"], done["epoch"]
    training.best_accuracy, training.best_state = done["best_accuracy"], done["best_state"]
    training.seconds, training.history = done["seconds"], payload["history"]
    torch.set_rng_state(payload["rng"]["torch"])
    random.setstate(payload["rng"]["python"])
    np.random.set_state(payload["rng"]["numpy"])
    if "cuda" in payload["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])


# Checkpoints -------------------------------------------------------------------------------
def architecture(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The (name, shape) of every entry of the state dict: what a checkpoint must match."""
    return [(name, tuple(value.shape)) for name, value in model.state_dict().items()]


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, *, model_name: str, **extra: Any
) -> Path:
    """Write ``model``'s weights and architecture to ``path`` atomically, ``extra`` (plain
    values: widths, metrics, configuration) beside them."""
    return save_weights(path, model, CHECKPOINT_FORMAT, model_name=model_name, extra=extra)


def save_weights(path: str | os.PathLike, model: nn.Module, kind: str, **fields: Any) -> Path:
    """Write ``model``'s weights (on the CPU) and architecture, tagged with the format ``kind``,
    and the plain ``fields`` beside them, to ``path`` atomically (a checkpoint, a pruned
    network)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": kind, **fields, "architecture": architecture(model), "state_dict": state}
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike, model: nn.Module) -> dict[str, Any]:
    """Load the weights at ``path`` into ``model``; return the stored ``extra`` dict. A
    corrupt file, or one of another architecture, is a :class:`CheckpointError`."""
    payload = read_torch_file(path, CHECKPOINT_FORMAT, "checkpoint", error=CheckpointError)
    expected = [(name, tuple(shape)) for name, shape in payload["architecture"]]
    actual = architecture(model)
    if expected != actual:
        saved, here = dict(expected), dict(actual)
        differences = [
            f"{name}: checkpoint {saved.get(name)} vs model {here.get(name)}"
            for name in saved | here
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
