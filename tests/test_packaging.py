import re
from pathlib import Path

import tomllib
import torch
from torch.utils.data import TensorDataset

import dplib

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    listed = set()
    for line in (ROOT / "environment.yml").read_text().splitlines():
        match = re.match(r"^\s+- ([A-Za-z][\w.-]*(?:>=|==|<=|~=|!=|<|>).*)$", line)
        if match:
            listed.add(match.group(1).strip())
    assert listed == declared


def test_public_api_contract():
    # the method's five steps as a user calls them: gates, importance, widths, surgery, count
    from dplib import Importance, attach_gates, choose_widths, count, learn_importance, prune

    model = dplib.models.build("lenet300", seed=0)
    images, labels = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    loader = dplib.data.make_loader(TensorDataset(images, labels), 32, shuffle=True)
    gated = attach_gates(model)
    importance = learn_importance(gated, loader, device="cpu", epochs=5)
    gated.remove()
    assert isinstance(importance, Importance) and importance.names == ["fc1", "fc2"]
    widths = choose_widths(model, importance, "4x")
    small = prune(model, importance, widths)
    assert count(small).macs <= count(model).macs / 4
    assert callable(dplib.models.build)
    for name in dplib.__all__:
        assert getattr(dplib, name).__doc__, f"{name} has no docstring"
