"""The CIFAR-scale networks: counts, residual-coupled groups, pruned equals masked."""

import pytest
import torch

import dplib

from conftest import trained_like


def masked(model, importance, widths, x, coupled):
    gated = dplib.attach_gates(model, coupled=coupled)
    masks = dplib.unit_mask(importance, widths)
    for name, gate in gated.named_gates():
        if name in masks:
            gate.set_mode("fixed", masks[name])
        else:
            gate.set_mode("identity")
    with torch.no_grad():
        out = gated(x)
    gated.remove()
    return out


def trained_like_all(model):
    """Non-trivial BatchNorm statistics everywhere (BatchNorm1d included)."""
    trained_like(model)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            with torch.no_grad():
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


CASES = [
    ("vgg16", {"width_multiplier": 0.25}),
    ("resnet20", {}),
    ("resnet56", {"width_multiplier": 0.5}),
    ("wrn28_10", {"width_multiplier": 0.1}),
]


@pytest.mark.parametrize(("name", "options"), CASES)
@pytest.mark.parametrize("coupled", [False, True])
def test_pruned_equals_masked(name, options, coupled):
    model = trained_like_all(dplib.models.build(name, seed=0, **options))
    importance = dplib.criteria.random_importance(model, seed=1, coupled=coupled)
    widths = importance.widths(0.4)
    x = torch.randn(2, 3, 32, 32)
    small = dplib.prune(model, importance, widths).eval()
    with torch.no_grad():
        pruned = small(x)
    torch.testing.assert_close(
        pruned, masked(model, importance, widths, x, coupled), rtol=1e-4, atol=1e-4
    )
    # the pruned network holds no zero channels: every kept unit is really there
    assert dplib.widths_of(small, coupled=coupled) == widths
    params, _ = dplib.count(small, (1, 3, 32, 32))
    assert params == sum(p.numel() for p in small.parameters())
    assert params < dplib.count(model, (1, 3, 32, 32)).params


def test_residual_groups_are_found():
    model = dplib.models.build("resnet20")
    inner = dplib.find_prunable_layers(model)
    assert len(inner.layers) == 9 and all(not layer.coupled for layer in inner.layers)
    groups = [
        layer for layer in dplib.find_prunable_layers(model, coupled=True).layers if layer.coupled
    ]
    assert [group.units for group in groups] == [16, 32, 64]
    stage2 = groups[1]
    assert "layer2.0.shortcut.0" in stage2.producers  # the shortcut's convolution
    assert set(stage2.producers) >= {f"layer2.{i}.conv2" for i in range(3)}
    assert "layer3.0.shortcut.0" in stage2.consumers and "fc" not in stage2.consumers
    assert "fc" in groups[2].consumers


@pytest.mark.parametrize(
    ("name", "params", "macs"),
    [
        ("vgg16", 14_991_946, 313_463_808),
        ("resnet20", 272_474, 40_813_184),
        ("resnet56", 855_770, 125_747_840),
        ("wrn28_10", 36_479_194, 5_243_328_768),
    ],
)
def test_cifar_model_counts(name, params, macs):
    model = dplib.models.build(name)
    assert dplib.count(model, (1, 3, 32, 32)) == (params, macs)
    assert params == sum(p.numel() for p in model.parameters())


def test_reference_vgg16_widths():
    model = dplib.models.build("vgg16")
    small = dplib.models.build("vgg16", widths="39-39-63-48-55-88-87-52-62-22-42-47-47-47")
    assert dplib.count(small, (1, 3, 32, 32)) == (333_169, 37_941_027)
    assert len(dplib.find_prunable_layers(model).layers) == 14


def test_grayscale_32px_resnet():
    model = dplib.models.build("resnet20", in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="width_multiplier applies to the CIFAR networks"):
        dplib.models.build("lenet5", width_multiplier=0.5)
