"""The pipeline's artefacts: reuse, rebuild of corrupt files, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dplib
from dplib.experiments import profiles, stages
from dplib.files import read_json

pytestmark = pytest.mark.slow  # left out of `make quick`; CI runs every test

KIT = Path(__file__).resolve().parent.parent


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DPLIB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("DPLIB_PROGRESS", "off")
    return tmp_path / "runs"


def _tiny(**overrides) -> profiles.Config:
    settings = {"subset": 512, "eval_subset": 200, "pretrain_epochs": 1.0}
    settings.update(overrides)
    return profiles.resolve("smoke", "fashion_mnist", "lenet5", **settings)


def test_stage_is_reused_and_config_change_rebuilds(runs):
    config = _tiny()
    first = stages.pretrain(config, log=lambda m: None)
    assert not first.reused
    assert first.folder == runs / "smoke" / "fashion_mnist-lenet5" / "seed0"
    messages = []
    again = stages.pretrain(config, log=messages.append)
    assert again.reused and "reusing" in messages[0]
    assert again.metrics == first.metrics
    other = stages.pretrain(_tiny(pretrain_lr=0.02), log=lambda m: None)
    assert not other.reused and other.checkpoint != first.checkpoint
    assert first.checkpoint.exists()  # another configuration's network is kept beside it


def test_corrupt_checkpoint_is_reported_and_rebuilt(runs):
    config = _tiny()
    first = stages.pretrain(config, log=lambda m: None)
    first.checkpoint.write_bytes(first.checkpoint.read_bytes()[:100])  # a truncated file
    messages = []
    rebuilt = stages.pretrain(config, log=messages.append)
    assert not rebuilt.reused
    assert any("cannot reuse" in m and "truncated or corrupt" in m for m in messages), messages
    dplib.load_checkpoint(rebuilt.checkpoint, rebuilt.model)  # complete again


def test_corrupt_json_is_rebuilt(runs):
    config = _tiny()
    first = stages.pretrain(config, log=lambda m: None)
    first.checkpoint.with_suffix(".json").write_text('{"metrics": ')
    messages = []
    assert not stages.pretrain(config, log=messages.append).reused
    assert any("not valid JSON" in m for m in messages)


def _check_artefacts(folder: Path) -> list[str]:
    """Every visible artefact reads back completely; returns the finished row files."""
    rows = []
    for path in [*folder.iterdir(), *folder.glob("results/*")]:
        if path.name.startswith(".") or path.is_dir():
            continue  # a temporary file of an interrupted write: never read
        if path.suffix == ".json":
            json.loads(path.read_text())
            if path.parent.name == "results":
                rows.append(path.name)
        elif path.suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)
    return rows


WIDTHS = ["10-25-250", "5-10-76", "3-6-30"]
TABLE = (
    "from dplib.experiments import profiles, stages; stages.table(profiles.resolve('smoke', "
    f"widths={WIDTHS}, criteria=['l1', 'random', 'taylor']))"
)


def test_killed_run_resumes_from_the_last_completed_stage(runs):
    command = [sys.executable, "-c", TABLE]
    env = dict(os.environ, DPLIB_RUNS=str(runs), DPLIB_PROGRESS="off")
    folder = runs / "smoke" / "fashion_mnist-lenet5" / "seed0"
    process = subprocess.Popen(command, cwd=KIT, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(folder.glob("results/*.json")):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = _check_artefacts(folder)
    assert 1 <= len(finished) < 9, "the run should have been killed part-way"
    assert not (folder / "table.json").exists()
    written = {name: (folder / "results" / name).stat().st_mtime_ns for name in finished}

    resumed = subprocess.run(command, cwd=KIT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "reusing base-" in resumed.stdout
    assert "pretraining" not in resumed.stdout
    assert len(_check_artefacts(folder)) == 9
    assert not (folder / "table.json").exists(), "three criteria: not the profile's table"
    config = profiles.resolve("smoke", widths=WIDTHS, criteria=["l1", "random", "taylor"])
    rows = read_json(stages.table_file(config, folder))["rows"]
    assert {(r["criterion"], r["widths"]) for r in rows} == {
        (c, w) for c in ("l1", "random", "taylor") for w in ("10-25-250", "5-10-76", "3-6-30")
    }
    # the rows computed before the kill were reused, not recomputed
    assert {name: (folder / "results" / name).stat().st_mtime_ns for name in finished} == written


def test_only_the_profiles_own_table_is_the_one_the_figures_draw(tmp_path):
    """An exercise's table (shorter fine-tuning, one criterion, weaker base) of the same base
    folder goes beside table.json, never over it; the device does not change the table."""
    own = profiles.resolve("smoke", "fashion_mnist", "lenet5")
    assert stages.table_file(own, tmp_path) == tmp_path / "table.json"
    assert stages.table_file(profiles.resolve("smoke", device="cpu"), tmp_path).name == "table.json"
    others = [
        profiles.resolve("smoke", finetune_epochs=0.01),
        profiles.resolve("smoke", pretrain_epochs=0.01),
        own.replace(criteria=("dirichlet",)),
    ]
    names = {stages.table_file(config, tmp_path).name for config in others}
    assert len(names) == 3 and "table.json" not in names
    assert all(name.startswith("table-") and name.endswith(".json") for name in names)


def test_figures_draw_the_importance_the_table_was_pruned_with(runs):
    """Dirichlet importances learnt with other settings, or an exercise's weaker base's with the
    same settings, lie beside the table's; the importance figures draw the one table.json
    records (settings and base network), and the newest only without a record."""
    from dplib.experiments import publish
    from dplib.experiments.cache import config_hash
    from dplib.files import write_json
    from dplib.importance import Importance

    folder = runs / "smoke" / "fashion_mnist-lenet5" / "seed0"
    folder.mkdir(parents=True)
    plain = Importance({"fc1": torch.rand(4)}, criterion="dirichlet", config={"lr": 0.1})
    newer = Importance({"fc1": torch.rand(4)}, criterion="dirichlet", config={"lr": 1.0})
    plain.save(folder / "importance-dirichlet-a.pt")
    time.sleep(0.01)  # the other settings' importance is the newer file
    newer.save(folder / "importance-dirichlet-b.pt")
    table = {"network": "lenet5", "dataset": "Fashion-MNIST", "rows": []}
    write_json(folder / "table.json", table)
    drawn = publish.collect("smoke")["fashion_mnist-lenet5"]["importance"]
    assert drawn.config == newer.config, "without a record: the newest"
    write_json(folder / "table.json", table | {"importance_hash": config_hash(plain.config)})
    drawn = publish.collect("smoke")["fashion_mnist-lenet5"]["importance"]
    assert drawn.config == plain.config and torch.equal(drawn.scores["fc1"], plain.scores["fc1"])
    # an exercise's weaker base learns the same settings later, in the same folder
    weaker = Importance({"fc1": torch.rand(4)}, criterion="dirichlet", config={"lr": 0.1})
    write_json(folder / "importance-dirichlet-a.json", {"config": {"base": "profile"}})
    time.sleep(0.01)
    weaker.save(folder / "importance-dirichlet-c.pt")
    write_json(folder / "importance-dirichlet-c.json", {"config": {"base": "weaker"}})
    write_json(
        folder / "table.json",
        table | {"importance_hash": config_hash(plain.config), "base_key": "profile"},
    )
    drawn = publish.collect("smoke")["fashion_mnist-lenet5"]["importance"]
    assert torch.equal(drawn.scores["fc1"], plain.scores["fc1"]), "the table's base, not the newest"


def test_architecture_table_matches_the_notebook_numbers():
    # the architectures 03_prune prints (and asserts) for LeNet-5, pinned here as well
    config = profiles.resolve("smoke", "fashion_mnist", "lenet5")
    table = {
        row["widths"]: (row["params"], row["macs"]) for row in stages.architecture_table(config)
    }
    assert table == {
        "20-50-500": (431_080, 2_293_000),
        "5-10-76": (14_396, 164_920),
        "3-6-30": (3_754, 75_180),
    }
