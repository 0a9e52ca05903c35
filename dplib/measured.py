r"""The measured allocation: remove the block whose removal raises the loss least per MAC saved.

Each layer l offers its next block of b_l lowest-ranked kept units (b_l = K_l / B, at least one
step of the grid): B = 16 in a network of up to 12 prunable layers, B = 192 / L (rounded up, at
least 4) in a deeper one of L layers, so that the whole network offers about 192 blocks at any
depth. The removals, and with them the forward passes, then stay about level as the network
deepens, and the time grows with the cost of one pass rather than with the square of the depth
(figures/bench/measured_cost.md). On ResNet-56 the coarser blocks (7 per layer) halved the time
and chose within the noise of the fixed batches (figures/bench/measured_blocks.md).

With the gates switching units off (mode ``fixed``), the cross-entropy of a few fixed batches,
:math:`\mathrm{CE}_{\text{fixed}}(w)`, is measured for the current widths w and for the offers
(several in one stacked forward pass), and the offer with the smallest

.. math::

    \frac{\mathrm{CE}_{\text{fixed}}(w - b_l e_l) - \mathrm{CE}_{\text{fixed}}(w)}
         {\mathrm{MACs}(w) - \mathrm{MACs}(w - b_l e_l)}

(:math:`e_l` the l-th unit vector: :math:`w - b_l e_l` removes layer l's block)

goes, until the cost meets the target. After a removal every increase may change, but one
removal barely moves a distant layer's, so the increases are measured again lazily: each layer
keeps its latest measured increase as an estimate, and offers are measured afresh (``AT_ONCE``
per stacked pass), the lowest estimate first, until no estimate is below the best fresh
measurement. Increases that only grow as the network narrows (and as a layer gives up units
ranked higher) would make this the exhaustive rule (every offer measured at every removal).
They do not always: the test suite bounds what the laziness may cost in loss against the
exhaustive rule, and bench/measured_cost.py counts its passes.

A layer keeps at least its ``floor`` while any other layer still has a block to offer: removal by
the loss of two batches right after pruning will otherwise narrow a layer down to a unit or two
when its loss increase per MAC is lowest (LeNet-5's conv2 kept 2 of 50 channels), a layout
fine-tuning cannot recover (figures/study/measured_floor.md). :class:`dplib.budget.Measured` sets
it to 5% of a layer's units, and in a plain chain (a layer no skip connection bypasses, which
every path crosses) to 3/4 of the width the uniform rule gives the layer at the same budget, if
larger: with 5% alone LeNet-5's conv2 kept as few as 4 of its 50 channels and ended below the
greedy rule after fine-tuning (figures/bench/finetune_noise.md). It is a preference, not a
limit: past it the rule goes on, so every budget the grid allows stays reachable.

BatchNorm normalises each offer by its own batch statistics, as the pruned network's statistics
are re-estimated after surgery (EagleEye's lesson: stale running statistics misjudge a candidate).
The importance gives the order inside each layer. Fresh offers within one standard error of
the best (paired over the images) are near-ties, broken by the importance: the block whose
scores' upper bound, mean plus standard deviation of K_l E[s_lk] for a Dirichlet posterior, is
lowest goes.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .attach import attach_gates, unwrap
from .gates import stacked_copies
from .importance import Importance
from .loop import evaluating
from .progress import progress

BLOCKS_PER_LAYER = 16  # a layer's offer: 1/16 of its units (at least one grid step) ...
NETWORK_BLOCKS = 192  # ... while the whole network offers at most about this many ...
FEWEST_BLOCKS = 4  # ... and each layer at least this many blocks
MEASURED_BATCHES = 2  # the batches of ``data`` read
AT_ONCE = 1  # offers measured in one stacked forward pass
FLOOR = 0.05  # the fraction of its units a layer keeps while others can still give a block,
UNIFORM_FLOOR = 0.75  # or this fraction of the uniform rule's width at the budget, if larger


def measured_removal(
    model: nn.Module,
    importance: Importance,
    quadratic: Any,
    grid: Any,
    target: int,
    data: Iterable,
    floor: float | np.ndarray,
) -> np.ndarray:
    """Widths (on ``grid``, from its ceiling) whose ``quadratic`` cost is at most ``target``,
    removed block by block by measured loss increase per MAC saved, each layer's ``floor``
    fraction of its units (one for all, or one per layer) last (the module docstring)."""
    model = unwrap(model)
    gated = attach_gates(model, coupled=True)
    missing = [name for name in importance.names if name not in gated.layers]
    try:
        with evaluating(model) as device, torch.no_grad():
            batches = [
                (x.to(device), y.to(device)) for x, y in itertools.islice(data, MEASURED_BATCHES)
            ]
            if missing or not batches:
                raise ValueError(
                    f"the measured allocation needs data and prunable layers {missing}"
                )
            gated.set_mode("identity")
            removal = _Removal(gated, importance, grid, batches, floor)
            return _remove(removal, quadratic, target)
    finally:
        gated.remove()


@contextlib.contextmanager
def batch_statistics(model: nn.Module, copies: int) -> Iterator[None]:
    """Every BatchNorm of ``model`` normalises each of ``copies`` equal slices of its batch by that
    slice's own mean and variance (running statistics untouched), then restores its forward."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.forward = functools.partial(_sliced_norm, norm, copies)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward


def _sliced_norm(
    norm: nn.modules.batchnorm._BatchNorm, copies: int, x: torch.Tensor
) -> torch.Tensor:
    # training-mode normalisation of each slice; no running statistics passed, none updated
    slices = [
        F.batch_norm(part, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)
        for part in x.chunk(copies)
    ]
    return slices[0] if copies == 1 else torch.cat(slices)


def _remove(removal: _Removal, quadratic: Any, target: int) -> np.ndarray:
    """The removal loop of :func:`measured_removal` (gates attached, no gradients)."""
    cost = quadratic(removal.widths)
    bar = progress(total=max(int(cost - target), 0), desc="measured allocation (MACs)")
    while cost > target:
        chosen = removal.choose(quadratic)
        if chosen is None:
            break
        removal.take(chosen)
        before, cost = cost, quadratic(removal.widths)
        bar.update(min(int(before - cost), bar.total - bar.n))
    bar.close()
    return removal.widths


class _Removal:
    """The removal loop's state: the widths w, the per-image loss CE_fixed(w), each layer's
    latest measured increase per MAC saved (an estimate once the widths have changed), and the
    offers measured fresh at the current widths."""

    def __init__(
        self,
        gated: Any,
        importance: Importance,
        grid: Any,
        batches: list,
        floor: float | np.ndarray,
    ) -> None:
        self.gated, self.grid, self.batches = gated, grid, batches
        wanted = grid.floor(np.ceil(floor * grid.units).astype(np.int64))
        self.floor = np.minimum(wanted, grid.ceiling)
        self.names = importance.names
        per_layer = blocks_per_layer(len(self.names))
        self.block = np.maximum(grid.step, -(-grid.units // per_layer) // grid.step * grid.step)
        self.rankings = [importance.ranking(n, int(g)) for n, g in zip(self.names, grid.groups)]
        self.bounds = importance.ranked_relative(self.names, grid.groups, upper=True)
        self.widths = grid.ceiling.copy()
        self.loss = self._measure(self.widths[None])[0]
        self.estimate = np.full(len(self.names), -np.inf)  # never measured: first in line
        self.fresh: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def choose(self, quadratic: Any) -> int | None:
        """The layer whose offer goes (None when no layer has one left): offers are measured,
        the lowest estimate first, until no estimate is below the best fresh measurement."""
        lower = self.lower()
        offers = [int(o) for o in np.flatnonzero(lower < self.widths)]
        if not offers:
            return None
        self.fresh = {}
        while True:
            waiting = sorted((o for o in offers if o not in self.fresh), key=self.estimate.item)
            leader = min((self.estimate[o] for o in self.fresh), default=np.inf)
            if not waiting or self.estimate[waiting[0]] >= leader:
                break
            self._measure_offers(waiting[:AT_ONCE], lower, quadratic)
        return self._tie_break(lower)

    def take(self, layer: int) -> None:
        """Remove ``layer``'s offer: its loss becomes the current one. The layer keeps its
        estimate, a low one for its next block (units ranked higher)."""
        self.loss = self.fresh[layer][1]
        self.widths[layer] = self.lower()[layer]

    def lower(self) -> np.ndarray:
        """Each layer's width once its offer (its next block) is removed: not below its floor
        while any layer is above its own (a layer at its floor offers nothing), then freely."""
        plain = self.grid.floor(np.maximum(self.widths - self.block, 0))
        above = self.widths > self.floor
        if above.any():
            return np.where(above, np.maximum(plain, self.floor), self.widths)
        return plain

    def _measure_offers(self, layers: list[int], lower: np.ndarray, quadratic: Any) -> None:
        rows = np.repeat(self.widths[None], len(layers), axis=0)  # row i: layers[i] lowered
        rows[np.arange(len(layers)), layers] = lower[layers]
        for layer, row, loss in zip(layers, rows, self._measure(rows)):
            per_mac = (loss - self.loss) / float(quadratic(self.widths) - quadratic(row))
            self.fresh[layer] = (per_mac, loss)
            self.estimate[layer] = per_mac.mean().item()

    def _tie_break(self, lower: np.ndarray) -> int:
        """The fresh offers within one paired standard error of the best are near-ties: of
        those, the block with the lowest upper bound of its scores goes."""
        layers = sorted(self.fresh)
        per_mac = torch.stack([self.fresh[o][0] for o in layers])
        gaps = per_mac - per_mac[per_mac.mean(1).argmin()]
        near = gaps.mean(1) <= gaps.std(1) / gaps.shape[1] ** 0.5
        keys = [
            self.bounds[o][lower[o] : self.widths[o]].mean() if near[i] else np.inf
            for i, o in enumerate(layers)
        ]
        return layers[int(np.argmin(keys))]

    def _measure(self, rows: np.ndarray) -> torch.Tensor:
        """Per-image cross-entropy (rows, images), each row of widths keeping its top units."""
        copies = len(rows)
        for name, ranking, kept in zip(self.names, self.rankings, torch.as_tensor(rows).T):
            masks = torch.zeros(copies, len(ranking))
            masks[:, ranking] = (torch.arange(len(ranking)) < kept[:, None]).float()
            self.gated.gate(name).set_mode("fixed", masks)
        losses = []
        for images, labels in self.batches:
            stacked, targets = stacked_copies(images, labels, copies)
            with batch_statistics(self.gated.model, copies):
                logits = self.gated(stacked)
            each = F.cross_entropy(logits, targets, reduction="none")
            losses.append(each.view(copies, -1).double().cpu())
        self.gated.set_mode("identity")
        return torch.cat(losses, dim=1)


def blocks_per_layer(layers: int) -> int:
    """B, the blocks each of ``layers`` prunable layers offers: 16 up to 12 layers, then 192 / L
    rounded up (at least 4), so that the whole network offers about 192 at any depth."""
    return max(FEWEST_BLOCKS, min(BLOCKS_PER_LAYER, -(-NETWORK_BLOCKS // layers)))
