import pytest
import torch
from torch import nn

import dplib

from conftest import trained_like

EXPECTED_LAYERS = {
    "lenet300": ["fc1", "fc2"],
    "lenet5": ["conv1", "conv2", "fc1"],
    "lenet5_bn": ["conv1", "conv2", "fc1", "fc2"],
}


def test_prunable_layers_in_order(model_name):
    model = dplib.models.build(model_name)
    gated = dplib.attach_gates(model)
    assert gated.layers == EXPECTED_LAYERS[model_name]
    assert "classifier" in next(iter(gated.graph.skipped.values()))


def test_gates_at_uniform_phi_leave_predictions_unchanged(model_name):
    model = trained_like(dplib.models.build(model_name, seed=1))
    x = torch.randn(8, 1, 28, 28)
    before = model(x)
    gated = dplib.attach_gates(model, phi_init=3.0, scale="K")
    torch.testing.assert_close(gated(x), before, rtol=1e-5, atol=1e-5)
    restored = gated.remove()
    assert restored is model
    torch.testing.assert_close(model(x), before)


def test_gate_sits_after_batchnorm_or_before_it():
    model = trained_like(dplib.models.build("lenet5_bn"))
    gated = dplib.attach_gates(model, position="after_bn")
    assert gated.graph["conv1"].gate_target("after_bn") == "bn1"
    x = torch.randn(4, 1, 28, 28)
    for position, target in (("after_bn", "bn1"), ("before_bn", "conv1")):
        gated = dplib.attach_gates(model, position=position)
        seen = {}
        handle = dict(model.named_modules())[target].register_forward_hook(
            lambda module, inputs, output: seen.setdefault("out", output)
        )
        mask = torch.zeros(10)
        mask[0] = 1.0
        gated.gate("conv1").set_mode("fixed", mask)
        gated(x)
        handle.remove()
        gated.remove()
        # The hook registered after the gate's sees the gated output: only unit 0 is non-zero.
        assert seen["out"][:, 1:].abs().sum() == 0
        assert seen["out"][:, 0].abs().sum() > 0


def test_gradients_reach_theta_and_no_weight():
    model = dplib.models.build("lenet5")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    gated = dplib.attach_gates(model)
    for _, gate in gated.named_gates():
        gate.resample(1)
    gated(torch.randn(2, 1, 28, 28)).sum().backward()
    for name, gate in gated.named_gates():
        assert gate.theta.grad is not None and gate.theta.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.parameters())


def test_models_with_residual_additions_skip_the_tied_layers():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Conv2d(4, 6, 3, padding=1)
            self.outer = nn.Conv2d(6, 4, 3, padding=1)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            y = self.outer(torch.relu(self.inner(x))) + x
            return self.head(y.mean((2, 3)))

    gated = dplib.attach_gates(Residual())
    assert gated.layers == ["inner"]
    assert "residual addition" in gated.graph.skipped["outer"]


def test_attach_gates_errors():
    with pytest.raises(dplib.UnsupportedModelError, match="no prunable layer"):
        dplib.attach_gates(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    gated = dplib.attach_gates(dplib.models.build("lenet300"))
    with pytest.raises(ValueError, match="already has gates"):
        dplib.attach_gates(gated)
    with pytest.raises(ValueError, match="position"):
        dplib.attach_gates(dplib.models.build("lenet300"), position="middle")


def test_a_network_with_its_gates_attached_is_refused_by_name():
    model = dplib.models.build("lenet5", seed=0).eval()
    importance = dplib.criteria.compute("l1", model)
    gated = dplib.attach_gates(model)
    calls = {
        "dplib.prune": lambda: dplib.prune(model, importance, "5-10-76"),
        "dplib.choose_widths": lambda: dplib.choose_widths(model, importance, "4x"),
        "dplib.count": lambda: dplib.count(gated, (1, 1, 28, 28)),
    }
    for what, call in calls.items():
        with pytest.raises(ValueError, match=rf"{what} .* call \.remove\(\)"):
            call()
    gated.remove()  # then every call works on the network itself
    small = dplib.prune(model, importance, "5-10-76")
    assert dplib.count(small, (1, 1, 28, 28)).params == 14_396
    assert dplib.choose_widths(model, importance, "4x")
