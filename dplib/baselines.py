r"""Baseline criteria, each producing the same :class:`~dplib.Importance` as the Dirichlet one.

Score of unit k of a layer (higher = keep):

- ``random``: a uniform random number (seeded).
- ``l1``: :math:`\sum |W_k|`, the L1 norm of the unit's weights (its output row; no bias).
- ``bn_scale``: :math:`|\gamma_k|` of the BatchNorm after the layer (network slimming); a layer
  without BatchNorm falls back to ``l1``, recorded in ``config["fallback"]``.
- ``taylor``: first-order Taylor expansion of the loss (Molchanov et al. 2017): per image,
  :math:`|\sum_{\text{positions}} a_k\, \partial L / \partial a_k|`, summed over the images of
  ``batches`` mini-batches; :math:`a_k` is the unit's output (after its BatchNorm).
- ``oracle``: the increase of the mean cross-entropy on the given data when that unit alone is
  removed (zeroed); a costly diagnostic, the reference the others are ranked against.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .attach import GatedModel, attach_gates
from .graph import find_prunable_layers
from .importance import Importance
from .progress import progress
from .train import resolve_device

CRITERIA = ("random", "l1", "bn_scale", "taylor", "oracle")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, GatedModel) else model


def random_importance(model: nn.Module, seed: int = 0, *, coupled: bool = False) -> Importance:
    """Uniform random scores (seeded): the floor every criterion should beat.

    ``coupled=True`` also scores the residual-coupled groups (as for every criterion here).
    """
    generator = torch.Generator().manual_seed(seed)
    layers = find_prunable_layers(_unwrap(model), coupled=coupled).layers
    scores = {layer.name: torch.rand(layer.units, generator=generator) for layer in layers}
    return Importance(scores, criterion="random", config={"seed": seed})


def l1_importance(model: nn.Module, *, coupled: bool = False) -> Importance:
    """L1 norm of each unit's weights (its output rows of W, summed over a group's layers)."""
    model = _unwrap(model)
    modules = dict(model.named_modules())
    scores = {}
    for layer in find_prunable_layers(model, coupled=coupled).layers:
        rows = [modules[name].weight.detach().abs().flatten(1).sum(1) for name in layer.producers]
        scores[layer.name] = torch.stack(rows).sum(0).cpu()
    return Importance(scores, criterion="l1")


def bn_scale_importance(model: nn.Module, *, coupled: bool = False) -> Importance:
    """|gamma| of each unit's BatchNorm (mean over a group's layers); else the L1 norm."""
    model = _unwrap(model)
    modules = dict(model.named_modules())
    l1 = l1_importance(model, coupled=coupled).scores
    scores, fallback = {}, []
    for layer in find_prunable_layers(model, coupled=coupled).layers:
        norms = [modules[bn] for bn in layer.direct_batchnorms.values() if modules[bn].affine]
        if norms:
            gammas = torch.stack([bn.weight.detach().abs() for bn in norms])
            scores[layer.name] = gammas.mean(0).cpu()
        else:
            scores[layer.name] = l1[layer.name]
            fallback.append(layer.name)
    if len(fallback) == len(scores):
        raise ValueError(
            "bn_scale needs BatchNorm after the prunable layers; this network has none "
            "(use 'l1' or 'taylor')"
        )
    return Importance(
        scores, criterion="bn_scale", config={"fallback": {n: "l1" for n in fallback}}
    )


def taylor_importance(
    model: nn.Module,
    loader: DataLoader,
    *,
    batches: int = 10,
    device: str = "auto",
    coupled: bool = False,
) -> Importance:
    """First-order Taylor scores |a * dL/da| per unit, over ``batches`` mini-batches.

    For a residual group the per-image contributions of its layers are summed before the
    absolute value: that is the derivative of the loss with respect to one shared unit scale.
    """
    if batches < 1:
        raise ValueError(f"batches must be at least 1, got {batches}")
    model = _unwrap(model)
    device = resolve_device(device)
    original_device = next(model.parameters()).device
    graph = find_prunable_layers(model, coupled=coupled)
    modules = dict(model.named_modules())
    outputs: dict[str, list[torch.Tensor]] = {}
    handles = []
    for layer in graph.layers:

        def keep(module, inputs, output, name=layer.name):
            output.retain_grad()
            outputs.setdefault(name, []).append(output)

        for target in layer.gate_targets():
            handles.append(modules[target].register_forward_hook(keep))
    scores = {layer.name: torch.zeros(layer.units) for layer in graph.layers}
    was_training = model.training
    model.to(device).eval()
    try:
        for index, (images, labels) in enumerate(loader):
            if index >= batches:
                break
            # Input that requires grad makes every activation require grad, frozen weights or not.
            images = images.to(device).requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(images), labels.to(device), reduction="sum")
                loss.backward()
            for name, tensors in outputs.items():
                contribution = 0
                for output in tensors:
                    product = (output * output.grad).detach()
                    contribution = contribution + (
                        product.flatten(2).sum(2) if product.dim() > 2 else product
                    )
                scores[name] += contribution.abs().sum(0).cpu()
            outputs.clear()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training).to(original_device)
    return Importance(scores, criterion="taylor", config={"batches": batches})


def oracle_importance(
    model: nn.Module,
    loader: DataLoader,
    *,
    batches: int | None = None,
    chunk: int = 16,
    device: str = "auto",
    show_progress: bool = True,
    coupled: bool = False,
) -> Importance:
    """Loss increase when one unit alone is removed, on the data of ``loader``.

    Each pass stacks ``chunk`` copies of a mini-batch, copy j with one unit zeroed (the gates'
    block mechanism), so a layer of K units costs K forward passes of the data, in K / chunk
    calls. Use validation data, never the test split.
    """
    model = _unwrap(model)
    device = resolve_device(device)
    original_device = next(model.parameters()).device
    gated = attach_gates(model, coupled=coupled)
    was_training = model.training
    data = []
    for index, (images, labels) in enumerate(loader):
        if batches is not None and index >= batches:
            break
        data.append((images.to(device), labels.to(device)))
    total = sum(len(labels) for _, labels in data)
    gated.to(device).eval()
    gated.set_mode("identity")
    scores = {}
    try:
        with torch.no_grad():
            base = sum(F.cross_entropy(model(x), y, reduction="sum").item() for x, y in data)
            units = sum(gate.num_units for _, gate in gated.named_gates())
            bar = progress(total=units, desc="oracle", enabled=show_progress)
            for name, gate in gated.named_gates():
                increase = torch.zeros(gate.num_units)
                for start in range(0, gate.num_units, chunk):
                    removed = torch.arange(start, min(start + chunk, gate.num_units))
                    masks = torch.ones(len(removed), gate.num_units, device=device)
                    masks[torch.arange(len(removed)), removed] = 0.0
                    gate.set_mode("fixed", masks)
                    for images, labels in data:
                        stacked = images.repeat(len(removed), *([1] * (images.dim() - 1)))
                        losses = F.cross_entropy(
                            model(stacked), labels.repeat(len(removed)), reduction="none"
                        )
                        increase[removed] += losses.view(len(removed), -1).sum(1).cpu()
                    bar.update(len(removed))
                gate.set_mode("identity")
                scores[name] = (increase - base) / total
            bar.close()
    finally:
        gated.remove()
        model.train(was_training).to(original_device)
    return Importance(scores, criterion="oracle", config={"images": total})


def baseline_importance(
    criterion: str,
    model: nn.Module,
    loader: DataLoader | None = None,
    *,
    seed: int = 0,
    batches: int | None = None,
    device: str = "auto",
    coupled: bool = False,
) -> Importance:
    """Any baseline by name: ``random``, ``l1``, ``bn_scale``, ``taylor`` or ``oracle``.

    ``taylor`` and ``oracle`` need a ``loader`` (training data for taylor, validation data for
    the oracle).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")
    if criterion in ("taylor", "oracle") and loader is None:
        raise ValueError(f"criterion {criterion!r} needs a data loader")
    if criterion == "random":
        return random_importance(model, seed, coupled=coupled)
    if criterion == "l1":
        return l1_importance(model, coupled=coupled)
    if criterion == "bn_scale":
        return bn_scale_importance(model, coupled=coupled)
    if criterion == "taylor":
        return taylor_importance(
            model, loader, batches=batches or 10, device=device, coupled=coupled
        )
    return oracle_importance(model, loader, batches=batches, device=device, coupled=coupled)
