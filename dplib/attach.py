"""Attach Dirichlet gates to a network without editing its class.

``attach_gates(model)`` finds the prunable layers (:mod:`dplib.graph`), creates one
:class:`~dplib.gates.DirichletGate` per layer and registers a forward hook that multiplies the
output of the layer (or of the BatchNorm right after it) by the gate. The model's own modules
and weights are untouched: :meth:`GatedModel.remove` takes the hooks away and returns the very
same model object.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .gates import DirichletGate
from .graph import LayerGraph, find_prunable_layers
from .settings import DirichletSettings, with_knobs


def _gate_key(name: str) -> str:
    # nn.ModuleDict keys may not contain dots.
    return name.replace(".", "__")


class GatedModel(nn.Module):
    """A network with one Dirichlet gate per prunable layer.

    ``gated(x)`` runs the wrapped model; the hooks apply the gates. ``gated.model`` is the
    original model (the same object), ``gated.layers`` the prunable layers in execution order.
    While the gates are attached, calling ``gated.model`` directly also runs them.
    """

    def __init__(
        self, model: nn.Module, graph: LayerGraph, gates: dict[str, DirichletGate], position: str
    ) -> None:
        super().__init__()
        self.model = model
        self.graph = graph
        self.position = position
        self.gates = nn.ModuleDict({_gate_key(name): gate for name, gate in gates.items()})
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        modules = dict(model.named_modules())
        for layer in graph.layers:
            for target in layer.gate_targets(position):
                hook = _make_hook(gates[layer.name])
                self._handles.append(modules[target].register_forward_hook(hook))

    @property
    def layers(self) -> list[str]:
        """Names of the gated layers, in the order the network runs them (the widths order)."""
        return self.graph.names

    def gate(self, name: str) -> DirichletGate:
        """The gate of layer ``name``."""
        if name not in self.layers:
            raise KeyError(f"no gate for {name!r}; gated layers: {self.layers}")
        return self.gates[_gate_key(name)]

    def named_gates(self) -> Iterator[tuple[str, DirichletGate]]:
        """(layer name, gate) pairs in layer order."""
        for name in self.layers:
            yield name, self.gates[_gate_key(name)]

    def set_mode(self, mode: str) -> None:
        """Put every gate in ``mode`` ('identity', 'mean' or 'sample')."""
        for _, gate in self.named_gates():
            gate.set_mode(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the model with its gates."""
        return self.model(x)

    def remove(self) -> nn.Module:
        """Remove the hooks and return the original model, unchanged."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return self.model


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a :class:`GatedModel`, or ``model`` itself."""
    return model.model if isinstance(model, GatedModel) else model


def _make_hook(gate: DirichletGate):
    def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return gate(output)

    return hook


def attach_gates(
    model: nn.Module,
    settings: DirichletSettings | None = None,
    *,
    coupled: bool = False,
    **knobs: Any,
) -> GatedModel:
    """Place a Dirichlet gate after every prunable layer of ``model``.

    Args:
        model: any ``torch.fx``-traceable network; it is not copied or modified.
        settings: the gate's knobs come from here (:class:`dplib.DirichletSettings`; default
            phi_init 100, scale "K", after BatchNorm); single ``knobs`` given as keywords
            override them: ``phi_init`` (every unit's initial concentration; the method as
            first specified uses 1), ``scale`` (``"K"``: the gate multiplies by K*s, the
            identity at the start; ``"none"``: by s, as the reference code), ``position``
            (``"after_bn"``: the BatchNorm's output where a layer has one; ``"before_bn"``).
        coupled: also gate the groups of layers tied by residual additions (one gate per group,
            multiplying every tied layer's output); by default only layers whose units are free
            (for residual networks: the inner channels of each block).

    Returns:
        A :class:`GatedModel` whose gates multiply by their posterior mean (``"mean"`` mode).
        With ``scale="K"`` that is the identity at the start: the predictions equal the
        model's.
    """
    if isinstance(model, GatedModel):
        raise ValueError("this model already has gates; call .remove() first")
    settings = with_knobs(settings, DirichletSettings, knobs)
    graph = find_prunable_layers(model, coupled=coupled)
    parameter = next(model.parameters(), None)
    gates = {}
    for layer in graph.layers:
        gate = DirichletGate(layer.units, phi_init=settings.phi_init, scale=settings.scale)
        if parameter is not None:
            gate.to(device=parameter.device, dtype=parameter.dtype)
        gate.set_mode("mean")
        gates[layer.name] = gate
    return GatedModel(model, graph, gates, settings.position)


def detach_gates(gated: GatedModel) -> nn.Module:
    """Remove the gates of ``gated`` and return the original model."""
    return gated.remove()
