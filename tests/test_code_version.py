"""Cached stages carry the version of the method code that made them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from dplib.experiments import profiles, stages

KIT = Path(__file__).resolve().parent.parent
SETTINGS = dict(subset=256, eval_subset=100, pretrain_epochs=0.25)  # the smoke LeNet-300's
PRETRAIN = f"""
from dplib.experiments import profiles, stages
config = profiles.resolve("smoke", "fashion_mnist", "lenet300", **{SETTINGS!r})
print("reused" if stages.pretrain(config, log=lambda m: None).reused else "built")
"""


def _pretrain(*copies: Path, runs: Path) -> list[str]:
    """Pretrain the smoke LeNet-300 with each copy of the kit at once; "built" or "reused"."""
    env = os.environ | {
        "DPLIB_RUNS": str(runs),
        "DPLIB_DATA": str(KIT / "data"),
        "DPLIB_PROGRESS": "off",
    }
    started = [
        subprocess.Popen(
            [sys.executable, "-c", PRETRAIN],
            env=env | {"PYTHONPATH": str(copy)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=copy,
        )
        for copy in copies
    ]
    outputs = []
    for process in started:
        out, err = process.communicate()
        assert process.returncode == 0, err
        outputs.append(out.strip().splitlines()[-1])
    return outputs


def _copy(tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(KIT / "dplib", copy / "dplib", ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_an_edited_method_statement_rebuilds_the_stage_and_a_comment_does_not(
    tmp_path, monkeypatch
):
    runs = tmp_path / "runs"
    monkeypatch.setenv("DPLIB_RUNS", str(runs))  # the kit as it is, in this process: it builds
    config = profiles.resolve("smoke", "fashion_mnist", "lenet300", **SETTINGS)
    assert not stages.pretrain(config, log=lambda m: None).reused
    commented, changed = _copy(tmp_path, "commented"), _copy(tmp_path, "changed")
    source = (KIT / "dplib" / "train.py").read_text()
    edited = source.replace('"""', '"""An edited docstring. ', 1)
    (commented / "dplib" / "train.py").write_text(edited + "\n# an edited comment\n")
    (changed / "dplib" / "train.py").write_text(edited + "\nEDITED = True\n")
    # the two edits side by side, on the first copy's cache
    assert _pretrain(commented, changed, runs=runs) == ["reused", "built"]
