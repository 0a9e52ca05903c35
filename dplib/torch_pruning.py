r"""Torch-Pruning (Fang et al., CVPR 2023) as a second opinion: its criteria and its pruner.

Torch-Pruning (optional: ``pip install dplib[compare]``) finds the same coupled structures as
dplib through its DependencyGraph. In dplib's vocabulary:

- :func:`tp_importance`: a unit's Torch-Pruning *group* score, its criterion applied to every
  weight the unit's group removes, reduced by the mean over the group's layers, unnormalised
  (dplib normalises per layer, :meth:`dplib.Importance.relative`). ``tp_l1`` / ``tp_l2``
  (``tp_magnitude`` = ``tp_l2``, Torch-Pruning's default): :math:`\sum |w|^p`; ``tp_taylor``:
  :math:`\sum |w \, \partial L / \partial w|`, the cross-entropy's gradient summed over
  ``batches`` mini-batches (eval mode).
- :func:`prune_like_dplib`: Torch-Pruning removes exactly the units :func:`dplib.prune` removes
  (a cross-check of dplib's surgery).
- :func:`tp_global_prune`: Torch-Pruning's own global pruning to a MAC budget, as its users
  reach a speed-up (iterative steps of ``MetaPruner(global_pruning=True)``).
"""

from __future__ import annotations

import copy
import itertools
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .attach import unwrap
from .budget import input_shape_for, parse_budget
from .graph import PrunableLayer, _units, find_prunable_layers
from .importance import Importance, Widths, parse_widths
from .loop import evaluating
from .measure import count

CRITERIA = ("tp_l1", "tp_l2", "tp_magnitude", "tp_taylor")


def require_torch_pruning() -> ModuleType:
    """Import ``torch_pruning`` or raise an ImportError that says how to install it."""
    try:
        import torch_pruning
    except ImportError as error:
        raise ImportError(
            "dplib.torch_pruning needs the optional package torch-pruning: "
            "pip install 'torch-pruning>=1.5' (or pip install -e '.[compare]')"
        ) from error
    return torch_pruning


def dependency_graph(model: nn.Module, input_shape: tuple[int, ...] | None = None):
    """Torch-Pruning's DependencyGraph of ``model``, traced on zeros of ``input_shape``."""
    tp = require_torch_pruning()
    model = unwrap(model)
    shape = input_shape_for(model, input_shape)
    parameter = next(model.parameters())
    example = torch.zeros(shape, device=parameter.device, dtype=parameter.dtype)
    return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def _group(graph, model: nn.Module, layer: PrunableLayer, idxs: list[int]):
    """The Torch-Pruning group that removes units ``idxs`` of a dplib layer (or group)."""
    module = model.get_submodule(layer.producers[0])
    pruner = graph.get_pruner_of_module(module)
    return graph.get_pruning_group(module, pruner.prune_out_channels, idxs=idxs)


def _criterion(criterion: str, loader: DataLoader | None, batches: int, **options: Any):
    """Torch-Pruning's scorer for ``criterion``, checked to have the data it needs (``tp_taylor``:
    ``batches`` of ``loader``); ``options`` go to its constructor."""
    tp = require_torch_pruning()
    if criterion not in CRITERIA:
        raise ValueError(f"unknown Torch-Pruning criterion {criterion!r}; choose one of {CRITERIA}")
    if criterion != "tp_taylor":
        return tp.importance.MagnitudeImportance(p=1 if criterion == "tp_l1" else 2, **options)
    if loader is None:
        raise ValueError("criterion 'tp_taylor' needs a data loader (training data)")
    if batches < 1:
        raise ValueError(f"batches must be at least 1, got {batches}")
    return tp.importance.TaylorImportance(**options)


def tp_importance(
    model: nn.Module,
    criterion: str = "tp_l2",
    loader: DataLoader | None = None,
    *,
    batches: int = 10,
    input_shape: tuple[int, ...] | None = None,
    coupled: bool = False,
    device: str = "auto",
) -> Importance:
    """Torch-Pruning's group score of every unit of dplib's prunable layers (the model is not
    changed; its gradients are cleared); ``loader``: training data, for ``tp_taylor`` only."""
    scorer = _criterion(criterion, loader, batches, normalizer=None)
    model = unwrap(model)
    layers = find_prunable_layers(model, coupled=coupled).layers
    with evaluating(model, device) as device:
        try:
            graph = dependency_graph(model, input_shape)
            if criterion == "tp_taylor":
                with torch.enable_grad():
                    _backward_cross_entropy(model, loader, batches, device)
            scores = {}
            for layer in layers:
                group = _group(graph, model, layer, list(range(layer.units)))
                scores[layer.name] = scorer(group).detach().float().cpu()
        finally:
            model.zero_grad(set_to_none=True)
    config = {"batches": batches} if criterion == "tp_taylor" else {}
    return Importance(scores, criterion=criterion, config=config)


def prune_like_dplib(
    model: nn.Module,
    importance: Importance,
    widths: Widths,
    input_shape: tuple[int, ...] | None = None,
) -> nn.Module:
    """A copy of ``model`` pruned by Torch-Pruning's DependencyGraph to the units of
    :func:`dplib.prune`: per layer, all but the top-``width`` units of ``importance``."""
    require_torch_pruning()
    pruned = copy.deepcopy(unwrap(model))
    graph = dependency_graph(pruned, input_shape)
    layers = find_prunable_layers(pruned, coupled=True)
    kept = importance.keep_indices(parse_widths(widths, importance.units))
    for name, indices in kept.items():
        removed = sorted(set(range(importance.units[name])) - set(indices.tolist()))
        if removed:
            group = _group(graph, pruned, layers[name], removed)
            group.prune()
    return pruned


def tp_global_prune(
    model: nn.Module,
    target_macs: int | str,
    criterion: str = "tp_l2",
    loader: DataLoader | None = None,
    *,
    batches: int = 10,
    input_shape: tuple[int, ...] | None = None,
    coupled: bool = False,
    steps: int = 400,
) -> tuple[nn.Module, dict[str, int]]:
    """Torch-Pruning's global pruning of a copy of ``model`` to ``target_macs`` ("4x": four
    times fewer), as its benchmark reaches a speed-up: ``MetaPruner(global_pruning=True,
    pruning_ratio=1.0, iterative_steps=steps)`` stepped until the MACs are at most the target
    (each group's scores over their mean, ranked across layers; ``tp_taylor``'s gradients from
    ``batches`` of ``loader``, once). Returns the pruned copy and its dplib widths; layers dplib
    does not prune (the classifier; residual groups unless ``coupled``) are kept."""
    tp = require_torch_pruning()
    scorer = _criterion(criterion, loader, batches)  # a bad name or missing data: before any work
    pruned = copy.deepcopy(unwrap(model)).eval()
    shape = input_shape_for(pruned, input_shape)
    full = count(pruned, shape).macs
    target = parse_budget(target_macs, full, "macs")
    layers = find_prunable_layers(pruned, coupled=coupled).layers
    if criterion == "tp_taylor":
        _backward_cross_entropy(pruned, loader, batches)
    pruner = tp.pruner.MetaPruner(
        pruned,
        torch.zeros(shape),
        importance=scorer,
        global_pruning=True,
        pruning_ratio=1.0,
        iterative_steps=steps,
        ignored_layers=_layers_left_alone(pruned, layers),
    )
    while count(pruned, shape).macs > target and pruner.current_step < steps:
        pruner.step()
    pruned.zero_grad(set_to_none=True)
    first = {layer.name: pruned.get_submodule(layer.producers[0]) for layer in layers}
    return pruned, {name: _units(module) for name, module in first.items()}


def _backward_cross_entropy(
    model: nn.Module, loader: DataLoader, batches: int, device: torch.device | None = None
) -> None:
    """Clear the gradients, then accumulate those of the summed cross-entropy of ``batches``."""
    model.zero_grad(set_to_none=True)
    for images, labels in itertools.islice(loader, batches):
        if device is not None:  # None: the batches stay where the loader puts them
            images, labels = images.to(device), labels.to(device)
        F.cross_entropy(model(images), labels, reduction="sum").backward()


def _layers_left_alone(model: nn.Module, layers: list[PrunableLayer]) -> list[nn.Module]:
    """The Conv2d / Linear modules that produce none of ``layers``' units."""
    producers = {name for layer in layers for name in layer.producers}
    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and name not in producers
    ]
