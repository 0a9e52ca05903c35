"""Choose per-layer widths that meet a budget of parameters or MACs.

The rule. Every unit k of prunable layer l has a score comparable across layers, r_lk, and a
cost: what removing it saves (its weights, bias and BatchNorm entries, the inputs it feeds to
its consumers, H*W of them per channel for a Linear after ``flatten``, and the MACs of all
those). Starting from the full network, the importance allocation removes one unit at a time,
the one with the lowest r_lk among each layer's lowest-ranked kept unit (``order="score"``,
the paper's comparison of units on K_l * E[s]; or the lowest r_lk per unit of cost saved,
``order="score_per_cost"``, the knapsack ratio), re-evaluating the costs after each removal as
they depend on the neighbouring widths, until the cost is at most the target. It then adds back,
highest rank first, removed units that still fit; if the result is still more than 2% under the
target (coarse units leave a gap), it exchanges units: force one more unit into a layer, remove
the lowest-ranked units elsewhere to make room, refill, keep the exchange that lands highest.
The result lies in [0.98 * target, target]; every layer keeps at least one unit.

The hardware grid (``multiple_of=m``, default 1): every kept width is a multiple of m or the
layer's full width; a layer narrower than m keeps any width of at least one unit, a wider one at
least m. Each greedy step then moves a layer from one allowed width to the next, removing or
adding a whole block of units, ranked by the mean r_lk of its units, its cost saved or added
evaluated exactly (the quadratic below at both widths); the exchanges move blocks too, and the
uniform allocation rounds its widths down to the grid. With m = 1 the blocks are single units.

The default is ``"score"``: with ``"score_per_cost"`` the cost, which varies by orders of
magnitude between layers, swamps the scores (which vary by a factor of a few), and whole layers
are cut to one unit (LeNet-5 at 4x fewer MACs: conv1 keeps 1 of 20 channels).

Comparable scores r (the "normalise each layer" rule): r = ``importance.relative()``, that is
K_l * E[s_lk] for the Dirichlet criterion (1.0 = the layer's average unit; the method page
notebooks/METHOD.md, section 4) and score / (layer mean of the scores) for every other
criterion. A layer with a negative score (the oracle's loss change can be negative) is shifted
by its minimum first; a layer whose scores are all equal gets r = 1 everywhere.

The uniform allocation, the naive reference, keeps the same fraction f of every layer
(``max(1, round(K_l * f))`` units, rounded down to the grid), with f the largest that fits
(bisection); the add-back step then fills the remaining budget one unit (block) at a time, in the
layer with the lowest kept fraction.

Costs are computed analytically, fast: cost(w) = c + a.w + w'Qw is a quadratic in the widths
w (a layer's weight count is out-units x in-units), whose coefficients come from the layer graph
and the spatial size of each layer's output, measured once with forward hooks. The conventions
are those of :func:`dplib.count` (exact parameters; 1 MAC per multiply-add of convolutions and
matrix products), and the answer is checked against :func:`dplib.count` of the pruned network.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import models
from .attach import GatedModel
from .graph import PrunableLayer, find_prunable_layers, flatten_factor
from .importance import Importance
from .measure import Count, count
from .surgery import ImportanceMismatchError, prune

ALLOCATIONS = ("importance", "uniform")
TOLERANCE = 0.02  # the answer lands in [(1 - TOLERANCE) * target, target]
_RATIO = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*[xX]\s*$")


class BudgetError(ValueError):
    """A budget that no widths can meet, or that is not written as an int or ``"4x"``."""


_Affine = tuple[int, dict[int, int]]  # c + sum_l coefficient_l * w_l


@dataclass
class Quadratic:
    """cost(w) = const + linear . w + w' quadratic w, exact in integers (w: widths vector)."""

    const: int
    linear: np.ndarray  # (L,)
    quadratic: np.ndarray  # (L, L), entry [p, c]: producer p feeds consumer c

    def __call__(self, widths: np.ndarray) -> int:
        return int(self.const + self.linear @ widths + widths @ self.quadratic @ widths)

    def removal_savings(self, widths: np.ndarray, steps: np.ndarray | int = 1) -> np.ndarray:
        """cost(w) - cost(w - d_l e_l) for every layer l, d = ``steps`` (exact integers)."""
        gradient = self.linear + (self.quadratic + self.quadratic.T) @ widths
        return steps * gradient - steps**2 * self.quadratic.diagonal()

    def addition_costs(self, widths: np.ndarray, steps: np.ndarray | int = 1) -> np.ndarray:
        """cost(w + d_l e_l) - cost(w) for every layer l, d = ``steps`` (exact integers)."""
        gradient = self.linear + (self.quadratic + self.quadratic.T) @ widths
        return steps * gradient + steps**2 * self.quadratic.diagonal()

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
    """Parameters and MACs of ``model`` pruned to any widths, without building it.

    Built once per (model, input shape): one trace of the layer graph and one forward pass with
    hooks that record how many output positions each Conv2d / Linear computes. ``layers`` are
    the prunable layers (or residual-coupled groups) whose widths vary, by default every plain
    prunable layer (``find_prunable_layers(model)``); the others keep all their units, as
    :func:`dplib.prune` does for layers its importance does not score.
    """

    def __init__(
        self, model: nn.Module, input_shape: tuple[int, ...], layers: list[str] | None = None
    ):
        if isinstance(model, GatedModel):
            model = model.model
        if len(input_shape) < 2:
            raise ValueError(f"input_shape must include the batch axis, got {input_shape}")
        self.model = model
        self.input_shape = tuple(input_shape)
        graph = find_prunable_layers(model, coupled=True)
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
        try:
            self.full = count(model, self.input_shape)
            positions = _output_positions(model, self.input_shape)
        except RuntimeError as error:
            raise ValueError(
                f"{type(model).__name__} does not run on an input of shape {self.input_shape} "
                f"({error}); pass the input_shape it takes, batch axis included"
            ) from error
        self.params, self.macs = self._quadratics(positions)
        # Whatever the quadratic leaves out (other parameterised modules, matmuls outside any
        # Conv2d / Linear) does not change with the widths: a constant measured on the full model.
        self.params.const += self.full.params - self.params(self.units)
        self.macs.const += self.full.macs - self.macs(self.units)

    def _quadratics(self, positions: dict[str, int]) -> tuple[Quadratic, Quadratic]:
        modules = dict(self.model.named_modules())
        size = len(self.names)
        params = Quadratic(0, np.zeros(size, np.int64), np.zeros((size, size), np.int64))
        macs = Quadratic(0, np.zeros(size, np.int64), np.zeros((size, size), np.int64))
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
                    params.linear[index] += 2  # gamma and beta per unit
        for name, module in modules.items():
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            if isinstance(module, nn.Conv2d):
                inputs, outputs = module.in_channels, module.out_channels
                per_pair = int(np.prod(module.kernel_size)) // module.groups
            else:
                inputs, outputs = module.in_features, module.out_features
                per_pair = 1
            # inputs and outputs as affine functions of the widths: (constant, {layer: coef})
            in_const, in_terms = inputs, {}
            for index, factor in feeds.get(name, []):
                in_const -= factor * int(self.units[index])
                in_terms[index] = in_terms.get(index, 0) + factor
            if name in produced_by:
                out_affine: _Affine = (0, {produced_by[name]: 1})
            else:
                out_affine = (outputs, {})
            weights_per_out = (
                per_pair * in_const + (module.bias is not None),
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


def _output_positions(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Outputs per output unit (batch x spatial positions) of every Conv2d / Linear."""
    positions: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            units = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features

            def record(module, inputs, output, name=name, units=units):
                # a module called twice (shared weights) computes twice
                positions[name] = positions.get(name, 0) + output.numel() // units

            handles.append(module.register_forward_hook(record))
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return positions


def default_input_shape(model: nn.Module) -> tuple[int, ...]:
    """(1, C, H, W) of a preset of :data:`dplib.models.MODELS`; a clear error for other models.

    The preset is recognised by its class; C is read from the first layer (presets can be built
    for other input channels). A preset built for another ``image_size`` needs ``input_shape``.
    """
    if isinstance(model, GatedModel):
        model = model.model
    for spec in models.MODELS.values():
        builder = spec.builder
        # a builder is the class itself or a function annotated to return it (CIFAR ResNets)
        built = (
            builder if isinstance(builder, type) else inspect.signature(builder).return_annotation
        )
        if type(model) is built or type(model).__name__ == built:
            first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
            channels = first.in_channels if isinstance(first, nn.Conv2d) else spec.input_shape[0]
            return (1, channels, *spec.input_shape[1:])
    raise ValueError(
        f"{type(model).__name__} is not one of dplib's preset models ({', '.join(models.MODELS)}"
        "); pass input_shape=(1, C, H, W), the shape of one input batch"
    )


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
    """``"macs:4x"`` -> ``("macs", "4x")``; None when ``widths`` is not a budget.

    The notebooks and profiles accept such a budget wherever they accept widths; each criterion
    then gets its own allocation from :func:`choose_widths`. A malformed budget raises.
    """
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


def relative_scores(importance: Importance) -> dict[str, torch.Tensor]:
    """Scores comparable across layers (see the module docstring for the rule)."""
    relative = {}
    for name, score in importance.mean().items():
        score = score.detach().double().cpu()
        if (score < 0).any():
            score = score - score.min()
        total = score.sum()
        if total <= 0 or not torch.isfinite(total):
            relative[name] = torch.ones_like(score)
        else:
            relative[name] = score * score.numel() / total
    return relative


def choose_widths(
    model: nn.Module,
    importance: Importance | None,
    target_macs: float | str | None = None,
    target_params: float | str | None = None,
    input_shape: tuple[int, ...] | None = None,
    *,
    allocation: str = "importance",
    order: str = "score",
    verify: bool = True,
    costs: CostModel | None = None,
    multiple_of: int = 1,
) -> dict[str, int]:
    """Kept units per prunable layer, ``{layer name: width}`` in layer order, within a budget.

    Args:
        model: the full network (a :class:`~dplib.GatedModel` is unwrapped).
        importance: scores of every prunable layer (any criterion); may be None for the uniform
            allocation.
        target_macs: MACs of one forward pass of ``input_shape``: an int, or ``"4x"`` for four
            times fewer than the full model. Give exactly one of target_macs and target_params.
        target_params: parameters, likewise.
        input_shape: the input batch shape, e.g. (1, 1, 28, 28); defaults to the preset's
            ``(1, *dplib.models.input_shape(name))``.
        allocation: ``"importance"`` (the greedy rule of the module docstring) or
            ``"uniform"`` (the same kept fraction in every layer).
        order: for the importance allocation, ``"score"`` (remove the unit with the lowest
            K_l * E[s], the paper's comparison) or ``"score_per_cost"`` (the lowest score per
            unit of cost saved).
        verify: check the analytic cost against :func:`dplib.count` of the pruned network.
        costs: a :class:`CostModel` of this model, input shape and layers, to reuse across
            calls (it costs two forward passes to build).
        multiple_of: every width a multiple of it (e.g. 8, for tensor cores) or the layer's
            full width; a layer narrower than it keeps any width (the module docstring).

    Returns:
        widths whose cost lies in [0.98 * target, target].

    Raises:
        BudgetError (a ValueError): malformed budget, both or neither target, a target outside
            [cost with one unit per layer, cost of the full model] (the message names it), or
            one that no widths on the grid of ``multiple_of`` meet ("too coarse").
    """
    what, target = _requested_budget(importance, target_macs, target_params, allocation, order)
    _check_multiple_of(multiple_of)
    model = model.model if isinstance(model, GatedModel) else model
    costs = _cost_model_for(model, importance, input_shape, costs)
    quadratic = costs.macs if what == "macs" else costs.params
    target = _target_in_range(model, quadratic, costs.units, target, what)
    grid = _Grid(costs.units, multiple_of)
    widths = _allocate(quadratic, costs, grid, importance, (target, what), allocation, order)
    _check_within_tolerance(quadratic(widths), target, what, multiple_of)
    result = {name: int(w) for name, w in zip(costs.names, widths)}
    if verify:
        _verify(model, costs, result)
    return result


def _check_multiple_of(multiple_of: object) -> None:
    """Refuse a grid that is not a positive integer (bools included), before any forward pass."""
    if (
        isinstance(multiple_of, bool)
        or not isinstance(multiple_of, (int, np.integer))
        or multiple_of < 1
    ):
        raise ValueError(
            f"multiple_of must be a positive integer (1: any width; 8: multiples of 8), got "
            f"{multiple_of!r} ({type(multiple_of).__name__})"
        )


def _requested_budget(
    importance: Importance | None,
    target_macs: float | str | None,
    target_params: float | str | None,
    allocation: str,
    order: str,
) -> tuple[str, int | str]:
    """Check the options of :func:`choose_widths`; return what is budgeted and the target."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if order not in ("score_per_cost", "score"):
        raise ValueError(f"order must be 'score_per_cost' or 'score', got {order!r}")
    if (target_macs is None) == (target_params is None):
        raise BudgetError("give exactly one of target_macs and target_params")
    if importance is None and allocation == "importance":
        raise ValueError("the importance allocation needs an importance (or use 'uniform')")
    what, target = ("macs", target_macs) if target_macs is not None else ("params", target_params)
    _check_budget_syntax(target, what)
    return what, target


def _cost_model_for(
    model: nn.Module,
    importance: Importance | None,
    input_shape: tuple[int, ...] | None,
    costs: CostModel | None,
) -> CostModel:
    """The given cost model, checked against the importance's layers, or a new one."""
    layers = importance.names if importance is not None else None
    if costs is None:
        shape = tuple(input_shape) if input_shape is not None else default_input_shape(model)
        return CostModel(model, shape, layers)
    if layers is not None and costs.names != layers:
        raise ValueError(f"the cost model varies {costs.names}, the importance scores {layers}")
    return costs


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
    """The widths each layer may keep: multiples of ``multiple_of``, and its full width.

    A layer narrower than ``multiple_of`` cannot hold a multiple: it may keep any width of at
    least one unit (steps of one unit); a wider one steps by blocks of ``multiple_of`` units and
    keeps at least one block. With ``multiple_of=1`` every width from 1 to the full one is allowed.
    """

    def __init__(self, units: np.ndarray, multiple_of: int = 1):
        self.units = units
        self.multiple_of = int(multiple_of)
        self.step = np.where(units < multiple_of, 1, multiple_of).astype(np.int64)
        self.minimum = self.step  # one unit, or one block

    def lower(self, widths: np.ndarray) -> np.ndarray:
        """The next allowed width below each width; below ``minimum`` where there is none."""
        return (widths - 1) // self.step * self.step

    def upper(self, widths: np.ndarray) -> np.ndarray:
        """The next allowed width above each width; the width itself at the full width."""
        return np.minimum((widths // self.step + 1) * self.step, self.units)

    def floor(self, widths: np.ndarray) -> np.ndarray:
        """The largest allowed widths at most ``widths`` (and at least ``minimum``)."""
        rounded = np.maximum(widths // self.step * self.step, self.minimum)
        return np.where(widths >= self.units, self.units, rounded)


def _allocate(
    quadratic: Quadratic,
    costs: CostModel,
    grid: _Grid,
    importance: Importance | None,
    budget: tuple[int, str],
    allocation: str,
    order: str,
) -> np.ndarray:
    """Widths on ``grid`` under the budget (target, what) by the chosen allocation, then
    add-back and exchanges."""
    if importance is not None:
        _check_importance(importance, costs)
    target, what = budget
    _check_grid_reaches(quadratic, grid, target, what)
    rank: _ImportanceRank | _UniformRank
    if allocation == "uniform":
        rank = _UniformRank(costs.units)
        widths = _uniform(quadratic, grid, target)
    else:
        rank = _ImportanceRank(importance, costs.names, use_cost=order == "score_per_cost")
        widths = _remove_until(quadratic, grid, target, rank)
    widths = _add_back(quadratic, grid, widths, target, rank)
    return _repair(quadratic, grid, widths, target, rank)


def _grid_hint(multiple_of: int) -> tuple[str, str]:
    """What the "too coarse" messages say about the grid: nothing for ``multiple_of=1``."""
    if multiple_of == 1:
        return "", ""
    return f" on the grid multiple_of={multiple_of}", " or a smaller multiple_of"


def _check_grid_reaches(quadratic: Quadratic, grid: _Grid, target: int, what: str) -> None:
    """Refuse a target under the cost of the narrowest widths on the grid."""
    smallest = quadratic(grid.minimum)
    if smallest > target:
        where, other = _grid_hint(grid.multiple_of)
        raise BudgetError(
            f"no widths found under target_{what} {target:,}{where} (the narrowest, "
            f"{grid.multiple_of} units in every layer at least as wide, cost {smallest:,}); the "
            f"units of this network are too coarse for this budget, try a larger target{other}"
        )


def _check_within_tolerance(cost: int, target: int, what: str, multiple_of: int = 1) -> None:
    """Refuse widths more than TOLERANCE under the target (the promised window)."""
    if cost < (1 - TOLERANCE) * target:
        where, other = _grid_hint(multiple_of)
        raise BudgetError(
            f"no widths found within {TOLERANCE:.0%} under target_{what} {target:,}{where} "
            f"(best: {cost:,}); the units of this network are too coarse for this budget, try a "
            f"nearby target{other}"
        )


def _check_importance(importance: Importance, costs: CostModel) -> None:
    """Refuse an importance whose layers' numbers of scores differ from their units."""
    wrong = {
        name: (importance.units.get(name), int(k))
        for name, k in zip(costs.names, costs.units)
        if importance.units.get(name) != int(k)
    }
    if wrong:
        raise ImportanceMismatchError(
            f"the {importance.criterion!r} importance does not fit this model: layers whose "
            f"number of scores differs from their units (scores, units): {wrong}"
        )


def _block_mean(ranked: np.ndarray, start: int, stop: int) -> float:
    """Mean score of the ranked units start..stop-1 (a single unit's score exactly)."""
    return ranked[start] if stop - start == 1 else ranked[start:stop].mean()


class _ImportanceRank:
    """Which block to remove next (lowest rank) and to add back next (highest rank)."""

    def __init__(self, importance: Importance, names: list[str], use_cost: bool):
        relative = relative_scores(importance)
        # ranked[l][j]: score of layer l's (j+1)-th most important unit; prune() keeps the top w
        self.ranked = [relative[name][importance.ranking(name)].numpy() for name in names]
        self.use_cost = use_cost

    def removal(self, widths: np.ndarray, lower: np.ndarray, savings: np.ndarray) -> np.ndarray:
        """Per layer: the mean score of the last kept units, down to ``lower`` (per unit of
        cost saved)."""
        scores = np.array([_block_mean(r, lo, w) for r, lo, w in zip(self.ranked, lower, widths)])
        return scores / np.maximum(savings, 1) if self.use_cost else scores

    def addition(self, widths: np.ndarray, upper: np.ndarray, additions: np.ndarray) -> np.ndarray:
        """Per layer: the mean score of the best removed units, up to ``upper`` (per unit of
        cost added)."""
        scores = np.array(
            [
                _block_mean(r, w, up) if w < up else -np.inf
                for r, w, up in zip(self.ranked, widths, upper)
            ]
        )
        return scores / np.maximum(additions, 1) if self.use_cost else scores


class _UniformRank:
    """Keep the kept fractions w_l / K_l as equal as possible."""

    def __init__(self, units: np.ndarray):
        self.units = units

    def removal(self, widths: np.ndarray, lower: np.ndarray, savings: np.ndarray) -> np.ndarray:
        """Remove from the layer that keeps the largest fraction."""
        return -widths / self.units

    def addition(self, widths: np.ndarray, upper: np.ndarray, additions: np.ndarray) -> np.ndarray:
        """Add to the layer that keeps the smallest fraction."""
        return -widths / self.units


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
    widths = grid.units.copy() if start is None else start.copy()
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


def _uniform(quadratic: Quadratic, grid: _Grid, target: int) -> np.ndarray:
    """The largest kept fraction f, the same in every layer, whose widths (rounded down to the
    grid) fit ``target``."""

    def widths_at(fraction: float) -> np.ndarray:
        """Every layer at round(K_l * fraction) units, rounded down to the grid."""
        return grid.floor(np.round(grid.units * fraction).astype(np.int64))

    low, high = 0.0, 1.0  # widths_at(low) fits (the narrowest widths, checked by the caller)
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
        fits = (widths < grid.units) & (cost + additions <= target)
        if not fits.any():
            return widths
        order = np.where(fits, rank.addition(widths, upper, additions), -np.inf)
        layer = int(np.argmax(order))
        widths[layer] = upper[layer]
        cost += int(additions[layer])


def _repair(
    quadratic: Quadratic,
    grid: _Grid,
    widths: np.ndarray,
    target: int,
    rank: _Rank,
    rounds: int = 20,
) -> np.ndarray:
    """Exchange blocks when the greedy result is more than TOLERANCE under ``target``.

    Coarse units (a channel before a large Linear, a residual group, a block of the grid) can
    leave a gap that no single removed block fits. Each round tries every exchange "one more
    block in layer A, one fewer in layer B (or none)", makes room if needed by removing the
    lowest-ranked blocks of layers other than A (and, once more, other than B too where B steps
    by several units), and refills; it keeps the exchange that lands highest under the target,
    and stops inside the window or when no exchange improves.
    """
    cost = quadratic(widths)
    for _ in range(rounds):
        if cost >= (1 - TOLERANCE) * target:
            break
        best, best_cost = _best_exchange(quadratic, grid, widths, target, rank)
        if best is widths:
            break
        widths, cost = best, best_cost
    return widths


def _best_exchange(
    quadratic: Quadratic, grid: _Grid, widths: np.ndarray, target: int, rank: _Rank
) -> tuple[np.ndarray, int]:
    """The exchange of :func:`_repair` that lands highest under ``target``, with its cost;
    ``widths`` itself (the same object) when none beats it."""
    best, best_cost = widths, quadratic(widths)
    for candidate, frozen in _exchanges(grid, widths):
        candidate = _remove_until(quadratic, grid, target, rank, candidate, frozen)
        candidate = _add_back(quadratic, grid, candidate, target, rank)
        candidate_cost = quadratic(candidate)
        if best_cost < candidate_cost <= target:
            best, best_cost = candidate, candidate_cost
    return best, best_cost


def _exchanges(grid: _Grid, widths: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(widths, frozen layers) of every exchange: one more block in layer A (frozen while room
    is made), one fewer in layer B or none. A layer B that steps by blocks of several units is
    tried twice: free, and frozen too (room made elsewhere, not by a second block of B)."""
    lower, upper = grid.lower(widths), grid.upper(widths)
    shrinkable = np.flatnonzero(lower >= grid.minimum)
    for grown in np.flatnonzero(widths < grid.units):
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
    first_units = Importance(
        {
            name: -torch.arange(int(k), dtype=torch.float)
            for name, k in zip(costs.names, costs.units)
        },
        criterion="first",
    )
    measured = count(prune(model, first_units, widths), costs.input_shape)
    predicted = costs.cost(widths)
    if measured != predicted:
        raise RuntimeError(
            f"dplib's analytic cost {tuple(predicted)} differs from dplib.count "
            f"{tuple(measured)} for widths {widths}: a structure the cost model does not "
            "understand; please report it"
        )
