"""Shared fixtures: small seeded models and data that never download."""

from __future__ import annotations

import pytest
import torch

import dplib


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["lenet300", "lenet5", "lenet5_bn"])
def model_name(request) -> str:
    return request.param


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Give BatchNorm layers non-trivial statistics, as after training."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture
def tiny_loader():
    """256 random 1x28x28 images with labels, as a dplib loader."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(256, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (256,), generator=generator)
    dataset = torch.utils.data.TensorDataset(images, labels)
    return dplib.data.make_loader(dataset, 64, shuffle=True, seed=0)
