import pytest
import torch

import dplib

from conftest import trained_like


def masked_outputs(model, importance, widths, x):
    gated = dplib.attach_gates(model)
    for name, mask in dplib.unit_mask(importance, widths).items():
        gated.gate(name).set_mode("fixed", mask)
    with torch.no_grad():
        out = gated(x)
    gated.remove()
    return out


WIDTHS = {"lenet300": "37-11", "lenet5": "5-10-16", "lenet5_bn": "5-8-45-15"}


@pytest.mark.parametrize("criterion", ["random", "l1"])
def test_prune_equals_masking(model_name, criterion):
    model = trained_like(dplib.models.build(model_name, seed=2))
    importance = dplib.criteria.compute(
        criterion, model, **({"seed": 4} if criterion == "random" else {})
    )
    x = torch.randn(16, 1, 28, 28)
    small = dplib.prune(model, importance, WIDTHS[model_name]).eval()
    with torch.no_grad():
        pruned = small(x)
    torch.testing.assert_close(
        pruned, masked_outputs(model, importance, WIDTHS[model_name], x), rtol=1e-4, atol=1e-5
    )
    assert dplib.widths_of(small) == dict(
        zip(importance.names, map(int, WIDTHS[model_name].split("-")))
    )
    # the original is untouched
    assert dplib.widths_of(model) == importance.units


def test_prune_keeps_the_top_units():
    model = trained_like(dplib.models.build("lenet5"))
    scores = {name: torch.zeros(k) for name, k in dplib.widths_of(model).items()}
    scores["conv1"][[3, 17]] = 1.0
    small = dplib.prune(model, dplib.Importance(scores, "hand"), {"conv1": 2})
    torch.testing.assert_close(small.conv1.weight, model.conv1.weight[[3, 17]])
    torch.testing.assert_close(small.conv2.weight, model.conv2.weight[:, [3, 17]])


def test_flatten_consumer_keeps_each_channels_block():
    model = dplib.models.build("lenet5")
    scores = {
        name: -torch.arange(k, dtype=torch.float) for name, k in dplib.widths_of(model).items()
    }
    scores["conv2"] = torch.zeros(50)
    scores["conv2"][[1, 4]] = 1.0
    small = dplib.prune(model, dplib.Importance(scores, "hand"), {"conv2": 2})
    columns = list(range(16, 32)) + list(range(64, 80))
    torch.testing.assert_close(small.fc1.weight, model.fc1.weight[:, columns])


def test_count_of_lenet5_pruned_to_5_10_16():
    model = dplib.models.build("lenet5")
    assert dplib.count(model, (1, 1, 28, 28)) == (431_080, 2_293_000)
    small = dplib.prune(model, dplib.criteria.l1_importance(model), "5-10-16")
    params, macs = dplib.count(small, input_shape=(1, 1, 28, 28))
    assert (params, macs) == (4_136, 154_720)
    assert params == sum(p.numel() for p in small.parameters())


def test_widths_notations_agree():
    model = dplib.models.build("lenet5_bn")
    importance = dplib.criteria.l1_importance(model)
    as_dict = {"conv1": 5, "conv2": 8, "fc1": 45, "fc2": 15}
    counts = {
        dplib.count(dplib.prune(model, importance, widths))
        for widths in ("5-8-45-15", [5, 8, 45, 15], (5, 8, 45, 15), as_dict)
    }
    assert counts == {(7_819, 142_585)}
    assert importance.widths(0.5) == {"conv1": 5, "conv2": 10, "fc1": 50, "fc2": 12}


@pytest.mark.parametrize(
    ("widths", "message"),
    [
        ("5-0-16", "width 0 for layer 'conv2' is impossible"),
        ("5-10-600", "width 600 for layer 'fc1' is impossible: it has 500 units"),
        ("5-10", "2 widths given for 3 prunable layers"),
        ([5, 10, 16, 4], "4 widths given for 3 prunable layers"),
        ("5-ten-16", "not numbers joined by '-'"),
        ({"conv3": 4}, "no prunable layer named \\['conv3'\\]"),
        ({"conv1": 2.5}, "whole number"),
    ],
)
def test_bad_widths_get_clear_errors(widths, message):
    model = dplib.models.build("lenet5")
    with pytest.raises(dplib.WidthsError, match=message):
        dplib.prune(model, dplib.criteria.l1_importance(model), widths)


def test_importance_of_another_model_is_refused():
    importance = dplib.criteria.l1_importance(dplib.models.build("lenet5_bn"))
    with pytest.raises(dplib.ImportanceMismatchError, match="does not fit"):
        dplib.prune(dplib.models.build("lenet5"), importance, "5-10-16")


def test_build_with_widths_gives_the_pruned_architecture():
    small = dplib.models.build("lenet5", widths="5-10-16")
    assert dplib.count(small) == (4_136, 154_720)
