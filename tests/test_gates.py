import pytest
import torch
from torch.distributions import Dirichlet, kl_divergence

import dplib
from dplib.gates import DirichletGate, inverse_softplus


@pytest.mark.parametrize("units", [2, 5, 50, 500])
@pytest.mark.parametrize("alpha0", [0.01, 0.1, 0.5, 1.0, 3.0])
def test_closed_form_kl_equals_torch(units, alpha0):
    generator = torch.Generator().manual_seed(units)
    phi = torch.rand(units, generator=generator, dtype=torch.float64) * 20 + 0.05
    ours = dplib.dirichlet_kl(phi, alpha0)
    reference = kl_divergence(Dirichlet(phi), Dirichlet(torch.full_like(phi, alpha0)))
    assert torch.allclose(ours, reference, rtol=1e-10, atol=1e-10)
    gate = DirichletGate(units, phi_init=3.0).double()
    with torch.no_grad():
        gate.theta.copy_(torch.log(torch.expm1(phi - gate.eps)))
    torch.testing.assert_close(gate.kl(alpha0), reference, rtol=1e-8, atol=1e-8)


def test_kl_is_zero_at_the_prior():
    gate = DirichletGate(7, phi_init=0.5).double()
    assert abs(gate.kl(0.5).item()) < 1e-6


def test_mean_and_std_match_torch_distribution():
    gate = DirichletGate(6, phi_init=2.0)
    with torch.no_grad():
        gate.theta.copy_(torch.linspace(-1, 3, 6))
    distribution = gate.distribution()
    torch.testing.assert_close(gate.mean(), distribution.mean)
    torch.testing.assert_close(gate.std(), distribution.variance.sqrt())


def test_samples_are_on_the_simplex_and_carry_gradients():
    gate = DirichletGate(10, phi_init=1.0)
    samples = gate.sample(4)
    assert samples.shape == (4, 10)
    torch.testing.assert_close(samples.sum(1), torch.ones(4))
    (samples[:, 0] * torch.arange(4.0)).sum().backward()
    assert gate.theta.grad is not None and gate.theta.grad.abs().sum() > 0


def test_uniform_gate_with_scale_k_is_identity_and_none_shrinks_by_k():
    h = torch.randn(3, 8, 5, 5)
    gate = DirichletGate(8, phi_init=4.0, scale="K")
    gate.set_mode("mean")
    torch.testing.assert_close(gate(h), h)
    shrinking = DirichletGate(8, phi_init=4.0, scale="none")
    shrinking.set_mode("mean")
    torch.testing.assert_close(shrinking(h), h / 8)


def test_each_stacked_block_gets_its_own_sample():
    gate = DirichletGate(3)
    factor = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]])
    gate.set_mode("fixed", factor)
    h = torch.ones(4, 3)  # two blocks of two images
    expected = torch.tensor([[1.0, 0, 2], [1, 0, 2], [0, 3, 1], [0, 3, 1]])
    torch.testing.assert_close(gate(h), expected)


def test_gate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        DirichletGate(3, scale="k2")
    with pytest.raises(ValueError, match="at least one unit"):
        DirichletGate(0)
    with pytest.raises(ValueError, match="mode"):
        DirichletGate(3).set_mode("noisy")
    with pytest.raises(ValueError, match="positive"):
        dplib.dirichlet_kl(torch.ones(3), 0.0)


def test_inverse_softplus_roundtrip_large_values():
    for value in (1e-3, 1.0, 100.0, 1000.0):
        x = torch.tensor(inverse_softplus(value), dtype=torch.float64)
        assert abs(torch.nn.functional.softplus(x).item() - value) < 1e-6 * max(1, value)


class _ChannelsLastMlp(torch.nn.Module):
    """A ConvNeXt-like block: a Linear pair on the last axis of a permuted feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3)
        self.fc1, self.fc2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)
        x = self.fc2(torch.relu(self.fc1(x))).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def test_a_linear_on_channels_last_maps_is_gated_on_its_last_axis(tiny_loader):
    model = _ChannelsLastMlp().eval()
    gated = dplib.attach_gates(model)
    assert gated.layers == ["fc1"] and gated.gate("fc1").axis == -1
    importance = dplib.learn_importance(gated, tiny_loader, epochs=0.25)
    gated.remove()
    small = dplib.prune(model, importance, {"fc1": 6})
    masks = dplib.unit_mask(importance, {"fc1": 6})
    gated = dplib.attach_gates(model)
    gated.gate("fc1").set_mode("fixed", masks["fc1"])
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(small(images), gated(images), atol=1e-6)
    gated.remove()
    taylor = dplib.criteria.compute("taylor", model, tiny_loader, batches=1)
    assert taylor.scores["fc1"].shape == (16,)


def test_a_gate_that_meets_the_wrong_shape_names_the_layer_and_shapes():
    gate = DirichletGate(16)
    gate.layer = "fc1"
    gate.set_mode("mean")
    with pytest.raises(dplib.GateShapeError, match=r"layer 'fc1' \(16 units, on axis 1") as found:
        gate(torch.zeros(2, 26, 26, 16))
    assert "(2, 26, 26, 16)" in str(found.value) and "data set" not in str(found.value)
