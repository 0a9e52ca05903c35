"""A network on a data set, pretrained once per seed: what the comparison and the study share.

A :class:`Setup` names the network, the data set and the fixed schedules (epochs over the
training split); :func:`prepare` loads the data, pretrains the network (cached with
:func:`~dplib.experiments.cache.cached`, reused when the setup, the seed and the subsets are the
same) and measures the base network, returning a :class:`Context` that the experiments prune.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .. import data, models
from ..measure import count
from ..train import evaluate, fit, load_checkpoint, save_checkpoint
from .cache import Log, cached, config_hash, log_line


@dataclass(frozen=True)
class Setup:
    """A network on a data set and its fixed schedules (epochs over the training split).

    The training options apply to pretraining and fine-tuning alike (see :func:`dplib.fit`);
    their defaults are the LeNet schedules of the comparison and the study.
    """

    model: str
    dataset: str
    pretrain_epochs: float
    importance_epochs: float = 1.0
    finetune_epochs: float = 1.0
    pad_to: int | None = None  # pad the images (28x28) to this size, e.g. 32 for resnet20
    width_multiplier: float | None = None  # CIFAR networks only
    coupled: bool = False  # also prune the residual-coupled groups (stages), as one unit each
    batch_size: int = 128
    widths: tuple[str, ...] = ()  # fixed width settings (the study: mild, medium, aggressive)
    pretrain_lr: float = 0.05
    schedule: str = "cosine"  # of pretraining
    finetune_lr: float = 0.01
    finetune_schedule: str = "constant"
    augment: bool = False  # random crops and flips (CIFAR)
    amp: bool | str = "auto"  # "bfloat16": fast CPU training where the CPU supports it
    channels_last: bool = False
    speedup_batch: int | None = None  # measure each pruned network's deployed CPU speed-up
    keep_pruned: bool = False  # save each fine-tuned pruned network (dplib.save_pruned)
    data_device: str | None = None  # hold the images there (e.g. "cuda": no copies per batch)

    def training(self) -> dict[str, Any]:
        """The options of :func:`dplib.fit` shared by pretraining and fine-tuning."""
        return {"augment": self.augment, "amp": self.amp, "channels_last": self.channels_last}

    @property
    def name(self) -> str:
        """``<dataset>-<model>``, the dataset suffixed by the padded size (``32``)."""
        return f"{self.dataset}{self.pad_to or ''}-{self.model}"


@dataclass
class Context:
    """One seed of a setup: its data, pretrained network and folder."""

    setup: Setup
    seed: int
    folder: Path
    loaders: data.Loaders
    model: torch.nn.Module
    input_shape: tuple[int, ...]
    base: dict[str, Any]


def prepare(
    setup: Setup,
    folder: str | Path,
    seed: int,
    *,
    subset: int | None = None,
    eval_subset: int | None = None,
    show_progress: bool = False,
    log: Log = log_line,
) -> Context:
    """Load the data and pretrain the network of one seed (``<folder>/base.pt``, cached)."""
    folder = Path(folder)
    loaders = data.loaders(
        setup.dataset,
        batch_size=setup.batch_size,
        subset=subset,
        eval_subset=eval_subset,
        seed=seed,
    )
    if setup.pad_to:
        loaders = _padded(loaders, setup.pad_to, seed, setup.batch_size)
    if setup.data_device:
        loaders = _on_device(loaders, setup.data_device, seed, setup.batch_size)
    shape = (1, *loaders.splits.train.tensors[0].shape[1:])
    key = {
        "model": setup.model,
        "dataset": setup.name,
        "width_multiplier": setup.width_multiplier,
        "epochs": setup.pretrain_epochs,
        "lr": setup.pretrain_lr,
        "schedule": setup.schedule,
        "batch_size": setup.batch_size,
        **setup.training(),
        "seed": seed,
        "subset": subset,
        "eval_subset": eval_subset,
    }
    # the training state of an interrupted pretraining with this very key, resumed by fit
    state = folder / f"base-training-{config_hash(key)}.pt"
    result = cached(
        folder / "base.pt",
        key,
        lambda: _pretrain(setup, loaders, shape, seed, state, show_progress, log),
        save=lambda model, path: save_checkpoint(path, model, model_name=setup.model),
        load=lambda path, _: _load(setup, path),
        log=log,
    )
    return Context(setup, seed, folder, loaders, result.value, shape, result.meta["base"])


def _network(setup: Setup, seed: int | None = None) -> torch.nn.Module:
    options: dict[str, Any] = {"width_multiplier": setup.width_multiplier}
    if setup.pad_to:  # a CIFAR network on grey images
        options["in_channels"] = 1
    return models.build(setup.model, seed=seed, **options)


def _load(setup: Setup, path: Path) -> torch.nn.Module:
    model = _network(setup)
    load_checkpoint(path, model)
    return model


def _pretrain(
    setup: Setup,
    loaders: data.Loaders,
    shape: tuple[int, ...],
    seed: int,
    state: Path,
    show_progress: bool,
    log: Log,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the base network; measure it on validation and test data, count it.

    The training state is saved to ``state`` after every epoch, so an interrupted pretraining
    resumes from its last completed epoch; the file is removed once training ends."""
    model = _network(setup, seed)
    history = fit(
        model,
        loaders.train,
        epochs=setup.pretrain_epochs,
        lr=setup.pretrain_lr,
        schedule=setup.schedule,
        val_loader=loaders.val,
        seed=seed,
        show_progress=show_progress,
        desc=f"pretrain {setup.name}",
        checkpoint=state,
        **setup.training(),
    )
    state.unlink(missing_ok=True)
    log(f"{setup.name} seed {seed}: pretrained {setup.pretrain_epochs} epochs")
    params, macs = count(model, shape)
    base = {
        "val": evaluate(model, loaders.val)["accuracy"],
        "test": evaluate(model, loaders.test)["accuracy"],
        "params": params,
        "macs": macs,
        "seconds_per_epoch": history["seconds_per_epoch"],
        "data_source": loaders.splits.source,
    }
    return model, {"base": base}


def _on_device(loaders: data.Loaders, device: str, seed: int, batch_size: int) -> data.Loaders:
    """The same loaders over images held on ``device``: batches are sliced there."""
    splits = loaders.splits
    for split in ("train", "val", "test"):
        tensors = getattr(splits, split).tensors
        setattr(splits, split, TensorDataset(*(tensor.to(device) for tensor in tensors)))
    return _loaders(splits, seed, batch_size)


def _loaders(splits: data.Splits, seed: int, batch_size: int) -> data.Loaders:
    return data.Loaders(
        train=data.make_loader(splits.train, batch_size, shuffle=True, seed=seed),
        val=data.make_loader(splits.val, 1000, shuffle=False),
        test=data.make_loader(splits.test, 1000, shuffle=False),
        splits=splits,
    )


def _padded(loaders: data.Loaders, size: int, seed: int, batch_size: int = 128) -> data.Loaders:
    """The same loaders over images padded to ``size`` x ``size`` with the background value."""
    splits = loaders.splits
    for split in ("train", "val", "test"):
        images, labels = getattr(splits, split).tensors
        margin = (size - images.shape[-1]) // 2
        padded = F.pad(images, (margin,) * 4, value=float(images.min()))
        setattr(splits, split, TensorDataset(padded, labels))
    return _loaders(splits, seed, batch_size)
