"""Measure networks: exact parameters, MACs, wall-clock latency, rank agreement.

Conventions (stated once, used everywhere):

- parameters: ``sum(p.numel())`` over the model's parameters (BatchNorm's gamma and beta count,
  its running statistics do not);
- MACs: multiply-accumulate operations of one forward pass for the given input shape, counted by
  ``torch.utils.flop_counter`` (which counts 2 FLOPs per multiply-add in convolutions and matrix
  products); one multiply-add = 1 MAC. Bias additions, BatchNorm, activations and pooling are
  not counted.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from scipy import stats
from torch import nn
from torch.fx.experimental.optimization import fuse
from torch.utils.flop_counter import FlopCounterMode

from .train import resolve_device


class Count(NamedTuple):
    """Exact parameters and MACs of a network (see the module docstring)."""

    params: int
    macs: int


def count(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> Count:
    """Parameters and MACs of ``model`` for one forward pass of a tensor of ``input_shape``.

    ``input_shape`` includes the batch axis; (1, C, H, W) gives the MACs of one image.
    One multiply-add counts as 1 MAC.
    """
    if len(input_shape) < 2:
        raise ValueError(f"input_shape must include the batch axis, got {input_shape}")
    params = sum(p.numel() for p in model.parameters())
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(input_shape, device=device, dtype=dtype))
    except RuntimeError as error:
        raise ValueError(
            f"input_shape {tuple(input_shape)} does not fit this {type(model).__name__} "
            f"({str(error).splitlines()[0]}); give (batch, channels, height, width) of its input"
        ) from None
    finally:
        model.train(was_training)
    return Count(params=params, macs=counter.get_total_flops() // 2)


MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


def for_inference(model: nn.Module) -> nn.Module:
    """An inference copy of ``model``: eval mode, BatchNorm folded into the convolution before it.

    Uses ``torch.fx.experimental.optimization.fuse``; a model it cannot trace is returned as an
    eval-mode copy without folding. The outputs equal the model's up to float rounding.
    """
    copy_ = copy.deepcopy(model).eval()
    try:
        return fuse(copy_)
    except Exception:  # fx cannot trace every model; folding is an optimisation, not a must
        return copy_


def latency(
    model: nn.Module,
    input_shape: tuple[int, ...] = (64, 1, 28, 28),
    *,
    repeats: int = 50,
    warmup: int = 5,
    device: str | torch.device = "cpu",
    memory_format: str = "contiguous",
) -> float:
    """Median wall time in seconds of one forward pass on a batch of ``input_shape``.

    ``memory_format``: ``"contiguous"`` (NCHW), ``"channels_last"`` (NHWC, often much faster
    for the odd channel counts of pruned convolutions on CPU), or ``"auto"``: the faster of the
    two, as a deployment would choose.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory_format {memory_format!r}; use one of {MEMORY_FORMATS}")
    if memory_format == "auto":
        return min(
            latency(
                model,
                input_shape,
                repeats=repeats,
                warmup=warmup,
                device=device,
                memory_format=choice,
            )
            for choice in ("contiguous", "channels_last")
        )
    device = resolve_device(device)
    was_training = model.training
    model.eval().to(device)
    batch = torch.randn(input_shape, device=device)
    # channels_last only means something for a 4-D (N, C, H, W) batch
    channels_last = memory_format == "channels_last" and batch.dim() == 4
    if channels_last:
        model.to(memory_format=torch.channels_last)
        batch = batch.to(memory_format=torch.channels_last)
    try:
        times = _forward_times(model, batch, device, warmup, repeats)
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    return statistics.median(times)


def _forward_times(
    model: nn.Module, batch: torch.Tensor, device: torch.device, warmup: int, repeats: int
) -> list[float]:
    """Wall time in seconds of each of ``repeats`` forward passes after ``warmup`` untimed ones."""
    times = []
    with torch.inference_mode():
        for index in range(warmup + repeats):
            # CUDA runs asynchronously: wait for the queued work before and after timing
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            model(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if index >= warmup:
                times.append(time.perf_counter() - started)
    return times


def speedup(
    base: nn.Module,
    pruned: nn.Module,
    input_shape: tuple[int, ...] = (64, 1, 28, 28),
    *,
    repeats: int = 50,
    rounds: int = 3,
    device: str | torch.device = "cpu",
    optimize: bool = False,
) -> float:
    """Measured latency ratio base / pruned: the median over ``rounds`` interleaved runs.

    ``optimize=True`` measures both networks as deployed: BatchNorm folded
    (:func:`for_inference`) and each in its faster memory format (``memory_format="auto"``).
    """
    memory_format = "auto" if optimize else "contiguous"
    if optimize:
        base, pruned = for_inference(base), for_inference(pruned)
    ratios = []
    for _ in range(rounds):
        slow = latency(
            base, input_shape, repeats=repeats, device=device, memory_format=memory_format
        )
        fast = latency(
            pruned, input_shape, repeats=repeats, device=device, memory_format=memory_format
        )
        ratios.append(slow / fast)
    return statistics.median(ratios)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two score vectors of one layer (NaN for one unit)."""
    return _rank_correlation(stats.spearmanr, a, b)


def kendall(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kendall's tau rank correlation of two score vectors of one layer (NaN for one unit)."""
    return _rank_correlation(stats.kendalltau, a, b)


def _rank_correlation(statistic: Callable[..., Any], a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() != b.numel():
        raise ValueError(f"score vectors differ in length: {a.numel()} vs {b.numel()}")
    if a.numel() < 2:  # undefined: NaN, without scipy's warning (a one-unit layer at toy size)
        return float("nan")
    return float(statistic(a.detach().cpu().numpy(), b.detach().cpu().numpy()).statistic)
