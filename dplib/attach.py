"""Attach Dirichlet gates to a network without editing its class.

One :class:`~dplib.gates.DirichletGate` per prunable layer (:mod:`dplib.graph`), applied by a
forward hook on the layer (or the BatchNorm right after it). The model's modules and weights are
untouched: :meth:`GatedModel.remove` takes the hooks away and returns the same model object.
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
    """A network with one Dirichlet gate per prunable layer; ``gated.model`` is the original
    model (the same object), which runs the gates too while they are attached."""

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
            gate = gates[layer.name]
            for target in layer.gate_targets(position):  # a hook's result replaces the output
                hook = modules[target].register_forward_hook(_gate_hook(gate))
                self._handles.append(hook)

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


def _gate_hook(gate: DirichletGate) -> Any:
    """The forward hook that applies ``gate`` (its result replaces the layer's output), marked so
    that :func:`check_ungated` can find it."""

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return gate(output)

    hook.dplib_gate = True
    return hook


def check_ungated(model: nn.Module, what: str) -> None:
    """A ValueError when Dirichlet gates still hook into ``model``: ``what`` would measure or
    copy the gated network, not the network."""
    if any(
        getattr(hook, "dplib_gate", False)
        for module in model.modules()
        for hook in module._forward_hooks.values()
    ):
        raise ValueError(
            f"{what} was given a network whose Dirichlet gates are still attached: call "
            ".remove() on the GatedModel from dplib.attach_gates first (it returns the "
            "network, unchanged)"
        )


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a :class:`GatedModel`, or ``model`` itself."""
    return model.model if isinstance(model, GatedModel) else model


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
        settings: the gate's knobs ``phi_init``, ``scale`` and ``position``
            (:class:`dplib.DirichletSettings`); single ``knobs`` given as keywords override them.
        coupled: also gate the groups of layers tied by residual additions (one gate per group);
            by default only free layers (for residual networks: each block's inner channels).

    Returns a :class:`GatedModel` in ``"mean"`` mode (with ``scale="K"``: the model's outputs).
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
        gate.layer, gate.axis = layer.name, layer.axis
        gates[layer.name] = gate
    return GatedModel(model, graph, gates, settings.position)
