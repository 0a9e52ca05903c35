"""Choose per-layer widths that meet a budget of parameters or MACs.

Unit k of layer l has a score comparable across layers, r_lk = ``importance.relative()`` (K_l
E[s_lk] for the Dirichlet posterior mean; notebooks/METHOD.md, section 4), and
:class:`dplib.measure.CostModel` gives the exact cost of any widths. The importance allocation
(``allocation="importance"``: the greedy rule, the comparison tables' ``own``) removes the
lowest-ranked kept unit of all layers, one at a time, until the cost is at most the target, then
adds back, highest rank first, removed units that still fit. If the result is more than 2% under
the target (coarse units leave a gap), it exchanges units (one more in a layer, the lowest-ranked
elsewhere removed to make room, a refill) and keeps the exchange that lands highest: the result
lies in [0.98 * target, target], with at least one unit per layer.

The measured allocation (``allocation="measured"``, :mod:`dplib.measured`) removes instead the
block whose removal raises the loss on a few fixed batches the least per MAC saved, measured
again after every removal (BatchNorm on each offer's own batch statistics); the effective
allocation (``"effective"``) keeps in every layer a share of its effective width exp(H(p_l)),
p_l = r_l / K_l (the posterior's perplexity), scaled to the budget. Every allocation honours
per-layer floors and caps (``min_keep``, ``max_keep``: kept fractions) and overrides
(``overrides``: widths given).

The hardware grid (``multiple_of``, default 1): every kept width is a multiple of it or the
layer's full width (a layer narrower than m keeps any width). Each step then moves a whole block
of units, ranked by their mean r_lk. The uniform allocation (the naive reference) keeps the same
fraction rho of every layer (``max(1, round(K_l * rho))`` units, rounded down to the grid), rho
the largest that fits (bisection; the effective allocation: K_l replaced by the effective widths),
then adds back one unit (block) at a time to the layer with the
lowest kept fraction.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from .attach import check_ungated, unwrap
from .importance import Importance
from .measure import CostModel, Quadratic, count
from .measured import measured_removal
from .models import input_shape_of
from .surgery import prune

ALLOCATIONS = ("importance", "uniform", "measured", "effective")
TOLERANCE = 0.02  # the answer lands in [(1 - TOLERANCE) * target, target]
_REPAIR_ROUNDS = 20  # at most this many exchanges when the greedy result is under the window
Limit = float | dict[str, float]  # a kept fraction for every layer, or per layer
_RATIO = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*[xX]\s*$")


class BudgetError(ValueError):
    """A budget that no widths can meet, or that is not written as an int or ``"4x"``."""


def input_shape_for(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> tuple:
    """``input_shape`` (a batch's shape), or (1, channels, height, width) of a network built by
    :func:`dplib.models.build` (from the preset it records); a clear error for other models."""
    if input_shape is not None:
        return tuple(input_shape)
    image = input_shape_of(model)
    if image is None:
        raise ValueError(
            f"this {type(model).__name__} was not built by dplib.models.build, so its input is "
            "unknown; pass input_shape=(1, channels, height, width), the shape of one input batch"
        )
    return (1, *image)


def _check_budget_syntax(target: object, what: str) -> None:
    """Reject a malformed budget before any forward pass (the range needs the cost model)."""
    if isinstance(target, str):
        match = _RATIO.match(target)
        if not match:
            raise BudgetError(
                f"target_{what} {target!r} is neither a whole number nor a ratio such as '4x' "
                f"(4 times fewer {what} than the full model)"
            )
        if float(match.group(1)) < 1:
            raise BudgetError(
                f"target_{what} {target!r} asks for more {what} than the full model has; a "
                "ratio must be at least 1x"
            )
    elif isinstance(target, bool) or not isinstance(target, (int, float, np.integer, np.floating)):
        raise BudgetError(
            f"target_{what} must be a whole number or a ratio string such as '4x', got "
            f"{target!r} ({type(target).__name__})"
        )
    elif not np.isfinite(target):
        raise BudgetError(f"target_{what} must be a finite number, got {target!r}")


def split_budget_widths(widths: str) -> tuple[str, str] | None:
    """``"macs:4x"`` -> ``("macs", "4x")`` (the notebooks accept such a budget as widths); None
    when ``widths`` is not a budget; a malformed budget raises."""
    if not isinstance(widths, str) or ":" not in widths:
        return None
    what, _, target = widths.partition(":")
    if what not in ("macs", "params"):
        raise BudgetError(f"budget {widths!r} must start with 'macs:' or 'params:', e.g. 'macs:4x'")
    _check_budget_syntax(target if not target.isdigit() else int(target), what)
    return what, target


def parse_budget(target: int | float | str, full: int, what: str = "macs") -> int:
    """An absolute budget (a number, rounded down: ``full / 4`` is fine) or a ratio such as
    ``"4x"`` (4 times fewer than ``full``)."""
    _check_budget_syntax(target, what)
    if isinstance(target, str):
        return int(full // float(_RATIO.match(target).group(1)))
    return math.floor(target)


def choose_widths(
    model: nn.Module,
    importance: Importance | None,
    target_macs: float | str | None = None,
    target_params: float | str | None = None,
    input_shape: tuple[int, ...] | None = None,
    *,
    allocation: str | None = None,
    verify: bool = True,
    costs: CostModel | None = None,
    multiple_of: int = 1,
    min_keep: Limit = 0.0,
    max_keep: Limit = 1.0,
    overrides: dict[str, int] | None = None,
    data: Iterable | None = None,
) -> dict[str, int]:
    """Kept units per prunable layer, ``{layer name: width}`` in layer order, whose cost lies in
    [0.98 * target, target].

    Args:
        model: the full network (a :class:`~dplib.GatedModel` is unwrapped).
        importance: scores of every prunable layer (any criterion); None allowed for "uniform".
        target_macs, target_params: MACs of one forward pass of ``input_shape``, or parameters:
            an int, or ``"4x"`` (four times fewer than the full model); give exactly one.
        input_shape: the input batch shape (default: that of a :func:`dplib.models.build` net).
        allocation: ``"importance"`` (the greedy rule above), ``"uniform"``, ``"measured"``
            (needs ``data``) or ``"effective"``; None (default): ``"measured"`` when ``data`` is
            given, else ``"importance"`` (the measured rule won on validation: figures/compare.md
            and figures/cifar.md). It costs about one forward pass of the batches per removed
            block (dplib.measured): about 1 s for LeNet-5, under a training epoch for ResNet-20
            on 2 CPU cores (figures/cifar.md, figures/bench/measured_cost.md).
        verify: check the analytic cost against :func:`dplib.count` of the pruned network.
        costs: a :class:`CostModel` of this model, input shape and layers, to reuse.
        multiple_of: every width a multiple of it (e.g. 8, for tensor cores) or the full width.
        min_keep, max_keep: the fraction of its units every layer keeps at least (a floor) and
            at most (a cap): one number for all layers or ``{layer: fraction}``.
        overrides: ``{layer: width}`` kept as given, whatever the allocation.
        data: a few fixed (images, labels) batches for ``"measured"`` (its first 2 are read).

    Raises:
        BudgetError (a ValueError): malformed budget, both or neither target, a target outside
            [one unit per layer, the full model], or one the grid cannot meet ("too coarse");
            limits outside [0, 1], a floor above its cap, or a layer the model does not prune.
    """
    allocation = allocation or ("measured" if data is not None else "importance")
    what, target = _requested_budget(
        importance, target_macs, target_params, allocation, multiple_of
    )
    if allocation == "measured" and data is None:
        raise ValueError("the measured allocation needs data: a few fixed training batches")
    model = unwrap(model)
    check_ungated(model, "dplib.choose_widths")
    layers = importance.names if importance is not None else None
    if costs is None:
        costs = CostModel(model, input_shape_for(model, input_shape), layers)
    elif layers is not None and costs.names != layers:
        raise ValueError(f"the cost model varies {costs.names}, the importance scores {layers}")
    quadratic = costs.macs if what == "macs" else costs.params
    target = _target_in_range(model, quadratic, costs.units, target, what)
    grid = _Grid(costs.units, multiple_of, np.array([layer.groups for layer in costs.layers]))
    grid.minimum, grid.ceiling = _limits(costs, grid.step, min_keep, max_keep, overrides or {})
    found = (model, data)
    widths = _allocate(quadratic, costs, grid, importance, (target, what), allocation, found)
    cost = quadratic(widths)
    if cost < (1 - TOLERANCE) * target < quadratic(grid.ceiling):  # outside the window
        where, other = _grid_hint(multiple_of)
        raise BudgetError(
            f"no widths found within {TOLERANCE:.0%} under target_{what} {target:,}{where} "
            f"(best: {cost:,}); the units of this network are too coarse for this budget, try a "
            f"nearby target{other}"
        )
    result = {name: int(w) for name, w in zip(costs.names, widths)}
    if verify:
        _verify(model, costs, result)
    return result


def _requested_budget(
    importance: Importance | None,
    target_macs: float | str | None,
    target_params: float | str | None,
    allocation: str,
    multiple_of: object,
) -> tuple[str, int | str]:
    """Check the options of :func:`choose_widths` before any forward pass; return what is
    budgeted and the target."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if (target_macs is None) == (target_params is None):
        raise BudgetError("give exactly one of target_macs and target_params")
    if importance is None and allocation != "uniform":
        raise ValueError(f"the {allocation} allocation needs an importance (or use 'uniform')")
    what, target = ("macs", target_macs) if target_macs is not None else ("params", target_params)
    _check_budget_syntax(target, what)
    integer = isinstance(multiple_of, (int, np.integer)) and not isinstance(multiple_of, bool)
    if not integer or multiple_of < 1:
        raise ValueError(
            f"multiple_of must be a positive integer (1: any width; 8: multiples of 8), got "
            f"{multiple_of!r} ({type(multiple_of).__name__})"
        )
    return what, target


def _target_in_range(
    model: nn.Module, quadratic: Quadratic, units: np.ndarray, target: int | str, what: str
) -> int:
    """The absolute target, checked to lie between one unit per layer and the full model."""
    full = quadratic(units)
    target = parse_budget(target, full, what)
    smallest = quadratic(np.ones_like(units))
    if not smallest <= target <= full:
        raise BudgetError(
            f"target_{what} {target:,} is impossible for this {type(model).__name__}: the "
            f"achievable range is {smallest:,} (one unit per layer) to {full:,} (the full model, "
            f"ratios up to {full / smallest:.1f}x)"
        )
    return target


class _Grid:
    """The widths each layer may keep: multiples of ``multiple_of`` (at least one), and its full
    width; a layer narrower than ``multiple_of`` steps by one unit instead; a layer of ``groups``
    (a grouped convolution's channels) by a multiple of them. ``minimum`` and ``ceiling`` (per
    layer) bound them further (floors, caps and overrides)."""

    def __init__(self, units: np.ndarray, multiple_of: int = 1, groups: np.ndarray | None = None):
        self.units = units
        self.multiple_of = int(multiple_of)
        step = np.where(units < multiple_of, 1, multiple_of).astype(np.int64)
        self.groups = np.ones_like(units) if groups is None else groups
        self.step = np.lcm(step, self.groups)
        self.minimum = self.step  # one unit (block), or the floor
        self.ceiling = units

    def lower(self, widths: np.ndarray) -> np.ndarray:
        """The next allowed width below each width; below ``minimum`` where there is none."""
        return (widths - 1) // self.step * self.step

    def upper(self, widths: np.ndarray) -> np.ndarray:
        """The next allowed width above each width; the width itself at the ceiling."""
        return np.minimum((widths // self.step + 1) * self.step, self.ceiling)

    def floor(self, widths: np.ndarray) -> np.ndarray:
        """The largest allowed widths at most ``widths`` (and at least ``minimum``)."""
        rounded = np.maximum(widths // self.step * self.step, self.minimum)
        return np.where(widths >= self.ceiling, self.ceiling, rounded)


def _limits(
    costs: CostModel,
    step: np.ndarray,
    min_keep: Limit,
    max_keep: Limit,
    overrides: dict[str, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer (floor, ceiling) widths on the grid from kept fractions and overrides."""
    units, names = costs.units, costs.names
    unknown = [
        n
        for limit in (min_keep, max_keep, overrides)
        if isinstance(limit, dict)
        for n in limit
        if n not in names
    ]
    if unknown:
        raise ValueError(f"limits name layers this model does not prune {unknown}; its: {names}")
    low, high = (
        np.array([limit.get(n, default) if isinstance(limit, dict) else limit for n in names])
        for limit, default in ((min_keep, 0.0), (max_keep, 1.0))
    )
    if not (0 <= low).all() or not (high <= 1).all() or (low > high).any():
        raise ValueError(
            f"min_keep {min_keep} and max_keep {max_keep} must be kept fractions in [0, 1], "
            "each floor at most its cap"
        )
    floor = np.maximum(np.ceil(low * units / step).astype(np.int64) * step, step)
    ceiling = np.floor(high * units / step).astype(np.int64) * step
    ceiling = np.maximum(np.where(high >= 1, units, ceiling), floor)  # the full width is allowed
    floor, ceiling = np.minimum(floor, units), np.minimum(ceiling, units)
    for name, width in overrides.items():
        index, size = names.index(name), int(units[names.index(name)])
        if not 1 <= width <= size or width % costs.layers[index].groups:
            raise ValueError(
                f"override {name}={width} outside 1..{size} units, or not a multiple of the "
                f"layer's {costs.layers[index].groups} groups"
            )
        floor[index] = ceiling[index] = width
    return floor, ceiling


def _allocate(
    quadratic: Quadratic,
    costs: CostModel,
    grid: _Grid,
    importance: Importance | None,
    budget: tuple[int, str],
    allocation: str,
    found: tuple[nn.Module, Iterable | None],
) -> np.ndarray:
    """Widths on ``grid`` under the budget (target, what): allocation, add-back, exchanges;
    ``found``: the model and the measured allocation's data."""
    if importance is not None:
        importance.check_fits(dict(zip(costs.names, map(int, costs.units))), "model")
    target, what = budget
    smallest = quadratic(grid.minimum)
    if smallest > target:
        where, other = _grid_hint(grid.multiple_of)
        raise BudgetError(
            f"no widths found under target_{what} {target:,}{where} (the narrowest allowed, "
            f"one step of {grid.multiple_of} units per layer or the floors and overrides, cost "
            f"{smallest:,}); the units of this network are too coarse for this budget or the "
            f"floors too high: try a larger target, lower floors{other}"
        )
    rank: _ImportanceRank | _UniformRank
    if allocation == "uniform":
        rank = _UniformRank(costs.units)
        widths = _fractions(quadratic, grid, target, costs.units)
    elif allocation == "effective":
        rank = _ImportanceRank(importance, costs.names, grid.groups)
        widths = _fractions(quadratic, grid, target, effective_widths(importance, costs.names))
    else:
        rank = _ImportanceRank(importance, costs.names, grid.groups)
        if allocation == "measured":
            model, data = found
            widths = measured_removal(model, importance, quadratic, grid, target, data)
        else:
            widths = _remove_until(quadratic, grid, target, rank)
    widths = _add_back(quadratic, grid, widths, target, rank)
    return _repair(quadratic, grid, widths, target, rank)


def _grid_hint(multiple_of: int) -> tuple[str, str]:
    """What the "too coarse" messages say about the grid: nothing for ``multiple_of=1``."""
    if multiple_of == 1:
        return "", ""
    return f" on the grid multiple_of={multiple_of}", " or a smaller multiple_of"


def _block_mean(ranked: np.ndarray, start: int, stop: int) -> float:
    """Mean score of the ranked units start..stop-1 (a single unit's score exactly)."""
    return ranked[start] if stop - start == 1 else ranked[start:stop].mean()


class _ImportanceRank:
    """Which block to remove next (lowest rank) and to add back next (highest rank)."""

    def __init__(self, importance: Importance, names: list[str], groups: np.ndarray):
        relative = importance.relative()
        # ranked[l][j]: score of layer l's (j+1)-th most important unit; prune() keeps the top w
        self.ranked = [
            relative[name][importance.ranking(name, int(g))].numpy()
            for name, g in zip(names, groups)
        ]

    def removal(self, widths: np.ndarray, lower: np.ndarray, savings: np.ndarray) -> np.ndarray:
        """Per layer: the mean score of the last kept units, down to ``lower``."""
        return np.array([_block_mean(r, lo, w) for r, lo, w in zip(self.ranked, lower, widths)])

    def addition(self, widths: np.ndarray, upper: np.ndarray, additions: np.ndarray) -> np.ndarray:
        """Per layer: the mean score of the best removed units, up to ``upper``."""
        layers = zip(self.ranked, widths, upper)
        return np.array([_block_mean(r, w, up) if w < up else -np.inf for r, w, up in layers])


class _UniformRank:
    """Keep the kept fractions w_l / K_l as equal as possible: remove from the layer that keeps
    the largest fraction (the lowest -w_l / K_l), add to the one that keeps the smallest."""

    def __init__(self, units: np.ndarray):
        self.units = units

    def removal(self, widths: np.ndarray, *_: np.ndarray) -> np.ndarray:
        return -widths / self.units

    addition = removal


_Rank = _ImportanceRank | _UniformRank


def _remove_until(
    quadratic: Quadratic,
    grid: _Grid,
    target: int,
    rank: _Rank,
    start: np.ndarray | None = None,
    frozen: np.ndarray | None = None,
) -> np.ndarray:
    """Remove the lowest-ranked block (down to the next allowed width), one at a time, until
    the cost is at most ``target``; ``frozen`` layers keep their widths."""
    widths = grid.ceiling.copy() if start is None else start.copy()
    cost = quadratic(widths)
    while cost > target:
        lower = grid.lower(widths)
        savings = quadratic.removal_savings(widths, widths - lower)
        order = rank.removal(widths, lower, savings).astype(float)
        order[lower < grid.minimum] = np.inf  # one unit (block) stays in every layer
        if frozen is not None:
            order[frozen] = np.inf
        if np.isinf(order).all():
            break
        layer = int(np.argmin(order))  # ties: the earlier layer, deterministic
        widths[layer] = lower[layer]
        cost -= int(savings[layer])
    return widths


def effective_widths(importance: Importance, names: list[str] | None = None) -> np.ndarray:
    """Each layer's effective number of units exp(H(p)), p its scores normalised to sum to
    one (the posterior mean for Dirichlet): K for equal scores, 1 when one unit has them all."""
    relative = importance.relative()
    return np.array([float(perplexity(relative[name])) for name in names or importance.names])


def perplexity(scores: torch.Tensor) -> torch.Tensor:
    """exp H(p) of the scores normalised to sum to one (differentiable): the effective number of
    units, K for equal scores, 1 when one unit has them all."""
    return Categorical(probs=scores).entropy().exp()


def _fractions(quadratic: Quadratic, grid: _Grid, target: int, shares: np.ndarray) -> np.ndarray:
    """Widths f * ``shares`` (rounded down to the grid) at the largest f that fits ``target``
    (bisection): the same fraction of every layer when ``shares`` are the full widths."""

    def widths_at(fraction: float) -> np.ndarray:
        return grid.floor(np.round(shares * fraction).astype(np.int64))

    low, high = 0.0, float((grid.units / shares).max())  # widths_at(low) fits (the caller)
    for _ in range(60):
        middle = (low + high) / 2
        if quadratic(widths_at(middle)) <= target:
            low = middle
        else:
            high = middle
    return widths_at(low)


def _add_back(
    quadratic: Quadratic, grid: _Grid, widths: np.ndarray, target: int, rank: _Rank
) -> np.ndarray:
    """Add the highest-ranked block (up to the next allowed width) that still fits under
    ``target``, while there is one."""
    widths = widths.copy()
    cost = quadratic(widths)
    while True:
        upper = grid.upper(widths)
        additions = quadratic.addition_costs(widths, upper - widths)
        fits = (widths < grid.ceiling) & (cost + additions <= target)
        if not fits.any():
            return widths
        order = np.where(fits, rank.addition(widths, upper, additions), -np.inf)
        layer = int(np.argmax(order))
        widths[layer] = upper[layer]
        cost += int(additions[layer])


def _repair(
    quadratic: Quadratic, grid: _Grid, widths: np.ndarray, target: int, rank: _Rank
) -> np.ndarray:
    """Exchange blocks while the greedy result is more than TOLERANCE under ``target``: coarse
    units (a channel before a large Linear, a residual group, a block of the grid) can leave a
    gap no single removed block fits. Each round tries every exchange of :func:`_exchanges`,
    makes room by removing the lowest-ranked blocks of the other layers, refills, and keeps the
    exchange that lands highest under the target, until none improves."""
    cost = quadratic(widths)
    for _ in range(_REPAIR_ROUNDS):
        if cost >= (1 - TOLERANCE) * target:
            break
        best, best_cost = widths, cost
        for candidate, frozen in _exchanges(grid, widths):
            candidate = _remove_until(quadratic, grid, target, rank, candidate, frozen)
            candidate = _add_back(quadratic, grid, candidate, target, rank)
            candidate_cost = quadratic(candidate)
            if best_cost < candidate_cost <= target:
                best, best_cost = candidate, candidate_cost
        if best is widths:
            break
        widths, cost = best, best_cost
    return widths


def _exchanges(grid: _Grid, widths: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(widths, frozen layers) of every exchange: one more block in layer A (frozen while room
    is made), one fewer in layer B or none. A layer B that steps by blocks of several units is
    tried twice: free, and frozen too (room made elsewhere, not by a second block of B)."""
    lower, upper = grid.lower(widths), grid.upper(widths)
    shrinkable = np.flatnonzero(lower >= grid.minimum)
    for grown in np.flatnonzero(widths < grid.ceiling):
        frozen = np.zeros(len(widths), dtype=bool)
        frozen[grown] = True
        for shrunk in [None, *shrinkable]:
            if shrunk == grown:
                continue
            candidate = widths.copy()
            candidate[grown] = upper[grown]
            if shrunk is not None:
                candidate[shrunk] = lower[shrunk]
            yield candidate, frozen
            if shrunk is not None and grid.step[shrunk] > 1:
                both = frozen.copy()
                both[shrunk] = True
                yield candidate, both


def _verify(model: nn.Module, costs: CostModel, widths: dict[str, int]) -> None:
    """Build the pruned network and compare :func:`dplib.count` with the analytic cost."""
    first = Importance.in_order(dict(zip(costs.names, map(int, costs.units))))
    measured = count(prune(model, first, widths), costs.input_shape)
    predicted = costs.cost(widths)
    if measured != predicted:
        raise RuntimeError(
            f"dplib's analytic cost {tuple(predicted)} differs from dplib.count "
            f"{tuple(measured)} for widths {widths}: a structure the cost model does not "
            "understand; please report it"
        )
