"""Shared fixtures: small seeded models and data that never download."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import dplib

# torch 2.14.1's oneDNN convolution backward corrupts memory on CPUs without AVX-512 (seen on an
# AMD EPYC with AVX2 only): a 1x1 stride-2 convolution with a few channels (a ResNet shortcut at
# the smoke profile's width) hangs or aborts with "double free" in backward, at random; torch's
# own convolution is correct there. The tests take that path on such CPUs (slower, not wrong).
_CPU_FLAGS = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else "avx512f"
if "avx512f" not in _CPU_FLAGS:
    torch.backends.mkldnn.enabled = False


BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench_module(name: str) -> ModuleType:
    """The script bench/<name>.py as a module (its sibling scripts importable while it loads)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_bench", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


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
