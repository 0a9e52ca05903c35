"""The one step loop of the kit: :func:`dplib.fit` and :func:`dplib.learn_importance` run on it.

A run is ``ceil(epochs * batches per epoch)`` steps over a loader made by
:func:`dplib.data.make_loader`. Epoch e is shuffled with ``seed + e``, so a resumed or repeated
run sees the same batches. The loop reads nothing back from the device: a caller keeps its losses
there and reads them once per epoch, in its ``end_epoch``, so a GPU never waits for the host
between batches.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .data import reseed
from .progress import progress


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


def device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextmanager
def evaluating(
    model: nn.Module, device: str | torch.device | None = None, channels_last: bool = False
) -> Iterator[torch.device]:
    """``model`` in eval mode on ``device`` (default: where it is), in the channels-last memory
    format if asked, inside the block, which gets the device; its modules' modes and its device
    (and the usual memory format) are restored afterwards, whatever happens."""
    original = device_of(model)
    target = original if device is None else resolve_device(device)
    modes = {module: module.training for module in model.modules()}
    model.to(target).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        yield target
    finally:
        for module, training in modes.items():
            module.train(training)
        model.to(original)
        if channels_last:
            model.to(memory_format=torch.contiguous_format)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_dtype(device: torch.device, amp: bool | str) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device`` (None: full precision). ``"auto"``: float16
    on CUDA, none on the CPU; ``"bfloat16"``: bfloat16; True: float16 on CUDA, bfloat16 on the
    CPU."""
    if amp == "bfloat16" or (amp is True and device.type == "cpu"):
        return torch.bfloat16
    if device.type == "cuda" and amp in (True, "auto"):
        return torch.float16
    return None


def total_dtype(device: torch.device) -> torch.dtype:
    """The dtype of a sum kept on ``device``: float64 (Python's float), float32 on Apple's
    MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass
class Loop:
    """Where a run is: its device, precision and length, and the step and epoch it has reached."""

    device: torch.device
    precision: torch.dtype | None  # the forward pass's autocast dtype (None: float32)
    channels_last: bool
    steps_per_epoch: int
    total_steps: int
    step: int = 0
    epoch: int = 0

    @classmethod
    def plan(cls, loader: DataLoader, settings: Any, device: str | torch.device) -> Loop:
        """The loop of ``settings.epochs`` passes over ``loader`` in ``settings``' precision."""
        device = resolve_device(device)
        steps = len(loader)
        total = max(1, math.ceil(settings.epochs * steps))
        return cls(
            device, autocast_dtype(device, settings.amp), settings.channels_last, steps, total
        )

    def autocast(self) -> torch.autocast:
        """The context of a forward pass in the run's precision."""
        enabled = self.precision is not None
        return torch.autocast(self.device.type, dtype=self.precision, enabled=enabled)

    def formatted(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in the run's memory format (channels-last applies to 4-D batches only)."""
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def run(
        self,
        loader: DataLoader,
        seed: int,
        step: Callable[[torch.Tensor, torch.Tensor], None],
        end_epoch: Callable[[], dict[str, str] | None],
        label: str,
    ) -> None:
        """Call ``step(images, labels)`` on each batch until the run is done, and
        ``end_epoch()`` after each pass (a partial last pass included)."""
        bar = progress(total=self.total_steps, desc=label)
        bar.update(self.step)
        while self.step < self.total_steps:
            reseed(loader, seed + self.epoch)
            started = self.step
            for images, labels in loader:
                if self.step >= self.total_steps:
                    break
                step(images.to(self.device), labels.to(self.device))
                self.step += 1
                bar.update(1)
            if self.step == started:
                raise ValueError("the loader gave no batch: nothing to train on")
            self.epoch += 1
            postfix = end_epoch()
            if postfix:
                bar.set_postfix(postfix, refresh=False)  # the bar redraws at its own pace
        bar.close()
