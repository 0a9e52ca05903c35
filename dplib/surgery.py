"""Physical pruning: a new, smaller network that holds only the kept units.

For every prunable layer with kept unit indices ``idx`` (its top-w_l by importance), its weight
keeps rows ``W[idx]`` and its bias ``b[idx]``; every BatchNorm on those units keeps its scale
and shift at ``idx`` and the running statistics, every depthwise convolution on them its
filters ``W[idx]``; every consumer keeps the matching input
columns ``W[:, idx]`` (after a ``flatten``, unit ``k`` owns the P = height*width inputs ``k*P ...
(k+1)*P - 1``). No masks, no zero units: the parameter count and MACs are real, and the
outputs equal those of the unpruned network with the removed units zeroed (tested).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .attach import check_ungated, unwrap
from .graph import find_prunable_layers, flatten_factor
from .importance import Importance, Widths, parse_widths


def _slice_layer(layer: nn.Conv2d | nn.Linear, out_idx, in_idx) -> None:
    """Keep rows ``out_idx`` of a layer's weight and bias and columns ``in_idx`` (in place)."""
    if isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups != layer.out_channels:
        return _slice_grouped(layer, out_idx, in_idx)
    weight = layer.weight.detach()
    if out_idx is not None:
        weight = weight[out_idx]
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias.detach()[out_idx].clone())
    if in_idx is not None:
        weight = weight[:, in_idx]
    layer.weight = nn.Parameter(weight.clone())
    if isinstance(layer, nn.Conv2d):
        layer.out_channels, layer.in_channels = weight.shape[:2]
    else:
        layer.out_features, layer.in_features = weight.shape


def _slice_grouped(conv: nn.Conv2d, out_idx, in_idx) -> None:
    """A grouped convolution keeps as many channels in each group: its weight (out, in / G, k,
    k) keeps, for each kept output of group g, the columns of group g's kept inputs."""
    groups, weight = conv.groups, conv.weight.detach()
    out_idx = torch.arange(conv.out_channels) if out_idx is None else out_idx.cpu()
    in_idx = torch.arange(conv.in_channels) if in_idx is None else in_idx.cpu()
    local = in_idx.view(groups, -1) % (conv.in_channels // groups)  # each group's kept inputs
    group_of = out_idx // (conv.out_channels // groups)
    weight = torch.stack([weight[o, local[g]] for o, g in zip(out_idx, group_of)])
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.detach()[out_idx].clone())
    conv.weight = nn.Parameter(weight.clone())
    conv.out_channels, conv.in_channels = len(out_idx), len(in_idx)


def _slice_batchnorm(norm: nn.modules.batchnorm._BatchNorm, idx: torch.Tensor) -> None:
    """Keep entries ``idx`` of a BatchNorm (scale, shift, running statistics), in place."""
    if norm.affine:
        norm.weight = nn.Parameter(norm.weight.detach()[idx].clone())
        norm.bias = nn.Parameter(norm.bias.detach()[idx].clone())
    if norm.track_running_stats:
        norm.running_mean, norm.running_var = norm.running_mean[idx], norm.running_var[idx]
    norm.num_features = len(idx)


def prune(model: nn.Module, importance: Importance, widths: Widths) -> nn.Module:
    """Return a new network that keeps, per prunable layer, its top-``width`` units.

    Args:
        model: the network (not changed; a :class:`~dplib.attach.GatedModel` whose gates were
            removed is unwrapped; with its gates still attached it is refused).
        importance: scores for the layers to prune (any criterion); layers (or residual groups)
            it does not score keep all their units.
        widths: kept units per scored layer, in any widths notation (``"5-8-45-15"``).

    Raises ImportanceMismatchError (the importance does not fit the model's prunable layers) or
    WidthsError (impossible widths).
    """
    model = unwrap(model)
    check_ungated(model, "dplib.prune")
    graph = find_prunable_layers(model, coupled=True)
    importance.check_fits(graph.units, type(model).__name__)
    kept = importance.keep_indices(parse_widths(widths, importance.units), graph.groups)
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    out_idx: dict[str, torch.Tensor] = {}
    in_idx: dict[str, torch.Tensor] = {}
    for layer in (layer for layer in graph.layers if layer.name in kept):  # others: kept whole
        producer = modules[layer.producers[0]]
        idx = kept[layer.name].to(producer.weight.device)
        out_idx.update(dict.fromkeys(layer.producers, idx))
        for name in layer.consumers:
            factor = flatten_factor(producer, modules[name])
            columns = idx[:, None] * factor + torch.arange(factor, device=idx.device)
            in_idx[name] = columns.flatten()
        for name in layer.batchnorms:
            _slice_batchnorm(modules[name], idx)
        for name in layer.depthwise:  # one filter per channel: keep the kept channels' filters
            _slice_layer(modules[name], idx, None)
            modules[name].in_channels = modules[name].groups = len(idx)
    for name in set(out_idx) | set(in_idx):  # after flatten_factor has read the old sizes
        _slice_layer(modules[name], out_idx.get(name), in_idx.get(name))
    return pruned


def unit_mask(
    importance: Importance, widths: Widths, model: nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """``{layer: 0/1 tensor (K,)}``: 1 for the units :func:`prune` keeps, 0 for the others
    (give ``model`` when it has grouped convolutions: their channels go evenly by group)."""
    groups = None if model is None else find_prunable_layers(unwrap(model), coupled=True).groups
    return {
        name: torch.zeros(importance.units[name]).index_fill_(0, idx, 1.0)
        for name, idx in importance.keep_indices(widths, groups).items()
    }


def widths_of(model: nn.Module, *, coupled: bool = False) -> dict[str, int]:
    """The current number of units of each prunable layer (and group, if ``coupled``)."""
    return find_prunable_layers(unwrap(model), coupled=coupled).units
