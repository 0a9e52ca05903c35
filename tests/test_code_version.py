"""Cached stages carry the version of the method code that made them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

KIT = Path(__file__).resolve().parent.parent
PRETRAIN = """
from dplib.experiments import profiles, stages
config = profiles.resolve(
    "smoke", "fashion_mnist", "lenet300", subset=256, eval_subset=100, pretrain_epochs=0.25
)
print("reused" if stages.pretrain(config, log=lambda m: None).reused else "built")
"""


def _pretrain(copy: Path, runs: Path) -> str:
    env = os.environ | {
        "PYTHONPATH": str(copy),
        "DPLIB_RUNS": str(runs),
        "DPLIB_DATA": str(KIT / "data"),
        "DPLIB_PROGRESS": "off",
    }
    done = subprocess.run(
        [sys.executable, "-c", PRETRAIN], env=env, capture_output=True, text=True, cwd=copy
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_an_edited_method_statement_rebuilds_the_stage_and_a_comment_does_not(tmp_path):
    copy = tmp_path / "kit"
    shutil.copytree(KIT / "dplib", copy / "dplib", ignore=shutil.ignore_patterns("__pycache__"))
    runs = tmp_path / "runs"
    assert _pretrain(copy, runs) == "built"
    train = copy / "dplib" / "train.py"
    source = train.read_text()
    edited = source.replace('"""', '"""An edited docstring. ', 1)
    train.write_text(edited + "\n# an edited comment\n")
    assert _pretrain(copy, runs) == "reused"
    train.write_text(edited + "\nEDITED = True\n")
    assert _pretrain(copy, runs) == "built"
