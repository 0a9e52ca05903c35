"""Measure networks: exact parameters and MACs, the cost of any widths, latency, rank agreement.

Parameters: ``sum(p.numel())`` (BatchNorm's scale and shift count, its running statistics do
not). MACs: the multiply-adds of one forward pass of the given input shape, as
``torch.utils.flop_counter`` counts them in convolutions and matrix products (2 FLOPs = 1 MAC;
bias additions, BatchNorm, activations and pooling are not counted).
:class:`CostModel` gives both for the network pruned to any widths without building it: a
quadratic in the widths w, cost(w) = c + a.w + w'Qw (a weight count is out-units x in-units),
from the layer graph and each layer's output positions; it equals :func:`count` of the pruned
network (tested, and checked by :func:`dplib.choose_widths`).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torch.utils.flop_counter import FlopCounterMode

from .attach import check_ungated, unwrap
from .graph import PrunableLayer, _inputs, _units, find_prunable_layers, flatten_factor
from .importance import ImportanceMismatchError
from .loop import evaluating


class Count(NamedTuple):
    """Exact parameters and MACs of a network (see the module docstring)."""

    params: int
    macs: int


def count(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> Count:
    """Parameters and MACs of ``model`` for one forward pass of a batch of ``input_shape``."""
    check_ungated(model, "dplib.count")
    return _counted(model, input_shape)


def _counted(model: nn.Module, input_shape: tuple, positions: dict | None = None) -> Count:
    """:func:`count`, unchecked; ``positions`` gets each Conv2d / Linear's outputs per unit."""
    if len(input_shape) < 2:
        raise ValueError(f"input_shape must include the batch axis, got {input_shape}")
    params = sum(p.numel() for p in model.parameters())
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    counter = FlopCounterMode(display=False)
    handles = [] if positions is None else _record_positions(model, positions)
    try:
        with evaluating(model) as device, torch.no_grad(), counter:
            model(torch.zeros(input_shape, device=device, dtype=dtype))
    except RuntimeError as error:  # the cause is kept: the shape may not be what went wrong
        raise ValueError(
            f"{type(model).__name__} failed on an input of shape {tuple(input_shape)} "
            f"({str(error).splitlines()[0]}); if that shape is wrong, give (batch, channels, "
            "height, width) of its input"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    return Count(params=params, macs=counter.get_total_flops() // 2)


def _record_positions(model: nn.Module, positions: dict[str, int]) -> list:
    """Forward hooks that add each Conv2d / Linear's outputs per unit to ``positions``."""
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):

            def record(module, inputs, output, name=name):
                # a module called twice (shared weights) computes twice
                positions[name] = positions.get(name, 0) + output.numel() // _units(module)

            handles.append(module.register_forward_hook(record))
    return handles


# The cost of any widths, without building the network ---------------------------------------
_Affine = tuple[int, dict[int, int]]  # c + sum_l coefficient_l * w_l


@dataclass
class Quadratic:
    """cost(w) = (const + linear . w + w' quadratic w) / scale, exact in integers (``scale``:
    the groups of grouped convolutions, whose widths are multiples of them)."""

    const: int
    linear: np.ndarray  # (L,)
    quadratic: np.ndarray  # (L, L), entry [p, c]: producer p feeds consumer c
    scale: int = 1

    def __call__(self, widths: np.ndarray) -> int:
        return (
            int(self.const + self.linear @ widths + widths @ self.quadratic @ widths) // self.scale
        )

    def removal_savings(self, widths: np.ndarray, steps: np.ndarray | int = 1) -> np.ndarray:
        """cost(w) - cost(w - d_l e_l) for every layer l, d = ``steps`` (exact integers)."""
        gradient = self.linear + (self.quadratic + self.quadratic.T) @ widths
        return (steps * gradient - steps**2 * self.quadratic.diagonal()) // self.scale

    def addition_costs(self, widths: np.ndarray, steps: np.ndarray | int = 1) -> np.ndarray:
        """cost(w + d_l e_l) - cost(w) for every layer l, d = ``steps`` (exact integers)."""
        gradient = self.linear + (self.quadratic + self.quadratic.T) @ widths
        return (steps * gradient + steps**2 * self.quadratic.diagonal()) // self.scale

    def add_product(self, scale: int, left: _Affine, right: _Affine) -> None:
        """Add scale * left(w) * right(w), both affine in the widths."""
        (left_const, left_terms), (right_const, right_terms) = left, right
        self.const += scale * left_const * right_const
        for layer, coefficient in left_terms.items():
            self.linear[layer] += scale * coefficient * right_const
        for layer, coefficient in right_terms.items():
            self.linear[layer] += scale * left_const * coefficient
        for layer_a, coefficient_a in left_terms.items():
            for layer_b, coefficient_b in right_terms.items():
                self.quadratic[layer_a, layer_b] += scale * coefficient_a * coefficient_b


class CostModel:
    """Parameters and MACs of ``model`` pruned to any widths of ``layers`` (by default the plain
    prunable layers; the others keep all their units, as in :func:`dplib.prune`)."""

    def __init__(
        self, model: nn.Module, input_shape: tuple[int, ...], layers: list[str] | None = None
    ):
        model = unwrap(model)
        self.model = model
        self.input_shape = tuple(input_shape)
        graph = self.graph = find_prunable_layers(model, coupled=True)  # groups too
        if layers is None:
            layers = find_prunable_layers(model).names
        available = set(graph.names)
        unknown = [name for name in layers if name not in available]
        if unknown:
            raise ImportanceMismatchError(
                f"{unknown} are not prunable layers of this {type(model).__name__}; prunable "
                f"layers and groups: {graph.names}"
            )
        self.layers: list[PrunableLayer] = [graph[name] for name in layers]
        self.names = [layer.name for layer in self.layers]
        self.units = np.array([layer.units for layer in self.layers], dtype=np.int64)
        positions: dict[str, int] = {}  # outputs per unit of each Conv2d / Linear
        self.full = _counted(model, self.input_shape, positions)
        self.params, self.macs = self._quadratics(positions)
        # Whatever the quadratic leaves out (other parameterised modules, matmuls outside any
        # Conv2d / Linear) does not change with the widths: a constant measured on the full model.
        self.params.const += (self.full.params - self.params(self.units)) * self.params.scale
        self.macs.const += (self.full.macs - self.macs(self.units)) * self.macs.scale

    def _quadratics(self, positions: dict[str, int]) -> tuple[Quadratic, Quadratic]:
        modules = dict(self.model.named_modules())
        size = len(self.names)
        scale = math.lcm(*(layer.groups for layer in self.layers))  # a grouped conv's 1 / groups
        params = Quadratic(0, np.zeros(size, np.int64), np.zeros((size, size), np.int64), scale)
        macs = Quadratic(0, np.zeros(size, np.int64), np.zeros((size, size), np.int64), scale)
        produced_by: dict[str, int] = {}  # module -> index of the layer its outputs belong to
        feeds: dict[str, list[tuple[int, int]]] = {}  # consumer -> [(layer, inputs per unit)]
        for index, layer in enumerate(self.layers):
            for producer in layer.producers:
                produced_by[producer] = index
            first = modules[layer.producers[0]]
            for consumer in layer.consumers:
                feeds.setdefault(consumer, []).append(
                    (index, flatten_factor(first, modules[consumer]))
                )
            for bn in layer.batchnorms:
                if modules[bn].affine:
                    params.linear[index] += 2 * scale  # BatchNorm scale and shift per unit
            for conv in layer.depthwise:  # per unit: its k*k filter (and bias), k*k MACs a position
                kernel = int(np.prod(modules[conv].kernel_size))
                params.linear[index] += (kernel + (modules[conv].bias is not None)) * scale
                macs.linear[index] += positions.get(conv, 0) * kernel * scale
        depthwise = {conv for layer in self.layers for conv in layer.depthwise}
        for name, module in modules.items():
            if not isinstance(module, (nn.Conv2d, nn.Linear)) or name in depthwise:
                continue
            conv = isinstance(module, nn.Conv2d)
            if conv and scale % module.groups:  # its channels are not varied: a constant
                continue
            per_pair = int(np.prod(module.kernel_size)) * scale // module.groups if conv else scale
            # inputs and outputs as affine functions of the widths: (constant, {layer: coef})
            in_const, in_terms = _inputs(module), {}
            for index, factor in feeds.get(name, []):
                in_const -= factor * int(self.units[index])
                in_terms[index] = in_terms.get(index, 0) + factor
            owner = produced_by.get(name)
            out_affine: _Affine = (_units(module), {}) if owner is None else (0, {owner: 1})
            weights_per_out = (
                per_pair * in_const + (module.bias is not None) * scale,
                {index: per_pair * coefficient for index, coefficient in in_terms.items()},
            )
            params.add_product(1, out_affine, weights_per_out)
            macs.add_product(positions.get(name, 0) * per_pair, out_affine, (in_const, in_terms))
        return params, macs

    def vector(self, widths: dict[str, int]) -> np.ndarray:
        """Widths dict -> vector in layer order (layers left out keep all their units)."""
        return np.array(
            [widths.get(name, int(k)) for name, k in zip(self.names, self.units)], np.int64
        )

    def cost(self, widths: dict[str, int]) -> Count:
        """Exact (params, MACs) of the model pruned to ``widths``, as :func:`dplib.count`."""
        vector = self.vector(widths)
        return Count(params=self.params(vector), macs=self.macs(vector))


MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


def for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded into the convolution before it
    (``torch.fx``'s ``fuse``); the same outputs up to float rounding. When fx cannot trace the
    model the copy is returned unfolded, with a warning: a speed-up timed on it is a lower bound."""
    copy_ = copy.deepcopy(model).eval()
    try:
        return fuse(copy_)
    except Exception as error:  # fx raises many types; folding is an optimisation, not a must
        warnings.warn(
            f"BatchNorm not folded into the convolutions of this {type(model).__name__}: torch.fx "
            f"could not trace it ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
            "its deployed latency is measured unfolded",
            stacklevel=2,
        )
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
    """Median wall time in seconds of one forward pass on a batch of ``input_shape``, in the
    ``memory_format`` ``"contiguous"``, ``"channels_last"`` (often much faster for the odd channel
    counts of pruned convolutions on CPU) or ``"auto"`` (the faster one)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory_format {memory_format!r}; use one of {MEMORY_FORMATS}")
    if memory_format == "auto":
        timed = partial(latency, model, input_shape, repeats=repeats, warmup=warmup, device=device)
        return min(timed(memory_format=choice) for choice in ("contiguous", "channels_last"))
    # channels_last only means something for a 4-D (batch, channels, height, width) batch
    channels_last = memory_format == "channels_last" and len(input_shape) == 4
    with evaluating(model, device, channels_last) as device:
        batch = torch.randn(input_shape, device=device)
        if channels_last:
            batch = batch.to(memory_format=torch.channels_last)
        times = _forward_times(model, batch, device, warmup, repeats)
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
    """Measured latency ratio base / pruned: the median over ``rounds`` interleaved runs;
    ``optimize=True``: both as deployed (:func:`for_inference`, ``memory_format="auto"``)."""
    memory_format = "auto" if optimize else "contiguous"
    if optimize:
        base, pruned = for_inference(base), for_inference(pruned)
    options = {"repeats": repeats, "device": device, "memory_format": memory_format}
    ratios = [
        latency(base, input_shape, **options) / latency(pruned, input_shape, **options)
        for _ in range(rounds)
    ]
    return statistics.median(ratios)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two score vectors of one layer (NaN for one unit)."""
    return _rank_correlation("spearmanr", a, b)


def kendall(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kendall's tau rank correlation of two score vectors of one layer (NaN for one unit)."""
    return _rank_correlation("kendalltau", a, b)


def _rank_correlation(statistic: str, a: torch.Tensor, b: torch.Tensor) -> float:
    """The rank correlation ``scipy.stats.<statistic>`` of ``a`` and ``b``."""
    if a.numel() != b.numel():
        raise ValueError(f"score vectors differ in length: {a.numel()} vs {b.numel()}")
    if a.numel() < 2:  # undefined: NaN, without scipy's warning (a one-unit layer at toy size)
        return float("nan")
    from scipy import stats  # here: importing scipy.stats costs a second

    scores = a.detach().cpu().numpy(), b.detach().cpu().numpy()
    return float(getattr(stats, statistic)(*scores).statistic)
