"""Training that resumes after an interruption, and augmentation."""

import pytest
import torch

import dplib


class Interrupted(Exception):
    pass


class BreakingLoader:
    """Wraps a loader and raises after ``limit`` batches: a run killed part-way."""

    def __init__(self, loader, limit):
        self.loader, self.limit, self.count = loader, limit, 0
        self.dataset, self.sampler, self.batch_sampler = loader.dataset, loader.sampler, None

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.count == self.limit:
                raise Interrupted
            self.count += 1
            yield batch


def small_loaders():
    return dplib.data.loaders("mnist5k", batch_size=64, subset=640, eval_subset=200, seed=0)


def test_resumed_fit_ends_with_the_same_weights(tmp_path):
    options = {"epochs": 3, "lr": 0.05, "device": "cpu", "seed": 1}
    reference = dplib.models.build("lenet5_bn", seed=0)
    loaders = small_loaders()
    dplib.fit(reference, loaders.train, val_loader=loaders.val, **options)

    state = tmp_path / "train-state.pt"
    interrupted = dplib.models.build("lenet5_bn", seed=0)
    with pytest.raises(Interrupted):  # killed in the middle of the second epoch
        dplib.fit(
            interrupted,
            BreakingLoader(small_loaders().train, 15),
            val_loader=loaders.val,
            checkpoint=state,
            **options,
        )
    assert state.exists()
    resumed = dplib.models.build("lenet5_bn", seed=5)  # a fresh process: other weights
    history = dplib.fit(
        resumed, small_loaders().train, val_loader=loaders.val, checkpoint=state, **options
    )
    assert len(history["val_accuracy"]) == 3
    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_training_state_of_another_architecture_is_refused(tmp_path):
    state = tmp_path / "state.pt"
    loaders = small_loaders()
    dplib.fit(
        dplib.models.build("lenet300"),
        loaders.train,
        epochs=1,
        checkpoint=state,
        device="cpu",
    )
    with pytest.raises(dplib.CheckpointError, match="another architecture"):
        dplib.fit(
            dplib.models.build("lenet5"),
            loaders.train,
            epochs=2,
            checkpoint=state,
            device="cpu",
        )


def test_random_crop_flip_moves_pixels_but_keeps_shapes():
    torch.manual_seed(0)
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).view(2, 3, 8, 8) + 1
    out = dplib.data.random_crop_flip(images, padding=2)
    assert out.shape == images.shape
    for original, augmented in zip(images, out, strict=True):
        # every non-padding pixel of the crop comes from the image, possibly flipped
        values = set(augmented[augmented > 0].tolist())
        assert values <= set(original.flatten().tolist())
    assert not torch.equal(out, images)


def test_interrupted_pretraining_resumes_to_the_same_network(tmp_path, monkeypatch):
    from dplib.experiments import experiment

    setup = experiment.Experiment(
        "lenet5_bn",
        "mnist5k",
        dplib.TrainSettings(epochs=2),
        batch_size=64,
        subset=640,
        eval_subset=200,
    )
    quiet = {"log": lambda line: None}
    reference = experiment.pretrain(setup, tmp_path / "reference", **quiet)

    real_fit = experiment.fit

    def killed_in_the_second_epoch(model, loader, *arguments, **options):
        return real_fit(model, BreakingLoader(loader, 15), *arguments, **options)

    monkeypatch.setattr(experiment, "fit", killed_in_the_second_epoch)
    with pytest.raises(Interrupted):
        experiment.pretrain(setup, tmp_path / "run", **quiet)
    folder = tmp_path / "run" / setup.name / "seed0"
    assert len(list(folder.glob(".base-*.training.pt"))) == 1
    monkeypatch.setattr(experiment, "fit", real_fit)
    resumed = experiment.pretrain(setup, tmp_path / "run", **quiet)
    assert not list(folder.glob("*.training.pt"))  # removed once trained
    for (name, a), b in zip(
        reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
