import math
import time
import warnings

import pytest
import torch

import dplib


@pytest.mark.parametrize(
    ("name", "params", "macs"),
    [
        ("lenet300", 266_610, 266_200),
        ("lenet5", 431_080, 2_293_000),
        ("lenet5_bn", 40_225, 498_750),
    ],
)
def test_parameter_and_mac_counts(name, params, macs):
    model = dplib.models.build(name)
    assert dplib.count(model, (1, *dplib.models.input_shape(name))) == (params, macs)
    # MACs of a batch scale with the batch
    assert dplib.count(model, (4, 1, 28, 28)).macs == 4 * macs


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'lenet7'; available models: lenet300"):
        dplib.models.build("lenet7")


def test_same_seed_same_weights():
    a = dplib.models.build("lenet5", seed=3)
    b = dplib.models.build("lenet5", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


class Sleeper(torch.nn.Module):
    """A network whose forward passes take the given times (seconds), one after another."""

    def __init__(self, *seconds: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seconds, self.calls = seconds, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds[self.calls % len(self.seconds)])
        self.calls += 1
        return x


@pytest.mark.slow  # it times real forward passes, about 1 s: left to `make test`
def test_latency_is_the_median_and_speedup_the_ratio_of_latencies():
    # one untimed warm-up pass (0.2 s, as a first call can be), then five timed ones
    uneven = Sleeper(0.2, 0.03, 0.01, 0.02, 0.09, 0.02)
    assert dplib.latency(uneven, (2, 3), repeats=5, warmup=1) == pytest.approx(0.02, rel=0.25)
    assert uneven.calls == 6
    ratio = dplib.speedup(Sleeper(0.02), Sleeper(0.005), (2, 3), repeats=3, rounds=3)
    assert 3.0 < ratio < 4.4  # 4, less the sleeps' overshoot


def test_rank_correlations():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert dplib.measure.spearman(a, a) == pytest.approx(1.0)
    assert dplib.measure.spearman(a, -a) == pytest.approx(-1.0)
    assert dplib.measure.kendall(a, a.flip(0)) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="differ in length"):
        dplib.measure.spearman(a, a[:2])


def test_rank_correlations_of_one_unit_are_nan_without_a_warning():
    one = torch.tensor([0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warns on too small samples
        assert math.isnan(dplib.measure.kendall(one, one))
        assert math.isnan(dplib.measure.spearman(one, one))


def test_for_inference_folds_batchnorm_and_keeps_outputs():
    from conftest import trained_like

    model = trained_like(dplib.models.build("lenet5_bn", seed=0))
    deployed = dplib.measure.for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # untouched


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last", "auto"])
def test_latency_memory_formats_leave_the_model_as_it_was(memory_format):
    model = dplib.models.build("lenet5")
    assert (
        dplib.latency(model, (2, 1, 28, 28), repeats=2, warmup=1, memory_format=memory_format) > 0
    )
    assert model.conv1.weight.is_contiguous()
    with pytest.raises(ValueError, match="memory_format"):
        dplib.latency(model, memory_format="nhwc")


class _Branchy(torch.nn.Module):
    """A network torch.fx cannot trace: its control flow depends on the data."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.norm = torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        return y if y.sum() > 0 else -y


def test_for_inference_warns_when_it_cannot_fold_and_returns_a_working_copy():
    model = _Branchy().eval()
    with pytest.warns(UserWarning, match="BatchNorm not folded.*_Branchy.*unfolded"):
        deployed = dplib.measure.for_inference(model)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x))


def test_count_keeps_the_original_error_as_the_cause():
    with pytest.raises(
        ValueError, match=r"LeNet5 failed on an input of shape \(1, 3, 28, 28\)"
    ) as info:
        dplib.count(dplib.models.build("lenet5"), (1, 3, 28, 28))
    assert isinstance(info.value.__cause__, RuntimeError)
