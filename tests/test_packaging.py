import re
from pathlib import Path

import tomllib

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
    for name in ("attach_gates", "learn_importance", "prune", "count", "Importance"):
        assert hasattr(dplib, name), name
    assert callable(dplib.models.build)
    for name in dplib.__all__:
        assert getattr(dplib, name).__doc__, f"{name} has no docstring"
