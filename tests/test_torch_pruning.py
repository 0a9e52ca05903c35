"""dplib.torch_pruning: Torch-Pruning's DependencyGraph agrees with dplib's surgery."""

from __future__ import annotations

import sys

import pytest
import torch

import dplib
from dplib import torch_pruning as dtp

from conftest import trained_like

pytest.importorskip("torch_pruning")


def _half(importance: dplib.Importance) -> dict[str, int]:
    return {name: max(1, k // 2 - 1) for name, k in importance.units.items()}


@pytest.mark.parametrize(
    "name, coupled",
    [("lenet300", False), ("lenet5", False), ("lenet5_bn", False), ("resnet20", True)],
)
def test_dependency_graph_prunes_the_same_units_as_dplib(name, coupled):
    model = trained_like(dplib.models.build(name, seed=0))
    importance = dplib.criteria.random_importance(model, seed=3, coupled=coupled)
    widths = _half(importance)
    ours = dplib.prune(model, importance, widths).eval()
    theirs = dtp.prune_like_dplib(model, importance, widths).eval()
    shape = dplib.budget.input_shape_for(model)
    assert dplib.count(theirs, shape) == dplib.count(ours, shape)
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    images = torch.randn(4, *shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(theirs(images), ours(images))
    # the original is untouched
    assert dplib.count(model, shape) == dplib.count(dplib.models.build(name), shape)


def test_magnitude_scores_are_group_means_over_the_layers_a_unit_touches():
    model = dplib.models.build("lenet300", seed=0)
    importance = dtp.tp_importance(model, "tp_l1")
    assert importance.criterion == "tp_l1" and importance.names == ["fc1", "fc2"]
    # a unit of fc1: its output row of fc1 and its input column of fc2, averaged over the two
    expected = (model.fc1.weight.abs().sum(1) + model.fc2.weight.abs().sum(0)) / 2
    torch.testing.assert_close(importance.scores["fc1"], expected.detach())
    l2 = dtp.tp_importance(model, "tp_magnitude")
    expected = (model.fc1.weight.pow(2).sum(1) + model.fc2.weight.pow(2).sum(0)) / 2
    torch.testing.assert_close(l2.scores["fc1"], expected.detach())


def test_taylor_scores_cover_every_layer_and_leave_no_gradients(tiny_loader):
    model = trained_like(dplib.models.build("lenet5_bn", seed=0))
    importance = dtp.tp_importance(model, "tp_taylor", tiny_loader, batches=2)
    assert importance.units == dplib.widths_of(model)
    assert all((score >= 0).all() and score.sum() > 0 for score in importance.scores.values())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="loader"):
        dtp.tp_importance(model, "tp_taylor")
    with pytest.raises(ValueError, match="choose one of"):
        dtp.tp_importance(model, "tp_l3")


@pytest.mark.slow  # Torch-Pruning's global pruning, about 1 s a network: `make test`
@pytest.mark.parametrize("name", ["lenet5", "lenet5_bn"])
def test_global_pruning_meets_a_mac_budget_and_reports_dplib_widths(name):
    model = dplib.models.build(name, seed=0).eval()
    shape = dplib.budget.input_shape_for(model)
    full_macs = dplib.count(model, shape).macs
    pruned, widths = dtp.tp_global_prune(model, "4x", steps=100)
    full = dplib.widths_of(model)
    assert list(widths) == list(full)
    assert all(1 <= widths[n] <= k for n, k in full.items())
    assert widths != full and widths == dplib.widths_of(pruned)
    assert 0.9 * full_macs / 4 <= dplib.count(pruned, shape).macs <= full_macs / 4
    # uneven: global pruning does not keep the same fraction of every layer
    fractions = {round(widths[n] / k, 2) for n, k in full.items()}
    assert len(fractions) > 1
    rebuilt = dplib.models.build(name, widths=widths)
    assert dplib.count(pruned, shape) == dplib.count(rebuilt, shape)
    assert dplib.widths_of(model) == full  # the original is untouched


@pytest.mark.slow  # about 1 s: left to `make test`
def test_global_taylor_pruning_reads_gradients_of_the_data():
    model = dplib.models.build("lenet5", seed=0).eval()
    images = torch.randn(64, 1, 28, 28)
    loader = [(images, torch.randint(0, 10, (64,)))]
    _, magnitude = dtp.tp_global_prune(model, "4x", steps=50)
    pruned, taylor = dtp.tp_global_prune(model, "4x", "tp_taylor", loader, batches=1, steps=50)
    assert taylor != magnitude
    assert all(p.grad is None for p in pruned.parameters())
    with pytest.raises(ValueError, match="loader"):
        dtp.tp_global_prune(model, "4x", "tp_taylor")


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(ImportError, match="pip install"):
        dtp.require_torch_pruning()
