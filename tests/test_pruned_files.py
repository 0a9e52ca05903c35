"""One-file pruned networks: dplib.save_pruned / dplib.load_pruned round trips."""

from __future__ import annotations

import pytest
import torch

import dplib

from conftest import trained_like

CASES = [
    ("lenet5", {}, False, "3-6-30", (2, 1, 28, 28)),
    ("lenet5_bn", {}, False, "5-8-45-15", (2, 1, 28, 28)),
    ("resnet20", {"width_multiplier": 0.5}, True, "macs:2x", (2, 3, 32, 32)),
    ("vgg16", {"width_multiplier": 0.125}, False, "macs:4x", (2, 3, 32, 32)),
]


@pytest.mark.parametrize(("name", "options", "coupled", "widths", "shape"), CASES)
def test_a_pruned_network_comes_back_from_one_file(tmp_path, name, options, coupled, widths, shape):
    model = trained_like(dplib.models.build(name, seed=0, **options))
    importance = dplib.criteria.l1_importance(model, coupled=coupled)
    if widths.startswith("macs:"):
        widths = dplib.choose_widths(model, importance, widths, input_shape=shape)
    small = dplib.prune(model, importance, widths).eval()
    path = dplib.save_pruned(tmp_path / f"{name}.pt", small, accuracy=0.5)
    loaded = dplib.load_pruned(path)
    images = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), small(images), rtol=0, atol=0)
    assert dplib.count(loaded, (1, *shape[1:])) == dplib.count(small, (1, *shape[1:]))
    assert loaded.dplib_extra == {"accuracy": 0.5} and not loaded.training


def test_foreign_and_damaged_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not built by dplib.models.build"):
        dplib.save_pruned(tmp_path / "x.pt", torch.nn.Linear(3, 2))
    model = dplib.models.build("lenet300")
    dplib.save_checkpoint(tmp_path / "checkpoint.pt", model, model_name="lenet300")
    with pytest.raises(dplib.CheckpointError, match="not a dplib pruned network"):
        dplib.load_pruned(tmp_path / "checkpoint.pt")
    path = dplib.save_pruned(tmp_path / "net.pt", model)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(dplib.CheckpointError, match="truncated or corrupt"):
        dplib.load_pruned(path)
    with pytest.raises(FileNotFoundError):
        dplib.load_pruned(tmp_path / "missing.pt")
