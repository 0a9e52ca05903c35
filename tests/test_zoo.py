"""Networks people bring (torchvision, random weights, 64x64 inputs): depthwise and grouped
convolutions, squeeze-and-excitation, stochastic depth, concatenations, Linear layers on
channels-last maps and on tokens, pruned to 2x fewer MACs."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

import dplib

from conftest import bench_module

pytestmark = pytest.mark.slow  # 30 s of torchvision's networks: left to `make test` (and CI)

SHAPE = (1, 3, 64, 64)


def _loader() -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, *SHAPE[1:], generator=generator)
    labels = torch.randint(0, 10, (16,), generator=generator)
    dataset = torch.utils.data.TensorDataset(images, labels)
    return dplib.data.make_loader(dataset, 8, shuffle=True, seed=0)


def _masked_output(model: torch.nn.Module, importance, widths, images) -> torch.Tensor:
    """The unpruned network with the removed units switched off by its gates."""
    gated = dplib.attach_gates(model)
    masks = dplib.unit_mask(importance, widths, model)
    for name, gate in gated.named_gates():
        gate.set_mode("fixed", masks[name])
    try:
        with torch.no_grad():
            return gated(images)
    finally:
        gated.remove()


def _zoo() -> ModuleType:
    """torchvision's networks, imported when a test runs (not when `make quick` collects)."""
    import torchvision

    return torchvision.models


def _build(name: str) -> torch.nn.Module:
    """A torchvision network with random weights, or a small ViT (its MLPs act on tokens)."""
    torch.manual_seed(0)
    if name == "small_vit":
        vit = (
            _zoo()
            .VisionTransformer(
                image_size=64,
                patch_size=16,
                num_layers=2,
                num_heads=2,
                hidden_dim=32,
                mlp_dim=256,
                num_classes=10,
            )
            .eval()
        )
        torch.nn.init.normal_(vit.heads.head.weight, std=0.1)  # torchvision starts it at zero
        return vit
    model = getattr(_zoo(), name)(num_classes=10).eval()
    for key, parameter in model.named_parameters():  # ConvNeXt starts at 1e-6: as if trained
        if key.endswith("layer_scale"):
            parameter.data.fill_(1.0)
    return model


@pytest.mark.parametrize(
    "name",
    [
        "mobilenet_v2",  # depthwise convolutions in inverted residuals
        "mobilenet_v3_small",  # depthwise, squeeze-and-excitation, hardswish
        "efficientnet_b0",  # depthwise, squeeze-and-excitation, SiLU, stochastic depth
        "densenet121",  # concatenations
        "regnet_y_400mf",  # grouped convolutions (pruned evenly by group), squeeze-and-excitation
        "convnext_tiny",  # Linear layers on channels-last maps, LayerNorm, permutes
        "small_vit",  # a transformer: the MLPs' Linear layers on tokens, heads left whole
    ],
)
def test_dirichlet_importance_prunes_to_half_the_macs_as_masked(name):
    model = _build(name)
    gated = dplib.attach_gates(model)
    importance = dplib.learn_importance(gated, _loader(), epochs=1, seed=0)
    gated.remove()
    widths = dplib.choose_widths(model, importance, "2x", input_shape=SHAPE)
    small = dplib.prune(model, importance, widths)
    full, pruned = dplib.count(model, SHAPE).macs, dplib.count(small, SHAPE).macs
    assert 0.98 * full / 2 <= pruned <= full / 2
    images = torch.randn(4, *SHAPE[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        output, unpruned = small(images), model(images)
    expected = _masked_output(model, importance, widths, images)
    scale = expected.abs().max()
    assert torch.allclose(output, expected, rtol=1e-4, atol=1e-5 * scale)
    assert not torch.allclose(unpruned, expected, rtol=1e-4, atol=1e-5 * scale)  # units went


def test_depthwise_and_squeeze_excitation_layers_are_pruned_with_their_channels():
    model = _zoo().mobilenet_v3_small(num_classes=10).eval()
    graph = dplib.find_prunable_layers(model)
    expansion = graph["features.4.block.0.0"]  # 1x1 expansion, then depthwise, then SE
    assert expansion.depthwise == ["features.4.block.1.0"]
    assert expansion.scales == ["features.4.block.2.fc2"]  # the SE's scale: pruned, not gated
    assert "features.4.block.2.fc1" in expansion.consumers
    assert "features.4.block.2.fc2" not in expansion.gate_targets()
    assert "features.4.block.2.fc1" in graph.names  # the SE's squeeze units prune too


def test_a_grouped_convolution_keeps_as_many_channels_in_every_group():
    model = _zoo().resnext50_32x4d(num_classes=10).eval()
    layer = dplib.find_prunable_layers(model)["layer1.0.conv1"]  # feeds conv2, 32 groups
    assert layer.groups == 32
    importance = dplib.criteria.compute("l1", model)
    with pytest.raises(dplib.WidthsError, match="multiple of 32"):
        dplib.prune(model, importance, {"layer1.0.conv1": 40})
    small = dplib.prune(model, importance, {"layer1.0.conv1": 64, "layer1.0.conv2": 96})
    conv2 = small.layer1[0].conv2
    assert (conv2.in_channels, conv2.out_channels, conv2.groups) == (64, 96, 32)
    kept = dplib.unit_mask(importance, {"layer1.0.conv1": 64}, model)["layer1.0.conv1"]
    assert (kept.view(32, 4).sum(1) == 2).all()  # two of each group's four channels


def test_the_zoo_bench_writes_a_row_for_each_way(tmp_path):
    zoo = bench_module("zoo")
    row = zoo.run("mobilenet_v3_small")
    assert row["l1"]["ratio"] >= 2 and row["l1"]["relative_error"] < 1e-4
    assert row["dirichlet"]["ratio"] >= 2 and row["dirichlet"]["relative_error"] < 1e-4
    assert "ratio" in row["torch_pruning"] or "error" in row["torch_pruning"]
    table = zoo.markdown([row])
    assert "| mobilenet_v3_small | 2.0" in table and "of 1: L1 1, Dirichlet 1" in table
