"""The one experiment path: pretrain once, score the units, prune, fine-tune, measure.

An :class:`Experiment` is a network on a data set with its three schedules (pretraining,
importance, fine-tuning) and how results are measured. Everything the kit runs goes through:

==========================  ========================================================================
:func:`pretrain`            the base network of one seed: ``<root>/<name>/seed<k>/base-<h>.pt``
:func:`score`               one criterion's importance of it: ``importance-<criterion>-<h>.pt``
:func:`prune_and_finetune`  one pruned network's row: ``results/<criterion>-<allocation>-<h>.json``
==========================  ========================================================================

``<h>`` hashes the configuration a result depends on. Every artefact goes through
:func:`~dplib.experiments.cache.cached`, so a killed run resumes after its last complete artefact
(an interrupted pretraining from its last epoch).

A row: ``setup``, ``seed``, ``criterion``, ``allocation`` (``fixed``: widths given; ``greedy``,
``uniform``, ``measured``: the rules of :func:`dplib.choose_widths`; ``global``:
Torch-Pruning's global pruning), ``budget``, ``widths``, ``params``, ``macs``, ``base_macs``,
``pruned_val``, ``pruned_test`` (right after pruning, BatchNorm re-estimated on fixed training
batches), ``allocation_seconds``, ``finetuned_val``, ``finetuned_test``, ``finetune_epochs``,
``speedup`` (deployed, CPU; one measurement per architecture in a run), ``seconds``. Decisions
read validation accuracy; test accuracy is reported only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from .. import criteria, data, measure, models
from ..budget import Measured, Rule, choose_widths
from ..importance import Importance, format_widths, parse_widths
from ..pruned import save_pruned
from ..settings import DirichletSettings, TrainSettings
from ..surgery import prune, widths_of
from ..train import (
    CheckpointError,
    copy_state,
    evaluate,
    fit,
    load_checkpoint,
    recalibrate_batchnorm,
    save_checkpoint,
)
from .cache import Log, cached, code_version, config_hash, log_line

# a budget's allocations: row name -> the rule of dplib.choose_widths (a name in
# dplib.budget.RULES), or a function of the base network that makes the rule
ALLOCATIONS: dict[str, str | Callable[[Base], Rule]] = {
    "greedy": "greedy",
    "uniform": "uniform",
    "measured": lambda base: Measured(recalibration_loader(base)),  # alike for every criterion
}
FIXED = "fixed"  # widths given by hand (the reference code's, the notebooks' settings)
GLOBAL = "global"  # Torch-Pruning's global pruning to the budget (its tp_ criteria only)
# The networks the kit trains in channels-last memory on the CPU: LeNet-5 pretrains and learns its
# importance about 1.5x faster; the BatchNorm LeNet-5 is slower (figures/bench/channels_last.md).
CHANNELS_LAST = ("lenet5",)


@dataclass(frozen=True)
class Experiment:
    """A network on a data set, its schedules, and how its pruned networks are measured."""

    model: str
    dataset: str
    pretraining: TrainSettings = TrainSettings(epochs=3.0)
    importance: DirichletSettings = DirichletSettings()
    finetuning: TrainSettings = TrainSettings(lr=0.01, schedule="constant", keep_best=False)
    batch_size: int = 128
    pad_to: int | None = None  # pad the images (28x28) to this size, e.g. 32 for resnet20
    width_multiplier: float | None = None  # CIFAR networks only
    coupled: bool = False  # also prune the residual-coupled groups, as one unit set each
    subset: int | None = None  # training images used (None: all)
    eval_subset: int | None = None  # validation and test images used (None: all)
    taylor_batches: int = 20  # mini-batches read by the data-driven criteria
    recalibration_batches: int = 20  # BatchNorm re-estimation after surgery
    speedup_batch: int | None = None  # measure each pruned network's deployed CPU speed-up
    speedup_repeats: int = 10
    speedup_rounds: int = 3
    keep_pruned: bool = False  # save each fine-tuned pruned network (dplib.save_pruned)
    device: str = "auto"  # where training runs (auto: a GPU when there is one)
    data_device: str | None = None  # hold the images there (e.g. "cuda": no copies per batch)
    widths: tuple[str, ...] = ()  # fixed widths compared besides the budgets
    shared_base: bool = False  # every seed prunes seed 0's base network (its own importance)

    @classmethod
    def make(
        cls,
        model: str,
        dataset: str,
        epochs: tuple[float, float, float],
        *,
        shared: dict[str, Any] | None = None,
        pretraining: dict[str, Any] | None = None,
        importance: dict[str, Any] | None = None,
        finetuning: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Experiment:
        """The experiment of (pretraining, importance, fine-tuning) ``epochs``: the ``shared``
        knobs (e.g. ``channels_last``) go to the three settings, the other dicts to one each."""
        knobs = [{"epochs": count, **(shared or {})} for count in epochs]
        return cls(
            model,
            dataset,
            pretraining=TrainSettings(**knobs[0], **(pretraining or {})),
            importance=DirichletSettings(**knobs[1] | (importance or {})),
            finetuning=TrainSettings(**knobs[2], **(finetuning or {})),
            **fields,
        )

    @property
    def name(self) -> str:
        """``<dataset>-<model>``, the dataset suffixed by the padded size (``32``)."""
        return f"{self.dataset}{self.pad_to or ''}-{self.model}"

    def replace(self, **changes: Any) -> Experiment:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def network(self, seed: int | None = None, widths: str | None = None) -> nn.Module:
        """The network, freshly initialised (with ``seed``), or its architecture at ``widths``."""
        options: dict[str, Any] = {"width_multiplier": self.width_multiplier}
        if self.pad_to:  # a CIFAR network on grey images
            options["in_channels"] = 1
        return models.build(self.model, seed=seed, widths=widths, **options)


@dataclass
class Base:
    """One seed of an experiment: its data, pretrained network, folder and measurements."""

    experiment: Experiment
    seed: int
    folder: Path
    loaders: data.Loaders
    model: nn.Module
    metrics: dict[str, Any]
    key: str  # the hash of the pretraining's configuration
    reused: bool = False
    input_shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.input_shape = (1, *self.loaders.splits.train.tensors[0].shape[1:])

    @property
    def checkpoint(self) -> Path:
        """The base network's file (in seed 0's folder when the seeds share it)."""
        seed = 0 if self.experiment.shared_base else self.seed
        return self.folder.with_name(f"seed{seed}") / f"base-{self.key}.pt"


def loaders(experiment: Experiment, seed: int) -> data.Loaders:
    """The experiment's data for ``seed``: its subsets, padded, on its data device."""
    sizes = {name: getattr(experiment, name) for name in ("batch_size", "subset", "eval_subset")}
    found = data.loaders(experiment.dataset, seed=seed, **sizes)
    splits = found.splits
    for split in ("train", "val", "test") if experiment.pad_to or experiment.data_device else ():
        images, labels = getattr(splits, split).tensors
        if experiment.pad_to:
            margin = (experiment.pad_to - images.shape[-1]) // 2
            images = F.pad(images, (margin,) * 4, value=float(images.min()))
        if experiment.data_device:
            images, labels = images.to(experiment.data_device), labels.to(experiment.data_device)
        setattr(splits, split, TensorDataset(images, labels))
    return data.Loaders(
        train=data.make_loader(splits.train, experiment.batch_size, shuffle=True, seed=seed),
        val=data.make_loader(splits.val, 1000, shuffle=False),
        test=data.make_loader(splits.test, 1000, shuffle=False),
        splits=splits,
    )


# the method modules each stage runs: a changed statement in them rebuilds the stage's artefacts
PRETRAINING_CODE = ("models", "data", "loop", "train")
IMPORTANCE_CODE = (*PRETRAINING_CODE, "criteria", "gates", "attach", "vi", "importance")
IMPORTANCE_CODE += ("torch_pruning",)
ROW_CODE = (*PRETRAINING_CODE, "budget", "measured", "surgery", "measure")


def pretraining_key(experiment: Experiment, seed: int) -> dict[str, Any]:
    """What the base network depends on (its hash names the checkpoint)."""
    return {
        "code": code_version(*PRETRAINING_CODE),
        "model": experiment.model,
        "dataset": experiment.name,
        "width_multiplier": experiment.width_multiplier,
        "pretraining": experiment.pretraining.to_dict(),
        "batch_size": experiment.batch_size,
        "seed": seed,
        "subset": experiment.subset,
        "eval_subset": experiment.eval_subset,
    }


Training = Callable[[nn.Module, data.Loaders], dict[str, Any]]  # (model, loaders) -> history


def pretrain(
    experiment: Experiment,
    root: str | Path,
    seed: int = 0,
    *,
    log: Log = log_line,
    train: Training | None = None,
) -> Base:
    """Train the base network of ``seed`` (or reuse it) and measure it. ``train(model,
    loaders)`` trains it (01_pretrain passes its call of :func:`dplib.fit`, in view; by default
    the kit's, resumable from the last complete epoch); the cache keys on the experiment."""
    base_seed = 0 if experiment.shared_base else seed
    found, key = loaders(experiment, seed), pretraining_key(experiment, base_seed)
    digest = config_hash(key)
    folder = Path(root) / experiment.name / f"seed{seed}"
    path = folder.with_name(f"seed{base_seed}") / f"base-{digest}.pt"
    train = train or _resumable(experiment, base_seed, path, log)
    result = cached(
        path,
        key,
        lambda: _train_base(experiment, loaders(experiment, base_seed), base_seed, train, log),
        save=lambda model, target: save_checkpoint(target, model, model_name=experiment.model),
        load=lambda source, _: _load_base(experiment, source),
        log=log,
    )
    if result.reused:
        log(f"{experiment.name} seed {seed}: reusing {path.name}")
    training_state(path).unlink(missing_ok=True)  # a stale one, once the network exists
    return Base(
        experiment, seed, folder, found, result.value, result.meta["metrics"], digest, result.reused
    )


def training_state(checkpoint: Path) -> Path:
    """Where the pretraining of ``checkpoint`` keeps its state between epochs (hidden: it is
    not an artefact, and it is removed once the network is trained)."""
    return checkpoint.with_name(f".{checkpoint.stem}.training.pt")


def _load_base(experiment: Experiment, path: Path) -> nn.Module:
    model = experiment.network()
    load_checkpoint(path, model)
    return model.eval()


def _resumable(experiment: Experiment, seed: int, checkpoint: Path, log: Log) -> Training:
    """The kit's pretraining: :func:`dplib.fit`, its state saved after every epoch beside
    ``checkpoint`` (resumed when found, started afresh when damaged, removed at the end)."""
    state = training_state(checkpoint)

    def train(model: nn.Module, found: data.Loaders) -> dict[str, Any]:
        options = {"val_loader": found.val, "device": experiment.device, "seed": seed}
        initial = copy_state(model)
        try:
            history = fit(model, found.train, experiment.pretraining, checkpoint=state, **options)
        except CheckpointError as error:
            log(f"cannot resume from {state.name} ({error}): pretraining afresh")
            state.unlink(missing_ok=True)
            model.load_state_dict(initial)
            history = fit(model, found.train, experiment.pretraining, checkpoint=state, **options)
        state.unlink(missing_ok=True)
        return history

    return train


def _train_base(
    experiment: Experiment, found: data.Loaders, seed: int, train: Training, log: Log
) -> tuple[nn.Module, dict[str, Any]]:
    """A fresh network of ``seed``, trained by ``train``; its measurements."""
    log(f"{experiment.name} seed {seed}: pretraining {experiment.pretraining.epochs:g} epochs")
    model = experiment.network(seed)
    history = train(model, found)
    model.cpu().eval()
    counted = measure.count(model, (1, *found.splits.train.tensors[0].shape[1:]))
    metrics = {
        "val": evaluate(model, found.val, "cpu")["accuracy"],
        "test": evaluate(model, found.test, "cpu")["accuracy"],
        **counted._asdict(),
        "widths": format_widths(widths_of(model)),
        "seconds": history["seconds"],
        "seconds_per_epoch": history["seconds_per_epoch"],
        "data_source": found.splits.source,
        "data_sizes": found.splits.sizes,
    }
    log(f"{experiment.name} seed {seed}: test accuracy {metrics['test']:.4f}")
    return model, {"metrics": metrics, "history": history}


Scoring = Callable[[nn.Module, data.Loaders], Importance]  # (model, loaders) -> importance


def score(
    base: Base, criterion: str, *, log: Log = log_line, compute: Scoring | None = None
) -> Importance:
    """``criterion``'s importance of the base network (cached), with its cost in seconds in
    ``history["seconds_total"]``. ``compute(model, loaders)`` computes it (the notebooks pass
    their own calls of dplib, in view); by default :func:`dplib.criteria.compute` with what the
    experiment gives the criterion. The cache keys on the experiment, not on ``compute``."""
    experiment, registered = base.experiment, criteria.get(criterion)
    # what the experiment gives the criterion: those of its options the criterion takes
    options = registered.taking(
        seed=base.seed,
        device=experiment.device,
        coupled=experiment.coupled,
        batches=experiment.taylor_batches,
        settings=experiment.importance,
        input_shape=base.input_shape,
    )
    plain = {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in options.items()}
    key = {"base": base.key, "criterion": criterion, "code": code_version(*IMPORTANCE_CODE)}
    key |= plain

    def build() -> tuple[Importance, dict[str, Any]]:
        started = time.perf_counter()
        data_loader = base.loaders.train if registered.needs_data else None
        if data_loader is not None:  # the seed's first batches, whatever ran before (Taylor)
            data.reseed(data_loader, base.seed)
        if compute is not None:
            importance = compute(base.model, base.loaders)
        else:
            importance = criteria.compute(criterion, base.model, data_loader, **options)
        importance.history["seconds_total"] = time.perf_counter() - started
        return importance, {"seconds": importance.history["seconds_total"]}

    return cached(
        base.folder / f"importance-{criterion}-{config_hash(key)}.pt",
        key,
        build,
        save=lambda importance, path: importance.save(path),
        load=lambda path, _: Importance.load(path),
        log=log,
    ).value


def prune_and_finetune(
    base: Base,
    criterion: str,
    importance: Importance,
    budget: str,
    allocation: str = FIXED,
    *,
    finetune: bool = True,
    finetune_seed: int | None = None,
) -> dict[str, Any]:
    """The row of one pruned network: pruned to ``budget`` (widths, or a budget allocated by
    ``allocation``), measured right after pruning and after the experiment's fine-tuning
    (``finetune=False``: not fine-tuned; ``finetune_seed``: the order of its training data, by
    default the base's seed). Cached; the module docstring gives the row's keys."""
    experiment = base.experiment
    key = {
        "base": base.key,
        "criterion": criterion,
        "importance": fingerprint(importance),
        "budget": budget,
        "allocation": allocation,
        "finetuning": experiment.finetuning.to_dict() if finetune else None,
        "measure": [experiment.recalibration_batches, experiment.speedup_batch],
        "code": code_version(*ROW_CODE),
    }
    if finetune_seed is not None:  # absent otherwise: the rows cached before keep their keys
        key["finetune_seed"] = finetune_seed
    name = f"{criterion}-{allocation}-{config_hash(key)}.json"
    path = base.folder / "results" / name

    def build() -> tuple[None, dict[str, Any]]:
        started = time.perf_counter()
        row, small = _pruned_row(base, criterion, importance, budget, allocation)
        if finetune:
            row |= _finetuned(base, small, base.seed if finetune_seed is None else finetune_seed)
        if experiment.speedup_batch:
            row["speedup"] = _speedup(base, small)
        row["seconds"] = time.perf_counter() - started
        if experiment.keep_pruned:
            save_pruned(path.with_suffix(".pt"), small, **row)
        return None, row

    return cached(path, key, build).value


_SPEEDUPS: dict[tuple, float] = {}  # the speed-ups measured in this process, per architecture


def _speedup(base: Base, small: nn.Module) -> float:
    """The deployed speed-up of ``small`` over the base network, measured once per architecture
    in a process: networks of the same shapes run the same operations whatever their weights,
    so the rows of every criterion at one set of widths share one measurement."""
    experiment = base.experiment
    shape = (experiment.speedup_batch, *base.input_shape[1:])
    architecture = tuple((name, *p.shape) for name, p in small.state_dict().items())
    key = (base.key, shape, experiment.speedup_repeats, experiment.speedup_rounds, architecture)
    if key not in _SPEEDUPS:
        _SPEEDUPS[key] = measure.speedup(
            base.model,
            small,
            shape,
            repeats=experiment.speedup_repeats,
            rounds=experiment.speedup_rounds,
            optimize=True,
        )
    return _SPEEDUPS[key]


def _pruned_row(
    base: Base, criterion: str, importance: Importance, budget: str, allocation: str
) -> tuple[dict[str, Any], nn.Module]:
    """Prune, re-estimate BatchNorm's statistics, count and evaluate: the row so far."""
    started = time.perf_counter()
    if allocation == GLOBAL:
        small, widths = _global(base, criterion, budget)
    elif allocation == FIXED:  # the budget is the widths themselves
        widths = parse_widths(budget, importance.units)
    else:
        rule = ALLOCATIONS[allocation]  # the uniform rule ignores the scores
        rule = rule(base) if callable(rule) else rule
        widths = choose_widths(base.model, importance, budget, rule, base.input_shape)
    if allocation != GLOBAL:
        small = prune(base.model, importance, widths)
    seconds = time.perf_counter() - started  # the allocation's cost (and the surgery's)
    batches = base.experiment.recalibration_batches
    recalibrated = batches and recalibrate_batchnorm(small, recalibration_loader(base), batches)
    counted = measure.count(small, base.input_shape)
    row = {
        "setup": base.experiment.name,
        "seed": base.seed,
        "criterion": criterion,
        "budget": budget,
        "allocation": allocation,
        "widths": format_widths(widths),
        **counted._asdict(),
        "base_macs": base.metrics["macs"],
        "pruned_val": evaluate(small, base.loaders.val)["accuracy"],
        "pruned_test": evaluate(small, base.loaders.test)["accuracy"],
        "batchnorm_recalibrated": bool(recalibrated),
        "allocation_seconds": seconds,
    }
    return row, small


def _global(base: Base, criterion: str, budget: str) -> tuple[nn.Module, dict[str, int]]:
    """Torch-Pruning's global pruning of the base network to ``budget`` (MACs) by ``criterion``
    (``tp_l2`` or ``tp_taylor``: gradients of the seed's first training batches)."""
    from ..torch_pruning import tp_global_prune

    data.reseed(base.loaders.train, base.seed)
    return tp_global_prune(
        base.model,
        budget,
        criterion,
        base.loaders.train,
        batches=base.experiment.taylor_batches,
        input_shape=base.input_shape,
        coupled=base.experiment.coupled,
    )


def _finetuned(base: Base, small: nn.Module, seed: int) -> dict[str, Any]:
    """Fine-tune a pruned network by the experiment's schedule, the data in ``seed``'s order;
    its accuracies afterwards."""
    schedule, device = base.experiment.finetuning, base.experiment.device
    started = time.perf_counter()
    val = base.loaders.val if schedule.keep_best else None
    fit(small, base.loaders.train, schedule, val_loader=val, device=device, seed=seed)
    small.cpu().eval()
    return {
        "finetune_epochs": schedule.epochs,
        "finetune_seconds": time.perf_counter() - started,
        "finetuned_val": evaluate(small, base.loaders.val, "cpu")["accuracy"],
        "finetuned_test": evaluate(small, base.loaders.test, "cpu")["accuracy"],
    }


def recalibration_loader(base: Base) -> torch.utils.data.DataLoader:
    """Fixed training images to re-estimate BatchNorm statistics on, alike for every criterion."""
    batches, size = base.experiment.recalibration_batches, base.experiment.batch_size
    images = data.random_subset(base.loaders.splits.train, batches * size, base.seed)
    return data.make_loader(images, size, shuffle=False)


def fingerprint(importance: Importance) -> str:
    """A short hash of the scores: a result is rebuilt when its importance changed."""
    digest = hashlib.sha256()
    for name in importance.names:
        digest.update(name.encode() + importance.scores[name].double().numpy().tobytes())
    return digest.hexdigest()[:12]
