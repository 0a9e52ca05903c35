"""CPU proof of the CIFAR networks: every stage of the pipeline on a tiny CIFAR-10 stand-in."""

import pytest
import torch
from test_data import write_tiny_cifar

from dplib.experiments import profiles, stages
from dplib.experiments.cache import config_hash
from dplib.experiments.experiment import pretraining_key, training_state

pytestmark = pytest.mark.slow  # left out of `make quick`; CI runs every test


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch):
    write_tiny_cifar(tmp_path / "data" / "cifar-10-batches-py", per_batch=40)
    monkeypatch.setenv("DPLIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("DPLIB_RUNS", str(tmp_path / "runs"))
    return tmp_path


@pytest.mark.parametrize("model", ["vgg16", "resnet20", "resnet56", "wrn28_10"])
def test_every_stage_runs_on_each_cifar_network(tiny_cifar, model):
    widths = ["0.5", "macs:2x"] if model == "resnet20" else ["0.5"]
    config = profiles.resolve(
        "smoke", "cifar10", model, criteria=["dirichlet", "l1"], widths=widths
    )
    assert config.experiment.width_multiplier == 0.125  # the smoke profile's width for CPU runs
    assert config.experiment.pretraining.augment  # crops and flips on CIFAR-10
    table = stages.table(config, log=lambda message: None)
    base, rows = table["base"], table["rows"]
    assert {row["criterion"] for row in rows} == {"dirichlet", "l1"}
    assert len(rows) == 2 * len(widths)
    for row in rows:
        assert row["params"] < base["params"] and row["macs"] < base["macs"]
        if row["allocation"] == "greedy":  # each criterion's own allocation, within 2% under
            assert 0.98 * base["macs"] / 2 <= row["macs"] <= base["macs"] / 2
    folder = stages.pretrain(config).folder
    assert not list(folder.glob(".*.training.pt"))  # removed once pretraining completed
    learned, _ = stages.importance(stages.pretrain(config))
    assert table["importance_hash"] == config_hash(learned.config)  # what 04_figures draws
    assert table["base_key"] == stages.pretrain(config).key  # and on which base network
    maps = torch.load(stages.feature_maps(stages.pretrain(config), learned), weights_only=True)
    assert maps["images"].shape[1] == 3
    written = {path: path.stat().st_mtime_ns for path in folder.glob("results/*.json")}
    assert stages.table(config, log=lambda message: None)["rows"] == rows  # everything reused
    assert {path: path.stat().st_mtime_ns for path in folder.glob("results/*.json")} == written


def test_cifar_data_and_lenet_are_refused_together():
    with pytest.raises(ValueError, match="takes 1x28x28 images but dataset 'cifar10' has 3x32x32"):
        profiles.resolve("smoke", "cifar10", "lenet5")
    with pytest.raises(ValueError, match="width_multiplier applies to the CIFAR networks"):
        profiles.resolve("smoke", "fashion_mnist", "lenet5", width_multiplier=0.5)


def test_budget_widths_are_validated_at_once():
    with pytest.raises(ValueError, match="'macs:' or 'params:'"):
        profiles.resolve("smoke", "cifar10", "resnet20", widths=["flops:2x"])
    with pytest.raises(ValueError, match="ratio"):
        profiles.resolve("smoke", "cifar10", "resnet20", widths=["macs:fast"])


def test_paper_profile_uses_cifar_schedules():
    experiment = profiles.resolve("paper", "cifar10", "resnet56").experiment
    pretraining, finetuning = experiment.pretraining, experiment.finetuning
    assert (pretraining.epochs, pretraining.lr, finetuning.epochs) == (160, 0.1, 20)
    assert experiment.width_multiplier is None


def test_a_damaged_training_state_is_reported_and_pretraining_restarts(tiny_cifar):
    config = profiles.resolve("smoke", "cifar10", "resnet20", criteria=["l1"], widths=["0.5"])
    experiment = config.experiment
    key = config_hash(pretraining_key(experiment, config.seed))
    folder = tiny_cifar / "runs" / "smoke" / experiment.name / "seed0"
    state = training_state(folder / f"base-{key}.pt")
    state.parent.mkdir(parents=True)
    state.write_bytes(b"not a torch file")
    messages = []
    pretrained = stages.pretrain(config, log=messages.append)
    assert any("cannot resume" in m and "truncated or corrupt" in m for m in messages), messages
    assert pretrained.metrics["params"] > 0
    assert not state.exists()
