import pytest
import torch

import dplib


def test_fit_learns_and_is_deterministic():
    loaders = dplib.data.loaders("mnist5k", batch_size=64, subset=1000, eval_subset=300, seed=0)
    results = []
    for _ in range(2):
        model = dplib.models.build("lenet300", seed=0)
        history = dplib.fit(
            model, loaders.train, epochs=2, lr=0.05, val_loader=loaders.val, device="cpu"
        )
        results.append((model, history))
    accuracy = dplib.evaluate(results[0][0], loaders.val)["accuracy"]
    assert accuracy > 0.6  # chance is 0.1
    assert results[0][1]["val_accuracy"] == results[1][1]["val_accuracy"]
    for p, q in zip(results[0][0].parameters(), results[1][0].parameters(), strict=True):
        assert torch.equal(p, q)


def test_checkpoint_roundtrip_and_atomic_write(tmp_path):
    model = dplib.models.build("lenet5", seed=1)
    path = dplib.save_checkpoint(tmp_path / "a" / "base.pt", model, model_name="lenet5", acc=0.5)
    assert [p.name for p in path.parent.iterdir()] == ["base.pt"]  # no temporary left behind
    other = dplib.models.build("lenet5", seed=2)
    extra = dplib.load_checkpoint(path, other)
    assert extra == {"acc": 0.5}
    assert torch.equal(other.conv1.weight, model.conv1.weight)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = dplib.save_checkpoint(
        tmp_path / "lenet5.pt", dplib.models.build("lenet5"), model_name="lenet5"
    )
    with pytest.raises(dplib.CheckpointError, match="'lenet5' network of another architecture"):
        dplib.load_checkpoint(path, dplib.models.build("lenet300"))
    with pytest.raises(dplib.CheckpointError, match=r"conv1.weight: checkpoint \(20, 1, 5, 5\)"):
        dplib.load_checkpoint(path, dplib.models.build("lenet5", widths="5-10-16"))


def test_corrupt_or_missing_checkpoint(tmp_path):
    path = dplib.save_checkpoint(
        tmp_path / "x.pt", dplib.models.build("lenet300"), model_name="lenet300"
    )
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(dplib.CheckpointError, match="truncated or corrupt"):
        dplib.load_checkpoint(path, dplib.models.build("lenet300"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        dplib.load_checkpoint(tmp_path / "missing.pt", dplib.models.build("lenet300"))


def test_device_resolution():
    assert dplib.resolve_device("cpu").type == "cpu"
    assert dplib.resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device"):
        dplib.resolve_device("gpu0")


def test_recalibrate_batchnorm_matches_the_batch_statistics_and_keeps_weights():
    from dplib.train import recalibrate_batchnorm

    from conftest import trained_like

    model = trained_like(dplib.models.build("lenet5_bn", seed=0))
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    weights = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(buffers)}
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(96, 1, 28, 28, generator=generator) * 2 + 0.5
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(96, dtype=torch.long))
    loader = dplib.data.make_loader(dataset, 32, shuffle=False)

    # what the first BatchNorm sees: its running mean must become the mean over all 96 images
    first_conv, first_norm = model.conv1, model.bn1
    with torch.no_grad():
        expected = first_conv(images).mean(dim=(0, 2, 3))
    assert recalibrate_batchnorm(model, loader, batches=3) == 2
    torch.testing.assert_close(first_norm.running_mean, expected, rtol=1e-4, atol=1e-5)
    assert first_norm.momentum == 0.1 and not model.training
    for name, value in model.state_dict().items():
        if name in weights:
            assert torch.equal(value, weights[name]), name

    plain = dplib.models.build("lenet5", seed=0)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    assert recalibrate_batchnorm(plain, loader) == 0
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(model, loader, batches=0)


def test_bfloat16_channels_last_and_onecycle_train_and_restore_the_format(tiny_loader):
    from dplib.loop import autocast_dtype
    from dplib.train import learning_rate

    model = dplib.models.build("lenet5", seed=0)
    history = dplib.fit(
        model,
        tiny_loader,
        epochs=1,
        amp="bfloat16",
        channels_last=True,
        schedule="onecycle",
        device="cpu",
    )
    assert history["train_loss"][0] > 0
    assert model.conv1.weight.is_contiguous()  # the usual format again
    assert autocast_dtype(torch.device("cpu"), "auto") is None
    assert autocast_dtype(torch.device("cpu"), True) == torch.bfloat16
    with pytest.raises(ValueError, match="amp must be"):
        dplib.TrainSettings(amp="fp8")
    with pytest.raises(TypeError, match="TrainSettings has no knob 'epoch'.*epochs, lr"):
        dplib.fit(model, tiny_loader, epoch=2)
    assert learning_rate("onecycle", 0.1, 0, 100) == pytest.approx(0.004)
    assert learning_rate("onecycle", 0.1, 30, 100) == pytest.approx(0.1)
    assert learning_rate("onecycle", 0.1, 100, 100) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        dplib.fit(model, tiny_loader, schedule="linear")
