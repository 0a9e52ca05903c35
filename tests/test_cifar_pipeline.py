"""CPU proof of the CIFAR networks: every stage of the pipeline on a tiny CIFAR-10 stand-in."""

import pytest
import torch
from test_data import write_tiny_cifar

from dplib.experiments import profiles, stages
from dplib.experiments.cache import config_hash


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
    assert config.width_multiplier == 0.125  # the smoke profile's width for CPU runs
    comparison = stages.run_all(config, log=lambda message: None)
    base, *rows = comparison.rows
    assert {row["criterion"] for row in rows} == {"dirichlet", "l1"}
    for row in rows:
        assert row["params"] < base["params"] and row["macs"] < base["macs"]
        assert 0.0 <= row["accuracy"] <= 1.0
        if row["budget"] is not None:  # each criterion's own allocation, within 2% under
            assert 0.98 * base["macs"] / 2 <= row["macs"] <= base["macs"] / 2
    folder = stages.run_dir(config)
    assert not list(folder.glob(".*training-state*"))  # removed once pretraining completed
    maps = torch.load(stages.feature_maps(config, log=lambda m: None), weights_only=True)
    assert maps["images"].shape[1] == 3
    again = stages.run_all(config, log=lambda message: None)  # everything reused
    assert again.reused


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
    config = profiles.resolve("paper", "cifar10", "resnet56")
    assert (config.pretrain_epochs, config.pretrain_lr, config.finetune_epochs) == (160, 0.1, 20)
    assert config.width_multiplier is None


def test_a_damaged_training_state_is_reported_and_pretraining_restarts(tiny_cifar):
    config = profiles.resolve("smoke", "cifar10", "resnet20", criteria=["l1"], widths=["0.5"])
    folder = stages.run_dir(config)
    folder.mkdir(parents=True)
    key = config_hash(stages.pretrain_key(config))
    (folder / f".base-{key}.training-state.pt").write_bytes(b"not a torch file")
    messages = []
    pretrained = stages.pretrain(config, log=messages.append)
    assert any("training-state" in m and "truncated or corrupt" in m for m in messages), messages
    assert pretrained.metrics["params"] > 0
    assert not (folder / f".base-{key}.training-state.pt").exists()
