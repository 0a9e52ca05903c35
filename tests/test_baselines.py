import pytest
import torch

import dplib

from conftest import trained_like


def test_l1_is_the_norm_of_each_output_row():
    model = dplib.models.build("lenet5", seed=0)
    importance = dplib.criteria.l1_importance(model)
    torch.testing.assert_close(importance.scores["conv2"][7], model.conv2.weight[7].abs().sum())
    assert importance.criterion == "l1"


def test_bn_scale_uses_gamma_and_falls_back_to_l1():
    model = trained_like(dplib.models.build("lenet5_bn"))
    importance = dplib.criteria.bn_scale_importance(model)
    torch.testing.assert_close(importance.scores["conv1"], model.bn1.weight.abs())
    assert importance.config["fallback"] == {"fc1": "l1", "fc2": "l1"}
    with pytest.raises(ValueError, match="needs BatchNorm"):
        dplib.criteria.bn_scale_importance(dplib.models.build("lenet5"))


def test_random_is_seeded():
    model = dplib.models.build("lenet300")
    a = dplib.criteria.random_importance(model, seed=1)
    b = dplib.criteria.random_importance(model, seed=1)
    c = dplib.criteria.random_importance(model, seed=2)
    assert torch.equal(a.scores["fc1"], b.scores["fc1"])
    assert not torch.equal(a.scores["fc1"], c.scores["fc1"])


def test_taylor_matches_a_direct_computation(tiny_loader):
    model = trained_like(dplib.models.build("lenet300", seed=0))
    loader = dplib.data.make_loader(tiny_loader.dataset, 64, shuffle=False)
    importance = dplib.criteria.taylor_importance(model, loader, batches=1, device="cpu")
    assert all(p.grad is None for p in model.parameters())
    images, labels = next(iter(loader))
    hidden = model.fc1(images.flatten(1))
    hidden.retain_grad()
    out = model.fc3(torch.relu(model.fc2(torch.relu(hidden))))
    torch.nn.functional.cross_entropy(out, labels, reduction="sum").backward()
    torch.testing.assert_close(importance.scores["fc1"], (hidden * hidden.grad).abs().sum(0))


def test_oracle_is_the_loss_increase_of_removing_one_unit(tiny_loader):
    model = trained_like(dplib.models.build("lenet300", seed=0))
    fixed = torch.utils.data.TensorDataset(*tiny_loader.dataset.tensors)
    loader = dplib.data.make_loader(fixed, 64, shuffle=False)
    importance = dplib.criteria.oracle_importance(model, loader, chunk=7, device="cpu")
    x, y = fixed.tensors
    with torch.no_grad():
        base = torch.nn.functional.cross_entropy(model(x), y)
        weight = model.fc2.weight.clone()
        model.fc2.weight[:, 5] = 0  # removing fc1's unit 5 = zeroing its column in fc2
        removed = torch.nn.functional.cross_entropy(model(x), y)
        model.fc2.weight.copy_(weight)
    torch.testing.assert_close(importance.scores["fc1"][5], removed - base, rtol=1e-4, atol=1e-6)
    assert importance.names == ["fc1", "fc2"]


def test_criteria_by_name(tiny_loader):
    model = dplib.models.build("lenet300")
    assert dplib.criteria.compute("l1", model).criterion == "l1"
    with pytest.raises(ValueError, match="unknown criterion 'l2'"):
        dplib.criteria.compute("l2", model)
    with pytest.raises(ValueError, match="needs a data loader"):
        dplib.criteria.compute("taylor", model)
