"""Physical pruning: a new, smaller network that holds only the kept units.

For every prunable layer with kept unit indices ``idx`` (the top-k by importance):

- its weight keeps rows ``idx`` (``W[idx]``) and its bias ``b[idx]``;
- every BatchNorm on those units keeps ``gamma[idx]``, ``beta[idx]`` and the running statistics;
- every consumer keeps the matching input columns: ``W[:, idx]`` for a Conv2d or a Linear after a
  Linear; for a Linear after ``flatten``, unit ``k`` owns the ``H*W`` consecutive inputs
  ``k*H*W ... (k+1)*H*W - 1``.

The result has no masks and no zero units: its parameter count and MACs are real. Its outputs
equal those of the unpruned network with the removed units zeroed (tested).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .attach import unwrap
from .graph import find_prunable_layers, flatten_factor
from .importance import Importance, Widths, parse_widths


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _sliced_conv(old: nn.Conv2d, out_idx, in_idx) -> nn.Conv2d:
    weight = old.weight.detach()
    if out_idx is not None:
        weight = weight[out_idx]
    if in_idx is not None:
        weight = weight[:, in_idx]
    new = nn.Conv2d(
        weight.shape[1],
        weight.shape[0],
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if old.bias is not None:
            bias = old.bias.detach()
            new.bias.copy_(bias if out_idx is None else bias[out_idx])
    return new.train(old.training)


def _sliced_linear(old: nn.Linear, out_idx, in_idx) -> nn.Linear:
    weight = old.weight.detach()
    if out_idx is not None:
        weight = weight[out_idx]
    if in_idx is not None:
        weight = weight[:, in_idx]
    new = nn.Linear(
        weight.shape[1],
        weight.shape[0],
        bias=old.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if old.bias is not None:
            bias = old.bias.detach()
            new.bias.copy_(bias if out_idx is None else bias[out_idx])
    return new.train(old.training)


def _sliced_batchnorm(old: nn.modules.batchnorm._BatchNorm, idx: torch.Tensor) -> nn.Module:
    reference = old.weight if old.affine else old.running_mean
    placement = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
    new = type(old)(
        len(idx),
        eps=old.eps,
        momentum=old.momentum,
        affine=old.affine,
        track_running_stats=old.track_running_stats,
        **placement,
    )
    with torch.no_grad():
        if old.affine:
            new.weight.copy_(old.weight.detach()[idx])
            new.bias.copy_(old.bias.detach()[idx])
        if old.track_running_stats:
            new.running_mean.copy_(old.running_mean[idx])
            new.running_var.copy_(old.running_var[idx])
            new.num_batches_tracked.copy_(old.num_batches_tracked)
    return new.train(old.training)


def prune(model: nn.Module, importance: Importance, widths: Widths) -> nn.Module:
    """Return a new network that keeps, per prunable layer, its top-``width`` units.

    Args:
        model: the network (a :class:`~dplib.attach.GatedModel` is unwrapped; it is not changed).
        importance: scores for the layers to prune (any criterion); layers (or residual groups)
            it does not score keep all their units.
        widths: kept units per scored layer: dict, list in the importance's layer order, or
            ``"5-8-45-15"``.

    Raises:
        ImportanceMismatchError: the importance does not cover the model's prunable layers.
        WidthsError: impossible widths (wrong count, zero, larger than a layer).
    """
    model = unwrap(model)
    graph = find_prunable_layers(model, coupled=True)
    importance.check_fits({layer.name: layer.units for layer in graph.layers}, type(model).__name__)
    kept = importance.keep_indices(parse_widths(widths, importance.units))
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    out_idx: dict[str, torch.Tensor] = {}
    in_idx: dict[str, torch.Tensor] = {}
    for layer in graph.layers:
        if layer.name not in kept:
            continue  # not scored: kept whole
        producer = modules[layer.producers[0]]
        idx = kept[layer.name].to(producer.weight.device)
        for name in layer.producers:
            out_idx[name] = idx
        for bn in layer.batchnorms:
            _set_module(pruned, bn, _sliced_batchnorm(modules[bn], idx))
        for name in layer.consumers:
            factor = flatten_factor(producer, modules[name])
            columns = (idx[:, None] * factor + torch.arange(factor, device=idx.device)).flatten()
            in_idx[name] = columns
    for name in set(out_idx) | set(in_idx):
        old = modules[name]
        slicer = _sliced_conv if isinstance(old, nn.Conv2d) else _sliced_linear
        _set_module(pruned, name, slicer(old, out_idx.get(name), in_idx.get(name)))
    return pruned


def unit_mask(importance: Importance, widths: Widths) -> dict[str, torch.Tensor]:
    """``{layer: 0/1 tensor (K,)}``: 1 for the units :func:`prune` keeps, 0 for the others."""
    masks = {}
    for name, idx in importance.keep_indices(widths).items():
        mask = torch.zeros(importance.units[name])
        mask[idx] = 1.0
        masks[name] = mask
    return masks


def widths_of(model: nn.Module, *, coupled: bool = False) -> dict[str, int]:
    """The current number of units of each prunable layer (and group, if ``coupled``)."""
    model = unwrap(model)
    graph = find_prunable_layers(model, coupled=coupled)
    return {layer.name: layer.units for layer in graph.layers}
