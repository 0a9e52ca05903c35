r"""Pruning criteria: one registry from a criterion's name to the function that scores units.

Every criterion produces an :class:`~dplib.Importance` (one score per unit of each prunable
layer, higher = keep), so every comparison runs through the same surgery. Score of unit k:

- ``dirichlet``: the posterior mean :math:`E[s_k] = \varphi_k / \varphi_0` learnt by
  :func:`dplib.learn_importance` (the method; its knobs: :class:`dplib.DirichletSettings`).
- ``random``: a uniform random number (seeded): the floor every criterion should beat.
- ``l1``: :math:`\sum |W_{lk}|`, the L1 norm of the unit's weights (its output row; no bias).
- ``taylor``: the first-order Taylor estimate of the loss change when the unit is removed
  (Molchanov et al., ICLR 2017): :math:`|\sum_{\text{positions}} h_{lk}\, \partial \mathrm{CE} /
  \partial h_{lk}|` per image (:math:`h_{lk}`: the unit's output after its BatchNorm), summed
  over the images.
- ``bn_scale``: :math:`|\gamma_k|` of the BatchNorm after the layer (network slimming); a layer
  without BatchNorm falls back to ``l1``, recorded in ``config["fallback"]``.
- ``oracle``: the increase of the mean cross-entropy on the given data when that unit alone is
  zeroed; a costly diagnostic, the reference the others are ranked against.
- ``tp_l1``, ``tp_l2``, ``tp_taylor``: Torch-Pruning's group criteria (:mod:`dplib.torch_pruning`),
  where the optional package ``torch-pruning`` is installed.

A criterion is a function ``criterion(model, loader=None, *, <its options>) -> Importance``
registered with :func:`register`; :func:`compute` runs one by name. Every list of criteria reads
this registry."""

from __future__ import annotations

import importlib.util
import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .attach import attach_gates, unwrap
from .checks import check_data
from .gates import DirichletGate, stacked_copies
from .graph import find_prunable_layers
from .importance import Importance
from .loop import evaluating
from .progress import progress
from .settings import DirichletSettings
from .torch_pruning import tp_importance
from .vi import learn_importance

ImportanceFunction = Callable[..., Importance]


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: its name, its function and what it needs."""

    name: str
    function: ImportanceFunction
    options: tuple[str, ...]  # the function's keyword options (all but model and loader)
    description: str = ""
    needs_data: bool = False  # it reads a data loader (training data; the oracle: validation)
    applies_to: Callable[[nn.Module], bool] | None = None  # the networks it suits (None: all)
    requires: str | None = None  # an optional package; without it, left out of defaults()
    peer: bool = False  # a peer library's: compared at a budget, not in the notebooks' table
    in_defaults: bool = True  # listed by defaults() (False: run only when asked by name)

    def available(self) -> bool:
        """Whether the package it requires (if any) is installed."""
        return self.requires is None or importlib.util.find_spec(self.requires) is not None

    def applies(self, model: nn.Module) -> bool:
        """Whether it makes sense for ``model``."""
        return self.applies_to is None or self.applies_to(unwrap(model))

    def taking(self, **offered: Any) -> dict[str, Any]:
        """Those of the ``offered`` options (seed, device, ...) this criterion takes."""
        return {name: value for name, value in offered.items() if name in self.options}


REGISTRY: dict[str, Criterion] = {}


def register(
    name: str, *, replace: bool = False, **flags: Any
) -> Callable[[ImportanceFunction], ImportanceFunction]:
    """Decorator: register ``function(model, loader=None, *, options)`` as criterion ``name``,
    with ``flags``, the fields of :class:`Criterion` (``description``, ``needs_data``, ...); a
    name registered again raises, unless ``replace=True`` or it is the same function."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a criterion's name must be a non-empty string, got {name!r}")

    def decorator(function: ImportanceFunction) -> ImportanceFunction:
        held = REGISTRY.get(name)
        if held is not None and not replace and _origin(held.function) != _origin(function):
            raise ValueError(
                f"criterion {name!r} is already registered (by {_origin(held.function)}); pick "
                "another name or pass replace=True"
            )
        REGISTRY[name] = Criterion(name, function, _options_of(name, function), **flags)
        return function

    return decorator


def _options_of(name: str, function: ImportanceFunction) -> tuple[str, ...]:
    """The keyword options of a criterion's function, checked to start (model, loader)."""
    parameters = list(inspect.signature(function).parameters.values())
    if len(parameters) < 2 or [p.name for p in parameters[:2]] != ["model", "loader"]:
        raise TypeError(
            f"criterion {name!r}: its function must start with (model, loader=None, ...), got "
            f"{inspect.signature(function)}"
        )
    return tuple(p.name for p in parameters[2:] if p.kind is not inspect.Parameter.VAR_KEYWORD)


def unregister(name: str) -> None:
    """Remove criterion ``name`` from the registry (a user's criterion, after a test)."""
    get(name)
    del REGISTRY[name]


def _origin(function: Callable) -> str:
    return f"{function.__module__}.{function.__qualname__}"


def get(name: str) -> Criterion:
    """The registered criterion ``name``, or a ValueError that lists the registered names."""
    if isinstance(name, nn.Module):
        raise TypeError(
            "the criterion's name comes first: compute('l1', model), not compute(model, 'l1')"
        )
    if name not in REGISTRY:
        raise ValueError(f"unknown criterion {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names() -> tuple[str, ...]:
    """Every registered criterion, in registration order."""
    return tuple(REGISTRY)


def defaults(model: nn.Module | None = None, *, peers: bool = False) -> tuple[str, ...]:
    """The criteria compared by default: those that apply to ``model`` and are installed;
    ``peers=True`` adds the peer libraries' criteria."""
    listed = [c for c in REGISTRY.values() if c.in_defaults and (peers or not c.peer)]
    return tuple(c.name for c in listed if c.available() and (model is None or c.applies(model)))


def compute(
    criterion: str, model: nn.Module, loader: DataLoader | None = None, **options: Any
) -> Importance:
    """Score the units of ``model`` by ``criterion`` (a name of :func:`names`).

    Args:
        loader: the data of criteria that need it (``needs_data``); the others ignore it.
        options: the criterion's own (``seed``, ``batches``, ``settings``, ...); one it does not
            take is a TypeError.
    """
    entry = get(criterion)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    unknown = sorted(set(options) - set(entry.options))
    parameters = inspect.signature(entry.function).parameters.values()
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        raise TypeError(
            f"criterion {criterion!r} takes no option {', '.join(map(repr, unknown))}; its "
            f"options are {', '.join(entry.options) or 'none'}"
        )
    if not entry.available():
        raise ImportError(
            f"criterion {criterion!r} needs the optional package {entry.requires}: "
            "pip install -e '.[compare]'"
        )
    if entry.needs_data:
        if loader is None:
            raise ValueError(f"criterion {criterion!r} needs a data loader")
        check_data(model, loader, f"criterion {criterion!r}")
    return entry.function(model, loader if entry.needs_data else None, **options)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# The criteria, in the order of every list of them (tables, comparisons) -----------------------
@register("dirichlet", description="posterior mean E[s] of the Dirichlet gates", needs_data=True)
def dirichlet_importance(
    model: nn.Module,
    loader: DataLoader,
    *,
    seed: int = 0,
    device: str | torch.device = "auto",
    coupled: bool = False,
    settings: DirichletSettings | None = None,
) -> Importance:
    """Attach gates with ``settings``, learn their posteriors, remove the gates."""
    settings = settings or DirichletSettings()
    gated = attach_gates(unwrap(model), settings=settings, coupled=coupled)
    try:
        return learn_importance(gated, loader, settings, device=device, seed=seed)
    finally:
        gated.remove()


@register("random", description="uniform random scores (seeded)")
def random_importance(
    model: nn.Module, loader: None = None, *, seed: int = 0, coupled: bool = False
) -> Importance:
    """Uniform random scores (seeded): the floor every criterion should beat."""
    generator = torch.Generator().manual_seed(seed)
    layers = find_prunable_layers(unwrap(model), coupled=coupled).layers
    scores = {layer.name: torch.rand(layer.units, generator=generator) for layer in layers}
    return Importance(scores, criterion="random", config={"seed": seed})


@register("l1", description="L1 norm of each unit's weights")
def l1_importance(model: nn.Module, loader: None = None, *, coupled: bool = False) -> Importance:
    """L1 norm of each unit's weights (its output rows of W, summed over a group's layers)."""
    model = unwrap(model)
    modules = dict(model.named_modules())
    scores = {}
    for layer in find_prunable_layers(model, coupled=coupled).layers:
        rows = [modules[name].weight.detach().abs().flatten(1).sum(1) for name in layer.producers]
        scores[layer.name] = torch.stack(rows).sum(0).cpu()
    return Importance(scores, criterion="l1")


@register("taylor", description="first-order Taylor |a dL/da|", needs_data=True)
def taylor_importance(
    model: nn.Module,
    loader: DataLoader,
    *,
    batches: int = 10,
    device: str | torch.device = "auto",
    coupled: bool = False,
) -> Importance:
    """First-order Taylor scores |a * dL/da| per unit, over ``batches`` mini-batches (a group
    sums its layers' contributions before the absolute value: one shared unit scale)."""
    if batches < 1:
        raise ValueError(f"batches must be at least 1, got {batches}")
    model = unwrap(model)
    graph = find_prunable_layers(model, coupled=coupled)
    outputs: dict[str, list[torch.Tensor]] = {}
    handles = _keep_outputs(model, graph.layers, outputs)
    scores = {layer.name: torch.zeros(layer.units) for layer in graph.layers}
    try:
        with evaluating(model, device) as device:
            for images, labels in itertools.islice(loader, batches):
                # input that requires grad: every activation requires grad, frozen weights or not
                images = images.to(device).requires_grad_(True)
                with torch.enable_grad():
                    F.cross_entropy(model(images), labels.to(device), reduction="sum").backward()
                # |sum over positions of h dCE/dh| per image (``outputs``: what the hooks kept)
                for name, tensors in outputs.items():  # the units on axis 1, positions after
                    axis = graph[name].axis
                    products = [(out * out.grad).detach().movedim(axis, 1) for out in tensors]
                    per_image = sum(p.flatten(2).sum(2) if p.dim() > 2 else p for p in products)
                    scores[name] += per_image.abs().sum(0).cpu()
                outputs.clear()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    return Importance(scores, criterion="taylor", config={"batches": batches})


def _keep_outputs(model: nn.Module, layers: list, outputs: dict[str, list[torch.Tensor]]) -> list:
    """Hooks that keep (with their gradients) the outputs every layer's gate would multiply."""
    modules = dict(model.named_modules())
    handles = []
    for layer in layers:

        def keep(module, inputs, output, name=layer.name):
            output.retain_grad()
            outputs.setdefault(name, []).append(output)

        for target in layer.gate_targets():
            handles.append(modules[target].register_forward_hook(keep))
    return handles


@register("bn_scale", description="|gamma| of the BatchNorm", applies_to=_has_batchnorm)
def bn_scale_importance(
    model: nn.Module, loader: None = None, *, coupled: bool = False
) -> Importance:
    """|gamma| of each unit's BatchNorm (mean over a group's layers); else the L1 norm."""
    model = unwrap(model)
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


@register(
    "oracle", description="loss increase of removing one unit", needs_data=True, in_defaults=False
)
def oracle_importance(
    model: nn.Module,
    loader: DataLoader,
    *,
    batches: int | None = None,
    chunk: int = 16,
    device: str | torch.device = "auto",
    coupled: bool = False,
) -> Importance:
    """Loss increase when one unit alone is removed, on ``loader``'s data (validation data,
    never the test split); ``chunk`` copies of a batch per pass, each without one unit."""
    model = unwrap(model)
    gated = attach_gates(model, coupled=coupled)
    gated.set_mode("identity")
    try:
        with evaluating(gated, device) as device, torch.no_grad():
            data = [(x.to(device), y.to(device)) for x, y in itertools.islice(loader, batches)]
            total = sum(len(labels) for _, labels in data)
            base = sum(F.cross_entropy(model(x), y, reduction="sum").item() for x, y in data)
            bar = progress(total=sum(g.num_units for _, g in gated.named_gates()), desc="oracle")
            scores = {
                name: (_removal_losses(model, gate, data, chunk, bar) - base) / total
                for name, gate in gated.named_gates()
            }
            bar.close()
    finally:
        gated.remove()
    return Importance(scores, criterion="oracle", config={"images": total})


def _removal_losses(
    model: nn.Module, gate: DirichletGate, data: list, chunk: int, bar: Any
) -> torch.Tensor:
    """The summed cross-entropy of ``data`` with each of the gate's units removed in turn."""
    losses = torch.zeros(gate.num_units)
    for start in range(0, gate.num_units, chunk):
        removed = torch.arange(start, min(start + chunk, gate.num_units))
        masks = torch.ones(len(removed), gate.num_units, device=data[0][0].device)
        masks[torch.arange(len(removed)), removed] = 0.0
        gate.set_mode("fixed", masks)
        for images, labels in data:
            stacked, targets = stacked_copies(images, labels, len(removed))
            each = F.cross_entropy(model(stacked), targets, reduction="none")
            losses[removed] += each.view(len(removed), -1).sum(1).cpu()
        bar.update(len(removed))
    gate.set_mode("identity")
    return losses


def _torch_pruning(name: str, description: str, **flags: Any) -> None:
    """Register Torch-Pruning's group criterion ``name`` (see :mod:`dplib.torch_pruning`)."""

    def criterion(
        model: nn.Module,
        loader: DataLoader | None = None,
        *,
        batches: int = 10,
        device: str | torch.device = "auto",
        coupled: bool = False,
        input_shape: tuple[int, ...] | None = None,
    ) -> Importance:
        options = {"batches": batches, "input_shape": input_shape, "coupled": coupled}
        return tp_importance(model, name, loader, **options, device=device)

    criterion.__qualname__ = f"torch_pruning_{name}"
    criterion.__doc__ = description
    flags = {"description": description, "requires": "torch_pruning", "peer": True, **flags}
    register(name, **flags)(criterion)


# tp_l1 is Torch-Pruning's version of l1: selectable by name, left out of the defaults.
_torch_pruning("tp_l1", "Torch-Pruning's group L1 magnitude", in_defaults=False)
_torch_pruning("tp_l2", "Torch-Pruning's group L2 magnitude (its default)")
_torch_pruning("tp_taylor", "Torch-Pruning's group Taylor", needs_data=True)
