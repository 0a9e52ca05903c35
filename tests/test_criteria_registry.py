"""The registry of criteria: every list reads it, and a user adds a criterion in ten lines."""

from __future__ import annotations

import pytest
import torch

import dplib
from dplib.experiments import profiles


def test_a_user_criterion_runs_through_choose_widths_and_prune():
    # the README's example, as a user would write it
    @dplib.criteria.register("l2", description="L2 norm of each unit's weights")
    def l2_importance(model, loader=None, *, coupled=False):
        modules = dict(model.named_modules())
        scores = {}
        for layer in dplib.find_prunable_layers(model, coupled=coupled).layers:
            rows = [
                modules[name].weight.detach().flatten(1).norm(dim=1) for name in layer.producers
            ]
            scores[layer.name] = torch.stack(rows).sum(0)
        return dplib.Importance(scores, criterion="l2")

    try:
        model = dplib.models.build("lenet5", seed=0)
        imp = dplib.criteria.compute("l2", model)
        torch.testing.assert_close(imp.scores["conv2"][3], model.conv2.weight[3].norm())
        widths = dplib.choose_widths(model, imp, "4x")
        small = dplib.prune(model, imp, widths)
        full_macs = dplib.count(model, (1, 1, 28, 28)).macs
        assert 0.98 * full_macs / 4 <= dplib.count(small, (1, 1, 28, 28)).macs <= full_macs / 4
        # every list of criteria now has it
        assert "l2" in dplib.criteria.names() and "l2" in dplib.criteria.defaults(model)
        config = profiles.resolve("smoke", "fashion_mnist", "lenet5")
        assert "l2" in config.criteria and "l2" in dplib.criteria.defaults(model, peers=True)
        assert profiles.resolve("smoke", compare_criteria=["l2"]).compare_criteria == ("l2",)
        with pytest.raises(ValueError, match="already registered"):
            dplib.criteria.register("l1")(l2_importance)
    finally:
        dplib.criteria.unregister("l2")
    assert "l2" not in dplib.criteria.names()


def test_default_lists_follow_the_registry():
    lenet5 = dplib.models.build("lenet5")
    assert dplib.criteria.defaults(lenet5) == ("dirichlet", "random", "l1", "taylor")
    assert "bn_scale" in dplib.criteria.defaults(dplib.models.build("lenet5_bn"))
    peers = dplib.criteria.defaults(lenet5, peers=True)
    assert peers[:4] == ("dirichlet", "random", "l1", "taylor")
    assert "oracle" not in peers and "tp_l1" not in peers


def test_names_and_arguments_are_checked():
    model = dplib.models.build("lenet300")
    with pytest.raises(ValueError, match="unknown criterion 'magic'; choose one of dirichlet"):
        dplib.criteria.compute("magic", model)
    with pytest.raises(TypeError, match="name comes first"):
        dplib.criteria.compute(model, "l1")
    # an option a criterion does not take is named, with those it takes
    with pytest.raises(
        TypeError, match="'l1' takes no option 'no_such_option'; its options are coupled"
    ):
        dplib.criteria.compute("l1", model, no_such_option=1)
    with pytest.raises(
        TypeError, match="'taylor' takes no option 'seed'.*batches, device, coupled"
    ):
        dplib.criteria.compute("taylor", model, seed=0)
    # a criterion's function must take (model, loader, ...)
    with pytest.raises(TypeError, match=r"must start with \(model, loader"):
        dplib.criteria.register("bad")(lambda model: None)
    with pytest.raises(ValueError, match="needs a data loader"):
        dplib.criteria.compute("dirichlet", model)


def test_dirichlet_through_the_registry_uses_the_settings(tiny_loader):
    model = dplib.models.build("lenet300", seed=0)
    settings = dplib.DirichletSettings(epochs=0.25, alpha0=0.5)
    imp = dplib.criteria.compute("dirichlet", model, tiny_loader, settings=settings, device="cpu")
    assert imp.config["alpha0"] == 0.5 and imp.config["phi_init"] == settings.phi_init
    assert not hasattr(model, "gates")  # the gates are removed again
