"""The networks of the kit, built by name.

==============  =========================================================  ===========  =========
name            layers                                                     widths of    params
==============  =========================================================  ===========  =========
``lenet300``    fc 784-300, fc 300-100, fc 100-10 (ReLU)                   fc1-fc2      266,610
``lenet5``      Caffe LeNet-5: conv 20@5x5, pool, conv 50@5x5, pool,       conv1-conv2  431,080
                fc 800-500, fc 500-10 (ReLU after each hidden layer)       -fc1
``lenet5_bn``   the Dirichlet-pruning authors' LeNet-5: conv 10@5x5-BN,    conv1-conv2   40,225
                pool, conv 20@5x5-BN, pool, fc 320-100, fc 100-25, 25-10   -fc1-fc2
==============  =========================================================  ===========  =========

"Widths" lists the prunable layers in the order a widths string such as ``"5-8-45-15"`` gives
their kept units. Every model takes 1x28x28 images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class LeNet300(nn.Module):
    """LeNet-300-100: a 784-300-100-10 multilayer perceptron."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * image_size * image_size, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe LeNet-5 (20-50-500), ReLU after every hidden layer, max pooling after the convs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        side = ((image_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.fc2 = nn.Linear(500, num_classes)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        return self.fc2(x)


class LeNet5BN(nn.Module):
    """The authors' smaller LeNet-5 (10-20-100-25) with BatchNorm after each convolution."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 10, 5)
        self.bn1 = nn.BatchNorm2d(10)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.bn2 = nn.BatchNorm2d(20)
        side = ((image_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(20 * side * side, 100)
        self.fc2 = nn.Linear(100, 25)
        self.fc3 = nn.Linear(25, num_classes)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


@dataclass(frozen=True)
class ModelSpec:
    """How to build a preset and what it expects."""

    builder: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    description: str


MODELS: dict[str, ModelSpec] = {
    "lenet300": ModelSpec(LeNet300, (1, 28, 28), "LeNet-300-100 MLP (784-300-100-10)"),
    "lenet5": ModelSpec(LeNet5, (1, 28, 28), "Caffe LeNet-5 (20-50-500-10), 431,080 params"),
    "lenet5_bn": ModelSpec(
        LeNet5BN, (1, 28, 28), "authors' LeNet-5 with BatchNorm (10-20-100-25-10)"
    ),
}


def check_model_name(name: str) -> ModelSpec:
    """Return the preset ``name`` or raise a ValueError listing the presets."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(MODELS)}")
    return MODELS[name]


def build(name: str, num_classes: int = 10, *, widths=None, seed: int | None = None) -> nn.Module:
    """Build the preset network ``name``.

    Args:
        name: one of :data:`MODELS` (``lenet300``, ``lenet5``, ``lenet5_bn``).
        num_classes: outputs of the classifier.
        widths: build the architecture of a pruned network of these widths instead (weights
            are fresh); used to load pruned checkpoints.
        seed: seed of the weight initialisation (None leaves the global generator alone).
    """
    spec = check_model_name(name)
    if seed is not None:
        torch.manual_seed(seed)
    model = spec.builder(num_classes=num_classes)
    if widths is not None:
        from .importance import Importance
        from .surgery import prune, widths_of

        full = widths_of(model)
        order = Importance(
            scores={
                layer: -torch.arange(units, dtype=torch.float) for layer, units in full.items()
            },
            criterion="first",
        )
        model = prune(model, order, widths)
    return model


def input_shape(name: str) -> tuple[int, int, int]:
    """The (channels, height, width) of one input image of preset ``name``."""
    return check_model_name(name).input_shape
