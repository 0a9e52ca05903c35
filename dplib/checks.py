"""Checks of data against a network, run before any long work starts.

Images of the wrong shape, or labels beyond the classifier's outputs, would otherwise fail deep
inside torch ("Target 19 is out of bounds") after a run is set up. :func:`check_data` runs the
network once on the data set's first example (not the loader's: no shuffling state moves), in
eval mode without gradients, and says what was expected and what came.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from .gates import GateShapeError
from .loop import evaluating
from .models import input_shape_of


def check_data(model: nn.Module, loader: DataLoader, what: str) -> None:
    """A ValueError naming the problem when ``loader``'s data do not fit ``model``."""
    if not hasattr(loader, "dataset"):  # a list of batches: no data set to size or reseed
        raise ValueError(
            f"{what}: the data must be a torch DataLoader, not a {type(loader).__name__}; wrap "
            "tensors with dplib.data.make_loader(TensorDataset(images, labels), batch_size, "
            "shuffle=True)"
        )
    if len(loader) == 0:
        raise ValueError(f"{what}: the loader is empty")
    images, labels = _first_example(loader)
    expected = input_shape_of(model)
    if expected is not None and tuple(images.shape) != expected:
        raise ValueError(
            f"{what}: the network takes images of shape {_shape(expected)} but the data set's "
            f"images are {_shape(images.shape)}; give data of the network's input (or build "
            "the network for this data)"
        )
    outputs = _outputs(model, images, what)
    largest = int(labels.max()) if labels.numel() else 0
    if largest >= outputs or (labels.numel() and int(labels.min()) < 0):
        raise ValueError(
            f"{what}: the labels run from {int(labels.min())} to {largest} but the classifier has "
            f"{outputs} outputs (labels 0 to {outputs - 1}); build the network with "
            f"num_classes={largest + 1} or give data of its classes"
        )


def _first_example(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """One image, and the labels to check: all of an in-memory data set, else the first."""
    dataset = loader.dataset
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and len(tensors) >= 2:
        if len(tensors[0]) == 0:
            raise ValueError("the loader's data set is empty")
        return tensors[0][0], tensors[1]
    image, label = dataset[0]
    return torch.as_tensor(image), torch.as_tensor(label).reshape(-1)


def _outputs(model: nn.Module, image: torch.Tensor, what: str) -> int:
    """The number of classifier outputs, from one forward pass of ``image``."""
    try:
        with evaluating(model) as device, torch.no_grad():
            logits = model(image.unsqueeze(0).to(device))
    except GateShapeError:
        raise  # the gates' placement, not the data
    except RuntimeError as error:
        reason = str(error).splitlines()[0]
        raise ValueError(
            f"{what}: the network cannot take the data set's images of shape "
            f"{_shape(image.shape)} ({reason})"
        ) from None
    return int(logits.shape[-1])


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "x".join(str(size) for size in shape)
