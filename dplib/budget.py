"""Choose per-layer widths that meet a budget of parameters or MACs, by a pluggable rule.

Unit k of layer l has a score comparable across layers, r_lk = ``importance.relative()`` (K_l
E[s_lk] for the Dirichlet posterior mean; notebooks/METHOD.md, section 4), and
:class:`dplib.measure.CostModel` gives the exact cost of any widths. An allocation rule (a
:class:`Rule`, registered in :data:`RULES` as criteria are) chooses widths at most the target:

- ``greedy`` (the default) removes the lowest-ranked kept unit of all layers, one at a time;
- ``uniform`` keeps the same fraction rho of every layer (``max(1, round(K_l * rho))`` units,
  rounded down to the grid), rho the largest that fits (bisection), the naive reference;
- ``measured`` (:class:`Measured`, :mod:`dplib.measured`) removes the block whose removal raises
  the loss on a few fixed batches the least per MAC saved, measured again after every removal.

Then, whatever the rule, removed units that still fit are added back, highest rank first (the
uniform rule: to the layer with the lowest kept fraction). If the result is more than 2% under
the target (coarse units leave a gap), units are exchanged (one more in a layer, the
lowest-ranked elsewhere removed to make room, a refill), keeping the exchange that lands
highest: the result lies in [0.98 * target, target], with at least one unit per layer.

Every rule honours per-layer floors and caps (``min_keep``, ``max_keep``: kept fractions),
overrides (``overrides``: widths given) and the hardware grid (``multiple_of``, default 1):
every kept width is a multiple of it or the layer's full width (a layer narrower than m keeps
any width); each step then moves a whole block of units, ranked by their mean r_lk.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
from torch import nn

from .attach import check_ungated, unwrap
from .graph import on_residual_paths
from .importance import Importance
from .measure import CostModel, Quadratic, count
from .measured import FLOOR, UNIFORM_FLOOR, measured_removal
from .models import input_shape_of
from .surgery import prune

TOLERANCE = 0.02  # the answer lands in [(1 - TOLERANCE) * target, target]
_REPAIR_ROUNDS = 20  # at most this many exchanges when the greedy result is under the window
Limit = float | dict[str, float]  # a kept fraction for every layer, or per layer
_RATIO = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*[xX]\s*$")


class BudgetError(ValueError):
    """A budget that no widths can meet, or that is not written as an int or ``"4x"``."""


def input_shape_for(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> tuple:
    """``input_shape``, or (1, channels, height, width) of a :func:`dplib.models.build` net."""
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
                f"the {what} budget {target!r} is neither a whole number nor a ratio such as '4x' "
                f"(4 times fewer {what} than the full model)"
            )
        if float(match.group(1)) < 1:
            raise BudgetError(
                f"the {what} budget {target!r} asks for more {what} than the full model has; a "
                "ratio must be at least 1x"
            )
    elif isinstance(target, bool) or not isinstance(target, (int, float, np.integer, np.floating)):
        raise BudgetError(
            f"the {what} budget must be a whole number or a ratio string such as '4x', got "
            f"{target!r} ({type(target).__name__})"
        )
    elif not np.isfinite(target):
        raise BudgetError(f"the {what} budget must be a finite number, got {target!r}")


def split_budget_widths(widths: str) -> tuple[str, str] | None:
    """``"macs:4x"`` -> ``("macs", "4x")``; None when ``widths`` is not a budget."""
    if not isinstance(widths, str) or ":" not in widths:
        return None
    what, _, target = widths.partition(":")
    if what not in ("macs", "params"):
        raise BudgetError(f"budget {widths!r} must start with 'macs:' or 'params:', e.g. 'macs:4x'")
    _check_budget_syntax(target if not target.isdigit() else int(target), what)
    return what, target


def parse_budget(target: int | float | str, full: int, what: str = "macs") -> int:
    """An absolute budget (a number, rounded down) or a ratio such as ``"4x"`` of ``full``."""
    _check_budget_syntax(target, what)
    if isinstance(target, str):
        return int(full // float(_RATIO.match(target).group(1)))
    return math.floor(target)


class Rule:
    """An allocation rule: how :func:`choose_widths` spends a budget across layers.

    Args:
        multiple_of: every width a multiple of it (e.g. 8, for tensor cores) or the full width.
        min_keep, max_keep: the fraction of its units every layer keeps at least (a floor) and
            at most (a cap): one number for all layers or ``{layer: fraction}``.
        overrides: ``{layer: width}`` kept as given, whatever the rule.

    A rule is a subclass with a ``name``, registered with :func:`register`, that implements
    :meth:`widths` (and :meth:`rank` where it does not rank by the scores)."""

    name = ""
    needs_importance = True

    def __init__(
        self,
        *,
        multiple_of: int = 1,
        min_keep: Limit = 0.0,
        max_keep: Limit = 1.0,
        overrides: dict[str, int] | None = None,
    ):
        integer = isinstance(multiple_of, (int, np.integer)) and not isinstance(multiple_of, bool)
        if not integer or multiple_of < 1:
            raise ValueError(
                f"multiple_of must be a positive integer (1: any width; 8: multiples of 8), got "
                f"{multiple_of!r} ({type(multiple_of).__name__})"
            )
        self.multiple_of, self.min_keep, self.max_keep = int(multiple_of), min_keep, max_keep
        self.overrides = dict(overrides or {})

    def widths(self, task: Task, rank: _Rank) -> np.ndarray:
        """Widths on ``task.grid`` that cost at most ``task.target`` (add-back and exchanges
        follow, in the order ``rank``)."""
        raise NotImplementedError

    def rank(self, task: Task) -> _Rank:
        """The order of the add-back and the exchanges: by the scores."""
        return _ImportanceRank(task.importance, task.costs.names, task.grid.groups)

    def __repr__(self) -> str:
        # knobs as written; data (a loader, a list of batches) by its type, not its tensors
        plain = (int, float, str, bool, dict, type(None))
        shown = (
            f"{k}={v!r}" if isinstance(v, plain) else f"{k}=<{type(v).__name__}>"
            for k, v in vars(self).items()
        )
        return f"{type(self).__name__}({', '.join(shown)})"


class Task(NamedTuple):
    """What a rule allocates (``quadratic``: the budgeted cost, MACs or parameters)."""

    model: nn.Module
    importance: Importance | None
    costs: CostModel
    quadratic: Quadratic
    grid: _Grid
    target: int


RULES: dict[str, type[Rule]] = {}


def register(rule: type[Rule]) -> type[Rule]:
    """Register an allocation rule class under its ``name`` (a class decorator)."""
    if not rule.name or rule.name in RULES:
        raise ValueError(f"a rule needs a new name; taken: {', '.join(RULES)}")
    RULES[rule.name] = rule
    return rule


def rule_for(rule: str | Rule | None) -> Rule:
    """``rule`` itself, a registered rule by name with its defaults, or greedy for None."""
    if isinstance(rule, Rule):
        return rule
    if rule is None:
        return Greedy()
    if rule not in RULES:
        raise ValueError(f"unknown allocation rule {rule!r}; registered: {', '.join(RULES)}")
    return RULES[rule]()


@register
class Greedy(Rule):
    """Remove the lowest-scored kept unit (block) of all layers, one at a time, until it fits."""

    name = "greedy"

    def widths(self, task: Task, rank: _Rank) -> np.ndarray:
        return _remove_until(task, rank, task.grid.ceiling)


@register
class Uniform(Rule):
    """Keep the same fraction of every layer (the scores only choose units within a layer)."""

    name = "uniform"
    needs_importance = False

    def widths(self, task: Task, rank: _Rank) -> np.ndarray:
        """Widths rho * K_l (rounded down to the grid) at the largest rho that fits the target
        (bisection)."""

        def widths_at(fraction: float) -> np.ndarray:
            return task.grid.floor(np.round(task.grid.units * fraction).astype(np.int64))

        low, high = 0.0, 1.0  # widths_at(low) fits (the caller checked the narrowest widths)
        for _ in range(60):
            middle = (low + high) / 2
            if task.quadratic(widths_at(middle)) <= task.target:
                low = middle
            else:
                high = middle
        return widths_at(low)

    def rank(self, task: Task) -> _Rank:
        return _UniformRank(task.costs.units)


@register
class Measured(Rule):
    """Remove the block whose removal raises the loss least per MAC saved (:mod:`dplib.measured`).

    ``data``: a few fixed (images, labels) batches (its first 2 are read). Each layer keeps,
    while any other layer can still give a block (a preference; ``min_keep`` is the limit),
    ``floor`` of its units, and a layer of a plain chain (no residual addition joins or bypasses
    it: :func:`dplib.graph.on_residual_paths`) also ``uniform_floor`` of the width the uniform
    rule gives it at the same budget. About one forward pass of the batches per removed block
    (figures/cifar.md, figures/bench/measured_cost.md)."""

    name = "measured"

    def __init__(
        self,
        data: Iterable | None = None,
        *,
        floor: float = FLOOR,
        uniform_floor: float = UNIFORM_FLOOR,
        **limits: Any,
    ):
        super().__init__(**limits)
        if data is None:
            raise ValueError(
                "the measured rule needs data, a few fixed training batches: "
                "dplib.budget.Measured(data=[(images, labels), ...])"
            )
        if not (0 <= floor <= 1 and 0 <= uniform_floor <= 1):
            raise ValueError(
                f"floor and uniform_floor must be fractions in [0, 1], got {floor}, {uniform_floor}"
            )
        self.data, self.floor, self.uniform_floor = data, floor, uniform_floor

    def widths(self, task: Task, rank: _Rank) -> np.ndarray:
        model, importance, costs, quadratic, grid, target = task
        residual = on_residual_paths(costs.graph)
        plain = np.array([not residual[name] for name in costs.names])
        uniform = self.uniform_floor * (_by_rule(task, Uniform()) / grid.units)
        floor = np.maximum(self.floor, np.where(plain, uniform, 0))
        return measured_removal(model, importance, quadratic, grid, target, self.data, floor)


def choose_widths(
    model: nn.Module,
    importance: Importance | None,
    budget: float | str,
    rule: str | Rule | None = None,
    input_shape: tuple[int, ...] | None = None,
    *,
    verify: bool = True,
) -> dict[str, int]:
    """Kept units per prunable layer, ``{layer name: width}`` in layer order, whose cost lies in
    [0.98 * budget, budget].

    Args:
        model: the full network (a :class:`~dplib.GatedModel` is unwrapped).
        importance: scores of every prunable layer (any criterion); None allowed for "uniform".
        budget: MACs of one forward pass of ``input_shape``, as a number or ``"4x"`` (four times
            fewer than the full model); or parameters, ``"params:4x"`` or ``"params:50000"``.
        rule: a :class:`Rule` (its grid and limits given) or a registered name, :data:`RULES`:
            ``"greedy"`` (default), ``"uniform"``, or ``Measured(data)``, which
            won on validation right after pruning (figures/compare.md, figures/cifar.md).
        input_shape: the input batch shape (default: that of a :func:`dplib.models.build` net).
        verify: check the analytic cost against :func:`dplib.count` of the pruned network.

    Raises:
        BudgetError (a ValueError): a malformed budget, one outside [one unit per layer, the
            full model], or one the grid cannot meet ("too coarse"); ValueError: an unknown
            rule, limits outside [0, 1], a floor above its cap, a layer the model does not prune.
    """
    rule = rule_for(rule)
    what, target = _requested_budget(importance, budget, rule)
    model = unwrap(model)
    check_ungated(model, "dplib.choose_widths")
    layers = importance.names if importance is not None else None
    costs = CostModel(model, input_shape_for(model, input_shape), layers)
    quadratic = costs.macs if what == "macs" else costs.params
    target = _target_in_range(model, quadratic, costs.units, target, what)
    grid = _Grid(costs.units, rule.multiple_of, np.array([layer.groups for layer in costs.layers]))
    grid.minimum, grid.ceiling = _limits(costs, grid.step, rule)
    widths = _allocate(Task(model, importance, costs, quadratic, grid, target), rule, what)
    cost = quadratic(widths)
    if cost < (1 - TOLERANCE) * target < quadratic(grid.ceiling):  # outside the window
        where, other = _grid_hint(rule.multiple_of)
        raise BudgetError(
            f"no widths found within {TOLERANCE:.0%} under the {what} budget {target:,}{where} "
            f"(best: {cost:,}); the units of this network are too coarse for this budget, try a "
            f"nearby budget{other}"
        )
    result = {name: int(w) for name, w in zip(costs.names, widths)}
    if verify:
        _verify(model, costs, result)
    return result


def _requested_budget(
    importance: Importance | None, budget: float | str, rule: Rule
) -> tuple[str, int | str]:
    """What is budgeted ("macs" or "params") and the target, checked before any forward pass."""
    if importance is None and rule.needs_importance:
        raise ValueError(f"the {rule.name} rule needs an importance (or use 'uniform')")
    what, target = split_budget_widths(budget) or ("macs", budget)
    if isinstance(target, str) and target.strip().isdigit():
        target = int(target)
    _check_budget_syntax(target, what)
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
            f"the {what} budget {target:,} is impossible for this {type(model).__name__}: the "
            f"achievable range is {smallest:,} (one unit per layer) to {full:,} (the full model, "
            f"ratios up to {full / smallest:.1f}x)"
        )
    return target


class _Grid:
    """The widths each layer may keep: multiples of its ``step`` (``multiple_of``, one unit for a
    layer narrower than it, times its ``groups``), and its full width, from ``minimum`` (one
    step, or the floor) to ``ceiling`` (its units, or the cap)."""

    def __init__(self, units: np.ndarray, multiple_of: int = 1, groups: np.ndarray | None = None):
        self.units, self.multiple_of = units, int(multiple_of)
        step = np.where(units < multiple_of, 1, multiple_of).astype(np.int64)
        self.groups = np.ones_like(units) if groups is None else groups
        self.step = np.lcm(step, self.groups)
        self.minimum, self.ceiling = self.step, units

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


def _limits(costs: CostModel, step: np.ndarray, rule: Rule) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer (floor, ceiling) widths on the grid from the rule's fractions and overrides."""
    units, names = costs.units, costs.names
    given = (rule.min_keep, rule.max_keep, rule.overrides)
    unknown = [n for limit in given if isinstance(limit, dict) for n in limit if n not in names]
    if unknown:
        raise ValueError(f"limits name layers this model does not prune {unknown}; its: {names}")
    low, high = (
        np.array([limit.get(n, default) if isinstance(limit, dict) else limit for n in names])
        for limit, default in ((rule.min_keep, 0.0), (rule.max_keep, 1.0))
    )
    if not (0 <= low).all() or not (high <= 1).all() or (low > high).any():
        raise ValueError(
            f"min_keep {rule.min_keep} and max_keep {rule.max_keep} must be kept fractions in "
            "[0, 1], each floor at most its cap"
        )
    floor = np.maximum(np.ceil(low * units / step).astype(np.int64) * step, step)
    ceiling = np.floor(high * units / step).astype(np.int64) * step
    ceiling = np.maximum(np.where(high >= 1, units, ceiling), floor)  # the full width is allowed
    floor, ceiling = np.minimum(floor, units), np.minimum(ceiling, units)
    for name, width in rule.overrides.items():
        index = names.index(name)
        size, groups = int(units[index]), costs.layers[index].groups
        if not 1 <= width <= size or width % groups:
            raise ValueError(
                f"override {name}={width} outside 1..{size} units, or not a multiple of the "
                f"layer's {groups} groups"
            )
        floor[index] = ceiling[index] = width
    return floor, ceiling


def _allocate(task: Task, rule: Rule, what: str) -> np.ndarray:
    """Widths on the task's grid under its target: the rule's, then add-back and exchanges."""
    quadratic, grid, target = task.quadratic, task.grid, task.target
    if task.importance is not None:
        units = dict(zip(task.costs.names, map(int, task.costs.units)))
        task.importance.check_fits(units, "model")
    smallest = quadratic(grid.minimum)
    if smallest > target:
        where, other = _grid_hint(grid.multiple_of)
        raise BudgetError(
            f"no widths found under the {what} budget {target:,}{where} (the narrowest allowed, "
            f"one step of {grid.multiple_of} units per layer or the floors and overrides, cost "
            f"{smallest:,}); the units of this network are too coarse for this budget or the "
            f"floors too high: try a larger budget, lower floors{other}"
        )
    return _by_rule(task, rule)


def _by_rule(task: Task, rule: Rule) -> np.ndarray:
    """The rule's widths for ``task``, then add-back and exchanges in the rule's order."""
    rank = rule.rank(task)
    return _repair(task, rank, _add_back(task, rank, rule.widths(task, rank)))


def _grid_hint(multiple_of: int) -> tuple[str, str]:
    """What the "too coarse" messages say about the grid: nothing for ``multiple_of=1``."""
    if multiple_of == 1:
        return "", ""
    return f" on the grid multiple_of={multiple_of}", " or a smaller multiple_of"


class _ImportanceRank:
    """Which block to remove next (lowest mean score) and to add back next (highest)."""

    def __init__(self, importance: Importance, names: list[str], groups: np.ndarray):
        self.ranked = importance.ranked_relative(names, groups)

    def removal(self, widths: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """Per layer: the mean score of the last kept units, down to ``lower``."""
        return np.array([r[low:w].mean() for r, low, w in zip(self.ranked, lower, widths)])

    def addition(self, widths: np.ndarray, upper: np.ndarray) -> np.ndarray:
        """Per layer: the mean score of the best removed units, up to ``upper``."""
        layers = zip(self.ranked, widths, upper)
        return np.array([r[w:up].mean() if w < up else -np.inf for r, w, up in layers])


class _UniformRank:
    """Keep the kept fractions w_l / K_l as equal as possible: remove from the layer that keeps
    the largest fraction (the lowest -w_l / K_l), add to the one that keeps the smallest."""

    def __init__(self, units: np.ndarray):
        self.units = units

    def removal(self, widths: np.ndarray, _: np.ndarray) -> np.ndarray:
        return -widths / self.units

    addition = removal


_Rank = _ImportanceRank | _UniformRank


def _remove_until(
    task: Task, rank: _Rank, widths: np.ndarray, frozen: np.ndarray | bool = False
) -> np.ndarray:
    """Remove the lowest-ranked block, one at a time, until the cost is at most the target;
    ``frozen`` layers keep their widths."""
    quadratic, grid, widths = task.quadratic, task.grid, widths.copy()
    cost = quadratic(widths)
    while cost > task.target:
        lower = grid.lower(widths)
        savings = quadratic.removal_savings(widths, widths - lower)
        order = rank.removal(widths, lower).astype(float)
        order[(lower < grid.minimum) | frozen] = np.inf  # one unit (block) stays in every layer
        if np.isinf(order).all():
            break
        layer = int(np.argmin(order))  # ties: the earlier layer, deterministic
        widths[layer] = lower[layer]
        cost -= int(savings[layer])
    return widths


def _add_back(task: Task, rank: _Rank, widths: np.ndarray) -> np.ndarray:
    """Add the highest-ranked block that still fits under the target, while there is one."""
    quadratic, grid, widths = task.quadratic, task.grid, widths.copy()
    cost = quadratic(widths)
    while True:
        upper = grid.upper(widths)
        additions = quadratic.addition_costs(widths, upper - widths)
        fits = (widths < grid.ceiling) & (cost + additions <= task.target)
        if not fits.any():
            return widths
        layer = int(np.argmax(np.where(fits, rank.addition(widths, upper), -np.inf)))
        widths[layer] = upper[layer]
        cost += int(additions[layer])


def _repair(task: Task, rank: _Rank, widths: np.ndarray) -> np.ndarray:
    """Exchange blocks while the result is more than TOLERANCE under the target (coarse units
    can leave a gap no single removed block fits): of every exchange (:func:`_exchanges`), room
    made by removal and refilled, keep the one that lands highest, until none improves."""
    cost = task.quadratic(widths)
    for _ in range(_REPAIR_ROUNDS):
        if cost >= (1 - TOLERANCE) * task.target:
            break
        best, best_cost = widths, cost
        for candidate, frozen in _exchanges(task.grid, widths):
            candidate = _add_back(task, rank, _remove_until(task, rank, candidate, frozen))
            candidate_cost = task.quadratic(candidate)
            if best_cost < candidate_cost <= task.target:
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
