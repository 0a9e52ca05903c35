"""Find a network's prunable layers and the layers that consume their units.

The model is traced once with ``torch.fx``. From every ``Conv2d`` and ``Linear`` the trace is
followed forward through operations that keep units apart (BatchNorm, activations, pooling,
dropout, flatten / view): the ``Conv2d`` / ``Linear`` layers reached there are its consumers,
whose matching inputs the surgery removes. A layer is prunable when all its paths end in
consumers. The classifier (its output reaches the network's output) never is, and neither is a
layer whose output meets an operation that mixes or ties units (a residual addition, a
concatenation): those are reported with the reason, not silently pruned.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn import functional as F

_PASSTHROUGH_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.Flatten,
)
_PASSTHROUGH_FUNCTIONS = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.dropout,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    torch.relu,
    torch.tanh,
    torch.sigmoid,
    torch.flatten,
}
_PASSTHROUGH_METHODS = {"relu", "tanh", "sigmoid", "view", "reshape", "flatten", "contiguous"}
_SHAPE_QUERIES = {"size", "dim"}


class UnsupportedModelError(ValueError):
    """The model's structure is outside what gates and surgery can handle."""


@dataclass
class PrunableLayer:
    """One prunable layer and everything its units touch.

    Attributes:
        name: module name of the Conv2d / Linear in the model (``conv1``, ``features.3``).
        kind: ``"conv"`` or ``"linear"``.
        units: K, its number of output units.
        batchnorms: BatchNorm modules that normalise these units (pruned with them).
        consumers: Conv2d / Linear modules that read these units as inputs.
    """

    name: str
    kind: str
    units: int
    batchnorms: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)

    def gate_target(self, position: str = "after_bn") -> str:
        """Module whose output the gate multiplies: the BatchNorm right after, or the layer."""
        if position == "after_bn" and self.batchnorms:
            return self.batchnorms[0]
        return self.name


@dataclass
class LayerGraph:
    """The result of :func:`find_prunable_layers`."""

    layers: list[PrunableLayer]
    skipped: dict[str, str]

    @property
    def names(self) -> list[str]:
        """Names of the prunable layers in the order the network runs them."""
        return [layer.name for layer in self.layers]

    def __getitem__(self, name: str) -> PrunableLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{name!r} is not a prunable layer; prunable layers: {self.names}")


def _units(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _follow(node: fx.Node, modules: dict[str, nn.Module], units: int):
    """Walk forward from node; return (batchnorms, consumers, reason-not-prunable or None)."""
    batchnorms: list[str] = []
    consumers: list[str] = []
    stack = list(node.users)
    seen: set[fx.Node] = set()
    while stack:
        user = stack.pop()
        if user in seen:
            continue
        seen.add(user)
        if user.op == "output":
            return batchnorms, consumers, "its output reaches the network's output (classifier)"
        if user.op == "call_module":
            module = modules[user.target]
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                if isinstance(module, nn.Conv2d) and module.groups != 1:
                    return batchnorms, consumers, f"consumer {user.target} is a grouped conv"
                consumers.append(user.target)
                continue
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if module.num_features != units:
                    return batchnorms, consumers, f"{user.target} does not match its units"
                batchnorms.append(user.target)
            elif not isinstance(module, _PASSTHROUGH_MODULES):
                kind = type(module).__name__
                return batchnorms, consumers, f"its output enters {user.target} ({kind})"
        elif user.op == "call_function":
            if user.target is operator.getitem or user.target not in _PASSTHROUGH_FUNCTIONS:
                name = getattr(user.target, "__name__", str(user.target))
                return batchnorms, consumers, f"its output enters the operation {name}"
        elif user.op == "call_method":
            if user.target in _SHAPE_QUERIES:
                continue
            if user.target not in _PASSTHROUGH_METHODS:
                return batchnorms, consumers, f"its output enters the method .{user.target}()"
        stack.extend(user.users)
    if not consumers:
        return batchnorms, consumers, "no Conv2d or Linear consumes its output"
    return batchnorms, consumers, None


def find_prunable_layers(model: nn.Module) -> LayerGraph:
    """Trace ``model`` and return its prunable layers, in execution order.

    Raises:
        UnsupportedModelError: the model cannot be traced by ``torch.fx`` (data-dependent
            control flow in ``forward``) or has no prunable layer.
    """
    try:
        traced = fx.symbolic_trace(model)
    except Exception as error:  # fx raises many types; all mean the same thing here
        raise UnsupportedModelError(
            f"dplib could not trace {type(model).__name__} with torch.fx ({error}). Gates and "
            "surgery need a forward() without data-dependent Python control flow."
        ) from error
    modules = dict(traced.named_modules())
    calls: dict[str, int] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    layers: list[PrunableLayer] = []
    skipped: dict[str, str] = {}
    for node in traced.graph.nodes:
        if node.op != "call_module":
            continue
        module = modules[node.target]
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if calls[node.target] > 1:
            skipped[node.target] = "the module is called more than once (shared weights)"
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            skipped[node.target] = "grouped convolutions are not supported"
            continue
        units = _units(module)
        batchnorms, consumers, reason = _follow(node, modules, units)
        if reason is None:
            reason = _check_consumers(module, consumers, modules)
        if reason is not None:
            skipped[node.target] = reason
            continue
        kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
        layers.append(PrunableLayer(node.target, kind, units, batchnorms, consumers))
    if not layers:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no prunable layer (a Conv2d or Linear whose output "
            f"feeds another Conv2d or Linear). Layers found and why they were skipped: {skipped}"
        )
    return LayerGraph(layers, skipped)


def _check_consumers(producer: nn.Module, consumers: list[str], modules) -> str | None:
    units = _units(producer)
    for name in consumers:
        consumer = modules[name]
        inputs = consumer.in_channels if isinstance(consumer, nn.Conv2d) else consumer.in_features
        if inputs % units:
            return f"consumer {name} has {inputs} inputs, not a multiple of {units} units"
        if isinstance(consumer, nn.Conv2d) and inputs != units:
            return f"consumer {name} has {inputs} input channels for {units} units"
    return None


def flatten_factor(producer: nn.Module, consumer: nn.Module) -> int:
    """Inputs of ``consumer`` owned by each unit of ``producer`` (H*W after a flatten, else 1)."""
    inputs = consumer.in_channels if isinstance(consumer, nn.Conv2d) else consumer.in_features
    return inputs // _units(producer)
