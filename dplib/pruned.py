"""One-file pruned networks: the weights together with everything that rebuilds the network.

A network built by :func:`dplib.models.build` remembers its preset (name, classes, input,
width multiplier), and :func:`dplib.prune` keeps that record: :func:`save_pruned` writes it with
the widths of every prunable layer and group and the weights; :func:`load_pruned` rebuilds the
network from the file alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from .files import read_torch_file
from .importance import format_widths
from .models import build
from .surgery import widths_of
from .train import CheckpointError, architecture, save_weights

PRUNED_FORMAT = "dplib-pruned-1"


def save_pruned(path: str | os.PathLike, model: nn.Module, **extra: Any) -> Path:
    """Write ``model`` (a dplib preset, pruned or not) to one file that rebuilds it, with
    ``extra`` (plain values), which :func:`load_pruned` returns as ``model.dplib_extra``."""
    preset = getattr(model, "dplib_preset", None)
    if preset is None:
        raise ValueError(
            f"this {type(model).__name__} was not built by dplib.models.build, so its "
            "architecture cannot be rebuilt from a file: save it with dplib.save_checkpoint "
            "and rebuild it yourself"
        )
    widths = format_widths(widths_of(model, coupled=True))
    return save_weights(path, model, PRUNED_FORMAT, preset=dict(preset), widths=widths, extra=extra)


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """The network saved by :func:`save_pruned` at ``path``, in eval mode, on the CPU; a
    FileNotFoundError, or a CheckpointError for a damaged file or another kind of file."""
    payload = read_torch_file(path, PRUNED_FORMAT, "pruned network", error=CheckpointError)
    options = {k: v for k, v in payload["preset"].items() if k != "name"}
    model = build(payload["preset"]["name"], widths=payload["widths"], **options)
    if architecture(model) != [tuple(x) for x in payload["architecture"]]:
        raise CheckpointError(
            f"{path}: the rebuilt {payload['preset']['name']} at widths {payload['widths']} "
            "does not match the saved weights; the file was written by another dplib version"
        )
    model.load_state_dict(payload["state_dict"])
    model.dplib_extra = payload["extra"]
    return model.eval()
