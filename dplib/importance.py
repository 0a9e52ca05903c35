"""The ``Importance`` type shared by every criterion, and the widths notation.

An :class:`Importance` holds one score per unit of each prunable layer, keyed by the layer's
module name, higher = more important. For the Dirichlet criterion the scores are the posterior
means E[s_k] = phi_k / phi_0, and the concentrations phi are kept too (for the posterior std).
Widths say how many units each prunable layer keeps: a dict ``{layer name: kept units}``, a list
in layer order, the paper's string ``"5-8-45-15"``, or a fraction kept in every layer (``0.5``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributions import Dirichlet

from .files import atomic_torch_save, read_torch_file

Widths = dict[str, int] | list[int] | tuple[int, ...] | str | float


class WidthsError(ValueError):
    """Widths that do not fit the network."""


class ImportanceMismatchError(ValueError):
    """The importance was computed for another network."""


def parse_widths(widths: Widths, units: dict[str, int]) -> dict[str, int]:
    """Turn any widths notation (a dict whose missing layers keep all their units, a list in
    layer order, ``"5-8-45-15"``, a fraction in (0, 1] kept in every layer, rounded, at least one
    unit) into ``{layer name: kept units}`` for the layers ``units`` (``{name: units}`` in layer
    order), or raise a :class:`WidthsError`."""
    if isinstance(widths, float):
        if not 0 < widths <= 1:
            raise WidthsError(f"a kept fraction must be in (0, 1], got {widths}")
        return {name: max(1, round(k * widths)) for name, k in units.items()}
    order = list(units)
    notation = "-".join(order)
    if isinstance(widths, str):
        tokens = [token.strip() for token in widths.replace(",", "-").split("-")]
        try:
            widths = [int(token) for token in tokens]
        except ValueError:
            raise WidthsError(
                f"widths {widths!r} are not numbers joined by '-'; expected one whole number "
                f"per layer in the order {notation}, e.g. "
                f"{'-'.join(str(max(1, u // 2)) for u in units.values())}"
            ) from None
    if isinstance(widths, (list, tuple)):
        if len(widths) != len(order):
            raise WidthsError(
                f"{len(widths)} widths given for {len(order)} prunable layers; give one per "
                f"layer in the order {notation} (full widths: "
                f"{'-'.join(str(u) for u in units.values())})"
            )
        widths = dict(zip(order, widths))
    if not isinstance(widths, dict):
        raise WidthsError(f"widths must be a dict, a list or a string, got {type(widths)}")
    unknown = [name for name in widths if name not in units]
    if unknown:
        raise WidthsError(f"no prunable layer named {unknown}; prunable layers: {order}")
    result = {}
    for name in order:
        kept = widths.get(name, units[name])
        whole = isinstance(kept, int) or (isinstance(kept, float) and kept.is_integer())
        if isinstance(kept, bool) or not whole:
            raise WidthsError(f"width of layer {name!r} must be a whole number, got {kept!r}")
        kept = int(kept)
        if not 1 <= kept <= units[name]:
            raise WidthsError(
                f"width {kept} for layer {name!r} is impossible: it has {units[name]} units and "
                f"must keep between 1 and {units[name]}"
            )
        result[name] = kept
    return result


def format_widths(widths: dict[str, int]) -> str:
    """``{conv1: 5, conv2: 10, fc1: 16}`` -> ``"5-10-16"``."""
    return "-".join(str(kept) for kept in widths.values())


@dataclass
class Importance:
    """Per-unit importance of every prunable layer."""

    scores: dict[str, torch.Tensor]  # {layer: (K,)}, higher = more important, in network order
    criterion: str = "dirichlet"
    concentration: dict[str, torch.Tensor] | None = None  # {layer: phi (K,)} for "dirichlet"
    history: dict[str, Any] = field(default_factory=dict)  # loss curve, snapshots, wall time
    config: dict[str, Any] = field(default_factory=dict)  # the settings that produced it

    @property
    def names(self) -> list[str]:
        """Layer names, in network order."""
        return list(self.scores)

    @property
    def units(self) -> dict[str, int]:
        """``{layer name: K}``."""
        return {name: int(score.numel()) for name, score in self.scores.items()}

    def _per_layer(
        self,
        values: dict[str, torch.Tensor],
        layer: str | None,
        statistic: Any = lambda value: value,
    ):
        """``statistic`` of one layer's ``values``, or a dict of it over every layer."""
        if layer is None:
            return {name: statistic(value) for name, value in values.items()}
        if layer not in values:
            raise KeyError(f"no importance for layer {layer!r}; layers: {self.names}")
        return statistic(values[layer])

    def mean(self, layer: str | None = None):
        """Posterior mean E[s] per unit (the scores for other criteria): one layer's tensor
        when ``layer`` is given, else a dict over layers."""
        if self.concentration is None:
            return self._per_layer(self.scores, layer)
        return self._per_layer(self.concentration, layer, lambda phi: phi / phi.sum())

    def std(self, layer: str | None = None):
        """Posterior standard deviation of s per unit (Dirichlet criterion only)."""
        if self.concentration is None:
            raise ValueError(
                f"the {self.criterion!r} criterion has no uncertainty; std() needs a Dirichlet "
                "posterior from learn_importance"
            )
        return self._per_layer(self.concentration, layer, lambda phi: Dirichlet(phi).stddev)

    def relative(self, layer: str | None = None):
        """Scores comparable across layers, in float64: each layer's scores over their mean
        (1.0: the layer's average unit; K_l E[s] for the posterior mean). A layer with a negative
        score (the oracle's) is shifted by its minimum first; one summing to zero gets 1.0."""

        def relative(score: torch.Tensor) -> torch.Tensor:
            score = score.detach().double().cpu()
            if (score < 0).any():
                score = score - score.min()
            total = score.sum()
            usable = total > 0 and torch.isfinite(total)
            return score * score.numel() / total if usable else torch.ones_like(score)

        return self._per_layer(self.scores, layer, relative)

    def ranked_relative(
        self, names: list[str], groups: Iterable[int], upper: bool = False
    ) -> list[np.ndarray]:
        """Per layer of ``names``, its :meth:`relative` scores in :meth:`ranking` order (entry j:
        its (j+1)-th most important unit's; prune() keeps the first w) as numpy arrays, or with
        ``upper`` their upper bounds, mean + std (the mean alone without a posterior): the
        measured rule's tie-break key of a block."""
        relative = self.relative()
        if upper and self.concentration is not None:
            stds = self.std()  # K E[s] has standard deviation K std(s)
            relative = {
                name: score + stds[name].double() * score.numel()
                for name, score in relative.items()
            }
        return [
            relative[name][self.ranking(name, int(count))].numpy()
            for name, count in zip(names, groups)
        ]

    def ranked_by(self, statistic: str) -> Importance:
        """A copy whose scores are another statistic of the Dirichlet posterior: ``"mean"``
        (the method), ``"mean-<k>std"`` (demotes uncertain units) or ``"quantile:<q>"`` (of the
        marginal s_k ~ Beta(phi_k, phi_0 - phi_k))."""
        if self.concentration is None:
            raise ValueError(f"the {self.criterion!r} criterion has no posterior to rank by")
        if statistic == "mean":
            scores = self.mean()
        elif statistic.startswith("mean-") and statistic.endswith("std"):
            try:
                k = float(statistic[len("mean-") : -len("std")] or 1)
            except ValueError:
                raise ValueError(
                    f"cannot read k in {statistic!r}; write e.g. 'mean-2std'"
                ) from None
            means, stds = self.mean(), self.std()
            scores = {name: means[name] - k * stds[name] for name in means}
        elif statistic.startswith("quantile:"):
            from scipy.stats import beta

            level = float(statistic.split(":", 1)[1])
            if not 0 < level < 1:
                raise ValueError(f"a quantile level must be in (0, 1), got {level}")
            scores = {}
            for name, phi in self.concentration.items():
                phi = phi.double()
                rest = phi.sum() - phi
                values = beta.ppf(level, phi.numpy(), rest.numpy())
                scores[name] = torch.as_tensor(values, dtype=torch.float32)
        else:
            raise ValueError(
                f"unknown statistic {statistic!r}; use 'mean', 'mean-<k>std' or 'quantile:<q>'"
            )
        return dataclasses.replace(
            self, scores=scores, config={**self.config, "statistic": statistic}
        )

    @classmethod
    def in_order(cls, units: dict[str, int]) -> Importance:
        """Scores that keep each layer's first units (to build an architecture of given
        widths; the weights are not the point)."""
        scores = {name: -torch.arange(k, dtype=torch.float) for name, k in units.items()}
        return cls(scores, criterion="first")

    def check_fits(self, units: dict[str, int], network: str) -> None:
        """An :class:`ImportanceMismatchError` unless every scored layer is among ``units``
        (the prunable layers of ``network``) with as many units."""
        unknown = [name for name in self.names if name not in units]
        wrong = {n: (k, units[n]) for n, k in self.units.items() if n in units and units[n] != k}
        if unknown or wrong:
            raise ImportanceMismatchError(
                f"the {self.criterion!r} importance does not fit this {network}: scores for "
                f"layers it cannot prune {unknown}, layers whose number of scores differs from "
                f"their units (scores, units) {wrong}. Prunable layers: {list(units)}. Compute "
                "the importance for this model."
            )

    def ranking(self, layer: str, groups: int = 1) -> torch.Tensor:
        """Unit indices of ``layer`` from most to least important (ties keep index order). With
        ``groups`` > 1 (the channels of a grouped convolution, in equal consecutive groups):
        each group's best unit, then each group's second best, ...: the first ``k * groups``
        keep ``k`` units in every group."""
        order = torch.argsort(self._per_layer(self.scores, layer), descending=True, stable=True)
        # one row per group, its units best first, read column by column
        by_group = order[torch.argsort(order // (len(order) // groups), stable=True)]
        return by_group.view(groups, -1).t().flatten()

    def widths(self, keep: float | Widths) -> dict[str, int]:
        """Widths as ``{layer: kept units}`` from any widths notation of :func:`parse_widths`
        (a fraction in (0, 1] kept in every layer included)."""
        return parse_widths(keep, self.units)

    def keep_indices(
        self, widths: Widths, groups: dict[str, int] | None = None
    ) -> dict[str, torch.Tensor]:
        """The indices (ascending) of the top-``width`` units of each layer; a layer of
        ``groups[name]`` equal groups keeps as many in each (its width a multiple of them)."""
        widths, groups = parse_widths(widths, self.units), groups or {}
        for name, kept in widths.items():
            if kept % groups.get(name, 1):
                raise WidthsError(
                    f"layer {name} feeds or is a grouped convolution of {groups[name]} groups: "
                    f"its width must be a multiple of {groups[name]}, got {kept}"
                )
        return {
            name: torch.sort(self.ranking(name, groups.get(name, 1))[:kept]).values
            for name, kept in widths.items()
        }

    # Saving ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A plain dict of tensors and Python values (what :meth:`save` writes)."""
        return {
            "format": "dplib-importance-1",
            "criterion": self.criterion,
            "scores": {k: v.detach().cpu() for k, v in self.scores.items()},
            "concentration": None
            if self.concentration is None
            else {k: v.detach().cpu() for k, v in self.concentration.items()},
            "history": self.history,
            "config": self.config,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` atomically (a temporary file, then a rename)."""
        return atomic_torch_save(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Importance:
        """Read an importance written by :meth:`save`."""
        data = read_torch_file(path, "dplib-importance-1", "importance file")
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls)})
