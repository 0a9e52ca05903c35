"""Find a network's prunable layers and everything their units touch.

The model is traced once with ``torch.fx`` and every tensor gets a *channel space*: a ``Conv2d``
/ ``Linear`` output opens a new one; operations that keep units apart (BatchNorm, activations,
pooling, dropout, flatten / view, scaling by a number, a depthwise convolution) pass it on; an
addition ties its operands' spaces into one (a residual connection), and so does a product of
two maps (``x * scale(x)``: squeeze-and-excitation), whose newer operand, the scale, is pruned
with ``x`` but not gated. A space lists its *producers* (the layers whose output units it holds),
*BatchNorms* and *consumers* (the layers that read the units; a Linear after a flatten reads
height*width inputs per channel).

A space is prunable when it has consumers and nothing fixes its units: not the network's input
or output (the classifier), not an operation that mixes units (a concatenation, a reduction over
channels, an unknown module). One producer: a plain prunable layer; several, tied by residual
additions: a *coupled group*, gated and pruned as one set with ``coupled=True``. Layers left out
are reported with the reason, never pruned silently.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn import functional as F

# operations that keep units apart (unit k of the output comes from unit k of the input)
_PASSTHROUGH_MODULES = tuple(
    getattr(nn, name)
    for name in (
        "ReLU ReLU6 LeakyReLU ELU GELU SiLU Tanh Sigmoid Hardtanh Hardswish Hardsigmoid Mish "
        "MaxPool1d MaxPool2d AvgPool2d AdaptiveAvgPool2d AdaptiveMaxPool2d Dropout Dropout2d "
        "Identity Flatten"
    ).split()
)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_PASSTHROUGH_FUNCTIONS = {
    *(getattr(torch, name) for name in ("relu", "tanh", "sigmoid", "flatten")),
    *(
        getattr(F, name)
        for name in (
            "relu relu6 leaky_relu elu gelu silu dropout max_pool2d avg_pool2d "
            "adaptive_avg_pool2d adaptive_max_pool2d hardswish hardsigmoid"
        ).split()
    ),
}
_PASSTHROUGH_METHODS = {"relu", "tanh", "sigmoid", "view", "reshape", "flatten", "contiguous"}
_ADDITIONS = {operator.add, operator.iadd, torch.add}
_PASSTHROUGH_NAMES = {"stochastic_depth"}  # torchvision's: drops whole samples, not channels
_SCALINGS = {operator.mul, operator.truediv, torch.mul}
_SHAPE_QUERIES = {"size", "dim"}


class UnsupportedModelError(ValueError):
    """The model's structure is outside what gates and surgery can handle."""


@dataclass
class PrunableLayer:
    """A set of units pruned together: one layer's outputs, or a residual-coupled group (its
    producers, BatchNorms and consumers: the module docstring)."""

    name: str  # the name in importances and widths: the (first) producer's module name
    kind: str  # "conv", "linear", or "group" for a residual-coupled group
    units: int  # K
    producers: list[str] = field(default_factory=list)
    batchnorms: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    direct_batchnorms: dict[str, str] = field(default_factory=dict)  # producer -> BN right after
    depthwise: list[str] = field(default_factory=list)  # depthwise convolutions on these units
    biased: list[str] = field(default_factory=list)  # those of them with a bias
    scales: list[str] = field(default_factory=list)  # producers of a product's scale (not gated)
    axis: int = 1  # the axis of the output holding the units: -1 for a Linear (tokens too)
    groups: int = 1  # equal groups its units are pruned in (a grouped convolution's channels)

    @property
    def coupled(self) -> bool:
        """True for a group of layers tied by residual additions."""
        return self.kind == "group"

    def gate_targets(self, position: str = "after_bn") -> list[str]:
        """Modules whose outputs the gate multiplies: each producer's (its BatchNorm's with
        ``position="after_bn"``), and every other BatchNorm's on these units (a BatchNorm maps a
        zeroed unit to a non-zero value; pre-activation blocks read a residual sum through one).
        A group's layers share one gate: as they are summed, that equals gating the sum."""
        gated = [p for p in self.producers if p not in self.scales]
        if position == "after_bn":
            targets = [self.direct_batchnorms.get(p, p) for p in gated]
        else:
            targets = gated
        direct = set(self.direct_batchnorms.values())
        return targets + [bn for bn in self.batchnorms if bn not in direct] + self.biased

    def gate_target(self, position: str = "after_bn") -> str:
        """The module the gate of a single layer multiplies (the first one for a group)."""
        return self.gate_targets(position)[0]


@dataclass
class LayerGraph:
    """The result of :func:`find_prunable_layers`."""

    layers: list[PrunableLayer]
    skipped: dict[str, str]

    @property
    def names(self) -> list[str]:
        """Names of the prunable layers in the order the network runs them."""
        return [layer.name for layer in self.layers]

    @property
    def units(self) -> dict[str, int]:
        """``{name: K}`` of the prunable layers, in order."""
        return {layer.name: layer.units for layer in self.layers}

    @property
    def groups(self) -> dict[str, int]:
        """``{name: groups}``: the equal groups each layer's units are pruned in."""
        return {layer.name: layer.groups for layer in self.layers}

    def __getitem__(self, name: str) -> PrunableLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{name!r} is not a prunable layer; prunable layers: {self.names}")


class _Spaces:
    """Union-find over channel spaces, with what each space holds."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed: dict[int, str] = {}
        self.added = set()
        self.scales: set[int] = set()  # spaces joined by a product as its scale operand

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def union(self, a: int, b: int) -> int:
        """Tie two spaces by an addition (a residual group)."""
        root = self.join(a, b, "a residual addition")
        self.added.add(root)
        return root

    def join(self, a: int, b: int, how: str = "a product of two maps") -> int:
        """Tie two spaces (``how``): their units are pruned together."""
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            if (a in self.fixed) != (b in self.fixed):
                reason = self.fixed.get(a) or self.fixed.get(b)
                self.fixed[a] = f"{how} ties it to channels that cannot change ({reason})"
        if b in self.added:
            self.added.add(a)
        return a

    def fix(self, space: int, reason: str) -> None:
        self.fixed.setdefault(self.find(space), reason)


def find_prunable_layers(model: nn.Module, *, coupled: bool = False) -> LayerGraph:
    """Trace ``model`` and return its prunable layers (and groups), in execution order.

    Args:
        coupled: also return the residual-coupled groups (by default listed in ``skipped``).

    Raises UnsupportedModelError when ``torch.fx`` cannot trace the model (data-dependent control
    flow in ``forward``) or it has no prunable layer.
    """
    try:
        traced = fx.symbolic_trace(model)
    except Exception as error:  # fx raises many types; all mean the same thing here
        raise UnsupportedModelError(
            f"dplib could not trace {type(model).__name__} with torch.fx ({error}). Gates and "
            "surgery need a forward() without data-dependent Python control flow."
        ) from error
    walk = _Walk(dict(traced.named_modules()))
    for index, node in enumerate(traced.graph.nodes):
        walk.order[node] = index
        _visit(walk, node, [n for n in node.all_input_nodes if n in walk.space_of])
    return _collect(model, walk, coupled)


def on_residual_paths(graph: LayerGraph) -> dict[str, bool]:
    """For each layer and group of ``graph`` (found with ``coupled=True``): whether a residual
    addition joins it (a coupled group) or bypasses it (its units reach, through plain prunable
    layers, a sum with a skip connection), so that narrowing it is not a bottleneck for
    everything after it."""
    tied = {p for layer in graph.layers if layer.coupled for p in layer.producers}
    by_producer = {p: layer for layer in graph.layers for p in layer.producers}

    def bypassed(layer: PrunableLayer, seen: set[str]) -> bool:
        for consumer in layer.consumers:
            after = by_producer.get(consumer)
            if consumer in tied or (
                after is not None
                and after.name not in seen
                and bypassed(after, seen | {after.name})
            ):
                return True
        return False

    return {layer.name: layer.coupled or bypassed(layer, {layer.name}) for layer in graph.layers}


@dataclass
class _Walk:
    """What one pass over the traced graph records: channel spaces and the modules on them."""

    modules: dict[str, nn.Module]
    spaces: _Spaces = field(default_factory=_Spaces)
    space_of: dict[fx.Node, int] = field(default_factory=dict)  # tensor -> its channel space
    producers: dict[str, fx.Node] = field(default_factory=dict)  # Conv2d / Linear -> its node
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (module, space it reads)
    batchnorms: list[tuple[str, int]] = field(default_factory=list)  # (module, its space)
    depthwise: list[tuple[str, int]] = field(default_factory=list)  # (module, its space)
    grouped: list[tuple[int, int]] = field(default_factory=list)  # (groups, space) of grouped convs
    calls: dict[str, int] = field(default_factory=dict)  # module -> times the trace calls it
    order: dict[fx.Node, int] = field(default_factory=dict)  # node -> position in the trace


def _visit(walk: _Walk, node: fx.Node, inputs: list[fx.Node]) -> None:
    """Give ``node``'s output a channel space; ``inputs`` are its tensor inputs already seen."""
    if node.op == "placeholder":
        walk.space_of[node] = walk.spaces.new()
        walk.spaces.fix(walk.space_of[node], "its channels are the network's input")
    elif node.op == "output":
        for parent in inputs:
            walk.spaces.fix(
                walk.space_of[parent], "its output reaches the network's output (classifier)"
            )
    elif node.op == "call_module":
        _visit_module(walk, node, inputs)
    elif node.op in ("call_function", "call_method") and inputs:
        _visit_call(walk, node, inputs)
    # get_attr reads a parameter or buffer: no channel space of its own


def _visit_module(walk: _Walk, node: fx.Node, inputs: list[fx.Node]) -> None:
    """A module call: a Conv2d / Linear opens a space (a depthwise one, one filter per channel,
    passes its input's on, pruned with it), BatchNorm and passthroughs keep it."""
    module = walk.modules[node.target]
    walk.calls[node.target] = walk.calls.get(node.target, 0) + 1
    space = walk.space_of[inputs[0]] if inputs else None
    if isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels:
        walk.space_of[node] = space
        walk.depthwise.append((node.target, space))
    elif isinstance(module, (nn.Conv2d, nn.Linear)):
        walk.consumers += [(node.target, walk.space_of[parent]) for parent in inputs]
        walk.space_of[node] = walk.spaces.new()
        walk.producers[node.target] = node
        if isinstance(module, nn.Conv2d) and module.groups != 1:  # pruned evenly in every group
            for space in [walk.space_of[node], *(walk.space_of[parent] for parent in inputs)]:
                walk.grouped.append((module.groups, space))
    elif isinstance(module, (*_BATCHNORMS, *_PASSTHROUGH_MODULES)):
        if isinstance(module, _BATCHNORMS):
            walk.batchnorms.append((node.target, space))
        walk.space_of[node] = space
    else:
        _opaque(walk, node, inputs, f"{node.target} ({type(module).__name__})")


def _visit_call(walk: _Walk, node: fx.Node, inputs: list[fx.Node]) -> None:
    """A function or method call: passthroughs and scalings keep the space, additions and
    products of two maps tie two spaces, shape queries are ignored."""
    target, spaces = node.target, [walk.space_of[parent] for parent in inputs]
    if node.op == "call_method":
        ignored, passthrough = target in _SHAPE_QUERIES, target in _PASSTHROUGH_METHODS
        what = f"the method .{target}()"
    else:
        name = getattr(target, "__name__", str(target))
        ignored = target is getattr
        passthrough = target in _PASSTHROUGH_FUNCTIONS or name in _PASSTHROUGH_NAMES
        what = f"the operation {name}"
    if ignored:
        return
    if passthrough or (target in _SCALINGS and len(inputs) == 1):
        walk.space_of[node] = spaces[0]
    elif target in _SCALINGS and len(inputs) == 2:  # x * scale(x): the newer space is the scale
        first, second = sorted(spaces)
        walk.spaces.scales.add(second)
        walk.space_of[node] = walk.spaces.join(first, second)
    elif target in _ADDITIONS and len(inputs) == 2:
        walk.space_of[node] = walk.spaces.union(*spaces)
    else:
        _opaque(walk, node, inputs, what)


def _opaque(walk: _Walk, node: fx.Node, inputs: list[fx.Node], what: str) -> None:
    """An operation that may mix units: its inputs' and its output's spaces are fixed."""
    for parent in inputs:
        walk.spaces.fix(walk.space_of[parent], f"its output enters {what}")
    walk.space_of[node] = walk.spaces.new()
    walk.spaces.fix(walk.space_of[node], f"it comes out of {what}")


def _units(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _inputs(module: nn.Module) -> int:
    return module.in_channels if isinstance(module, nn.Conv2d) else module.in_features


def _collect(model: nn.Module, walk: _Walk, coupled: bool) -> LayerGraph:
    """The prunable layers (and groups) of the walked graph, and why the others are skipped."""
    layers, skipped = [], {}
    for root, members in _members_by_space(walk).items():
        names = sorted(members["producers"], key=lambda n: walk.order[walk.producers[n]])
        if not names:
            continue
        is_group = walk.spaces.find(root) in walk.spaces.added  # tied by a residual addition
        reason = _skip_reason(walk, root, members, is_group, coupled)
        if reason is not None:
            skipped.update(dict.fromkeys(names, reason))
            continue
        layers.append(_prunable_layer(walk, members, names, is_group))
    layers.sort(key=lambda layer: walk.order[walk.producers[layer.name]])
    if not layers:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no prunable layer (a Conv2d or Linear whose output "
            f"feeds another Conv2d or Linear). Layers found and why they were skipped: {skipped}"
        )
    return LayerGraph(layers, skipped)


def _members_by_space(walk: _Walk) -> dict[int, dict[str, list]]:
    """The producers, BatchNorms, consumers, depthwise convolutions and groups (of grouped
    convolutions) of each channel space, keyed by its root space."""
    members: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    producers = [(name, walk.space_of[node]) for name, node in walk.producers.items()]
    for key, entries in [
        ("producers", producers),
        ("batchnorms", walk.batchnorms),
        ("consumers", walk.consumers),
        ("depthwise", walk.depthwise),
        ("groups", walk.grouped),
    ]:
        for entry, space in entries:
            members[walk.spaces.find(space)][key].append(entry)
    for name, space in producers:
        if walk.calls[name] > 1:  # pruning one call's units would prune the other calls' too
            walk.spaces.fix(space, "the module is called more than once (shared weights)")
    return members


def _skip_reason(
    walk: _Walk, root: int, members: dict[str, list[str]], is_group: bool, coupled: bool
) -> str | None:
    """Why the space at ``root`` cannot be pruned (the first reason found), or None."""
    fixed = walk.spaces.fixed.get(walk.spaces.find(root))
    if fixed is not None:
        return fixed
    units = {_units(walk.modules[n]) for n in members["producers"]}
    if len(units) != 1:
        return "the layers tied by its residual addition differ in width"
    if not members["consumers"]:
        return "no Conv2d or Linear consumes its output"
    (width,) = units
    for name in members["consumers"]:
        inputs = _inputs(walk.modules[name])
        if inputs % width:
            return f"consumer {name} has {inputs} inputs, not a multiple of {width} units"
        if isinstance(walk.modules[name], nn.Conv2d) and inputs != width:
            return f"consumer {name} has {inputs} input channels for {width} units"
    if is_group and not coupled:
        return (
            "its channels are tied to other layers by a residual addition; "
            "coupled=True gates and prunes them as one group"
        )
    return None


def _prunable_layer(
    walk: _Walk, members: dict[str, list[str]], names: list[str], is_group: bool
) -> PrunableLayer:
    """The layer (or group) whose producers are ``names``, in execution order."""
    first = walk.modules[names[0]]
    kind = "group" if is_group else ("conv" if isinstance(first, nn.Conv2d) else "linear")
    return PrunableLayer(
        name=names[0],
        kind=kind,
        units=_units(first),
        producers=names,
        batchnorms=list(dict.fromkeys(members["batchnorms"])),
        consumers=list(dict.fromkeys(members["consumers"])),
        direct_batchnorms=_direct_batchnorms(walk, names),
        depthwise=members["depthwise"],
        biased=[name for name in members["depthwise"] if walk.modules[name].bias is not None],
        scales=[
            name for name in names if walk.space_of[walk.producers[name]] in walk.spaces.scales
        ],
        axis=-1 if isinstance(first, nn.Linear) else 1,
        groups=math.lcm(*members["groups"]) if members["groups"] else 1,
    )


def _direct_batchnorms(walk: _Walk, names: list[str]) -> dict[str, str]:
    """``{producer: BatchNorm}`` for each producer whose only user is a BatchNorm."""
    direct = {}
    for name in names:
        users = list(walk.producers[name].users)
        if len(users) == 1 and users[0].op == "call_module":
            follower = walk.modules[users[0].target]
            if isinstance(follower, _BATCHNORMS):
                direct[name] = users[0].target
    return direct


def flatten_factor(producer: nn.Module, consumer: nn.Module) -> int:
    """Inputs of ``consumer`` owned by each unit of ``producer`` (height*width after a flatten,
    else 1)."""
    return _inputs(consumer) // _units(producer)
