"""Data that does not fit the network is refused before any training step, with what was
expected and what came."""

from __future__ import annotations

import pytest
import torch

import dplib


def _loader(shape=(1, 28, 28), labels_up_to=9, count=64):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count, *shape, generator=generator)
    labels = torch.randint(0, labels_up_to + 1, (count,), generator=generator)
    labels[0] = labels_up_to
    dataset = torch.utils.data.TensorDataset(images, labels)
    return dplib.data.make_loader(dataset, 16, shuffle=True, seed=0)


def _every_entry_point(model, loader):
    yield lambda: dplib.fit(model, loader, epochs=1, device="cpu")
    gated = dplib.attach_gates(model)
    yield lambda: dplib.learn_importance(gated, loader, device="cpu")
    gated.remove()
    yield lambda: dplib.criteria.compute("taylor", model, loader, device="cpu")


def test_labels_beyond_the_classifier_are_refused_everywhere():
    model = dplib.models.build("lenet5", seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    for call in _every_entry_point(model, _loader(labels_up_to=19)):
        with pytest.raises(ValueError, match=r"labels run from 0 to 19 .* 10 outputs"):
            call()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing trained


def test_images_of_the_wrong_shape_are_refused_everywhere():
    model = dplib.models.build("lenet5", seed=0)
    for call in _every_entry_point(model, _loader(shape=(3, 32, 32))):
        with pytest.raises(ValueError, match="takes images of shape 1x28x28 .* are 3x32x32"):
            call()
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with pytest.raises(ValueError, match="cannot take the data set's images of shape 3x32x32"):
        dplib.fit(plain, _loader(shape=(3, 32, 32)), device="cpu")
    with pytest.raises(ValueError, match=r"failed on an input of shape \(1, 3, 32, 32\)"):
        dplib.count(model, (1, 3, 32, 32))


def test_a_list_of_batches_is_refused_everywhere_with_the_loader_to_make():
    """The measured rule takes a list of batches; fit, learn_importance and the criteria take a
    DataLoader (they size and reseed its data set), and say so."""
    model = dplib.models.build("lenet5", seed=0)
    batches = list(_loader())
    for call in _every_entry_point(model, batches):
        with pytest.raises(
            ValueError, match=r"must be a torch DataLoader, not a list.*make_loader"
        ):
            call()
