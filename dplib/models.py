"""The networks of the kit, built by name.

==============  =========================================================  ===========  =========
name            layers                                                     widths of    params
==============  =========================================================  ===========  =========
``lenet300``    fc 784-300, fc 300-100, fc 100-10 (ReLU)                   fc1-fc2      266,610
``lenet5``      Caffe LeNet-5: conv 20@5x5, pool, conv 50@5x5, pool,       conv1-conv2  431,080
                fc 800-500, fc 500-10 (ReLU after each hidden layer)       -fc1
``lenet5_bn``   the Dirichlet-pruning authors' LeNet-5: conv 10@5x5-BN,    conv1-conv2   40,225
                pool, conv 20@5x5-BN, pool, fc 320-100, fc 100-25, 25-10   -fc1-fc2
``vgg16``       13 conv3x3-BN-ReLU, 5 max-pools, fc 512-512 (BN), 512-10   14 layers    14,991,946
``resnet20``    CIFAR ResNet: 3x3 stem, 3 stages of 3 basic blocks         inner: 9     272,474
                (16-32-64 channels), 1x1-conv shortcuts
``resnet56``    the same with 9 blocks per stage                           inner: 27    855,770
``wrn28_10``    WideResNet-28-10, pre-activation, dropout 0.3              inner: 13    36,479,194
==============  =========================================================  ===========  =========

"Widths of": the prunable layers, in the order of a widths string such as ``"5-8-45-15"`` (for
the residual networks: each block's inner channels; with ``coupled=True`` also the residual
streams). The LeNets take 1x28x28 images, the CIFAR networks 3x32x32 (params: 10 classes).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from .importance import Importance
from .surgery import prune, widths_of


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


VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M") + (512, 512, 512, "M") * 2


def _scaled(channels: int, width_multiplier: float) -> int:
    return max(1, round(channels * width_multiplier))


class VGG16(nn.Module):
    """VGG-16 for CIFAR: 13 conv3x3-BN-ReLU layers, 5 max-pools, fc 512-512 (BN, ReLU), 512-10;
    ``width_multiplier`` scales every width (for quick CPU runs)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        width_multiplier: float = 1.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            width = _scaled(item, width_multiplier)
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width)]
            layers.append(nn.ReLU(inplace=True))
            channels = width
        self.features = nn.Sequential(*layers)
        side = image_size // 32
        hidden = _scaled(512, width_multiplier)
        self.classifier = nn.Sequential(
            nn.Linear(channels * side * side, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU. Where the
    width or resolution changes the shortcut is a 1x1 conv with BatchNorm (He et al.'s option B),
    so every residual addition ties layers that surgery can prune together."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _stages(
    block: Callable[..., nn.Module], channels: int, widths: list[int], blocks: int
) -> tuple[list[nn.Sequential], int]:
    """One stage of ``blocks`` blocks per width, each stage after the first starting with a
    stride of 2; the stages and their output channels."""
    stages = []
    for index, width in enumerate(widths):
        stage = []
        for number in range(blocks):
            stride = 2 if index > 0 and number == 0 else 1
            stage.append(block(channels, width, stride))
            channels = width
        stages.append(nn.Sequential(*stage))
    return stages, channels


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016), depth 6 * blocks + 2: a 3x3 stem and 3 stages of
    ``blocks`` basic blocks, 16, 32, 64 channels (times ``width_multiplier``)."""

    def __init__(
        self,
        blocks: int,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        width_multiplier: float = 1.0,
    ):
        super().__init__()
        widths = [_scaled(w, width_multiplier) for w in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, channels = _stages(BasicBlock, widths[0], widths, blocks)
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class WideBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3, plus the shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(self.dropout(torch.relu(self.bn2(out))))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WideResNet-depth-k (Zagoruyko & Komodakis 2016), pre-activation, with dropout;
    ``wrn28_10``: depth 28 (4 blocks per stage), widen factor 10: stages of 160, 320, 640."""

    def __init__(
        self,
        depth: int = 28,
        widen: int = 10,
        dropout: float = 0.3,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        width_multiplier: float = 1.0,
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        widths = [_scaled(w * widen, width_multiplier) for w in (16, 32, 64)]
        stem = _scaled(16, width_multiplier)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        block = partial(WideBlock, dropout=dropout)
        stages, channels = _stages(block, stem, widths, blocks)
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = torch.relu(self.bn(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class ModelSpec(NamedTuple):
    """How to build a preset and what it expects."""

    builder: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]


LENET_INPUT, CIFAR_INPUT = (1, 28, 28), (3, 32, 32)
MODELS: dict[str, ModelSpec] = {
    "lenet300": ModelSpec(LeNet300, LENET_INPUT),
    "lenet5": ModelSpec(LeNet5, LENET_INPUT),
    "lenet5_bn": ModelSpec(LeNet5BN, LENET_INPUT),
    "vgg16": ModelSpec(VGG16, CIFAR_INPUT),
    "resnet20": ModelSpec(partial(CifarResNet, 3), CIFAR_INPUT),
    "resnet56": ModelSpec(partial(CifarResNet, 9), CIFAR_INPUT),
    "wrn28_10": ModelSpec(WideResNet, CIFAR_INPUT),
}


def check_model_name(name: str) -> ModelSpec:
    """Return the preset ``name`` or raise a ValueError listing the presets."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(MODELS)}")
    return MODELS[name]


def build(
    name: str,
    num_classes: int = 10,
    *,
    widths=None,
    seed: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
    width_multiplier: float | None = None,
) -> nn.Module:
    """Build the preset network ``name`` (one of :data:`MODELS`).

    Args:
        widths: build a pruned network of these widths instead (fresh weights; for loading).
        seed: seed of the weight initialisation (None leaves the global generator alone).
        in_channels, image_size: the input, when not the preset's (e.g. 1, 32: Fashion-MNIST).
        width_multiplier: scales every width of the CIFAR networks (e.g. 0.25 for CPU runs).
    """
    spec = check_model_name(name)
    if seed is not None:
        torch.manual_seed(seed)
    if width_multiplier is not None and spec.input_shape[1] == 28:
        raise ValueError(f"width_multiplier applies to the CIFAR networks, not {name!r}")
    if width_multiplier is not None and width_multiplier <= 0:
        raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
    given = dict(in_channels=in_channels, image_size=image_size, width_multiplier=width_multiplier)
    options = {"num_classes": num_classes} | {k: v for k, v in given.items() if v is not None}
    model = spec.builder(**options)
    if widths is not None:
        model = prune(model, Importance.in_order(widths_of(model, coupled=True)), widths)
    # what dplib.save_pruned records so that dplib.load_pruned rebuilds this network alone
    model.dplib_preset = {"name": name, **options}
    return model


def input_shape(name: str) -> tuple[int, int, int]:
    """The (channels, height, width) of one input image of preset ``name``."""
    return check_model_name(name).input_shape


def input_shape_of(model: nn.Module) -> tuple[int, int, int] | None:
    """(channels, height, width) of one input image of a network built by :func:`build` (from
    the preset it records); None for others."""
    network = getattr(model, "model", model)  # a GatedModel holds the network
    preset = getattr(network, "dplib_preset", None)
    if preset is None:
        return None
    channels, height, _ = input_shape(preset["name"])
    size = preset.get("image_size", height)
    return (preset.get("in_channels", channels), size, size)
