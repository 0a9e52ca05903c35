"""The stages of the kit, each writing its artefacts under ``runs/<profile>/<dataset>-<model>/``.

=====================  ===================================================================
stage                  artefacts (``<h>``: hash of the configuration that produced them)
=====================  ===================================================================
:func:`pretrain`       ``base-<h>.pt`` (checkpoint), ``base-<h>.json`` (metrics, history)
:func:`importance`     ``importance-dirichlet-<h>.pt`` / ``.json`` (posterior, loss curve)
:func:`feature_maps`   ``feature-maps-<h>.pt`` / ``.json``: first-layer maps of test images
:func:`baseline`       ``importance-<criterion>-<h>.pt`` / ``.json``
:func:`compare`        per criterion and widths ``pruned-<criterion>-<widths>-<h>.pt`` /
                       ``.json`` (pruned, fine-tuned, measured), then ``results-<h>.json``
=====================  ===================================================================

Every stage first calls the stages it needs (each returns at once when its artefact is there),
so any notebook can run on its own. Each artefact goes through
:func:`~dplib.experiments.cache.cached`: reused when its JSON holds the same configuration and
its file reads back; a corrupt or truncated file is reported in the log and rebuilt. Files are
written atomically and the JSON last, so killing a run at any moment leaves only complete
artefacts, and the next run resumes after the last completed one.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import criteria, data, measure, models
from ..budget import choose_widths, split_budget_widths
from ..files import atomic_torch_save
from ..importance import Importance, format_widths
from ..surgery import prune, widths_of
from ..train import CheckpointError, evaluate, fit, load_checkpoint, save_checkpoint
from . import paths, profiles
from .cache import Cached, Log, cached, config_hash, log_line

BASE_CRITERION = "base (unpruned)"


def run_dir(config: profiles.Config) -> Path:
    """``runs/<profile>/<dataset>-<model>/``."""
    return paths.profile_dir(config.profile) / config.name


@dataclass
class Pretrained:
    """The base network and what pretraining measured."""

    model: nn.Module
    metrics: dict[str, Any]
    path: Path
    reused: bool


@dataclass
class Learned:
    """An importance (any criterion) and where it is stored."""

    importance: Importance
    metrics: dict[str, Any]
    path: Path
    reused: bool


@dataclass
class Comparison:
    """Every pruned network's row of measurements (plus the base network's row)."""

    rows: list[dict[str, Any]]
    path: Path
    reused: bool = False


class _Data:
    """Loaders, built on first use only (a reused stage never reads the data set)."""

    def __init__(self, config: profiles.Config) -> None:
        self.config = config
        self._loaders: data.Loaders | None = None

    def __call__(self) -> data.Loaders:
        if self._loaders is None:
            c = self.config
            self._loaders = data.loaders(
                c.dataset,
                batch_size=c.batch_size,
                subset=c.subset,
                eval_subset=c.eval_subset,
                seed=c.seed,
            )
        return self._loaders


def _build(config: profiles.Config, **options: Any) -> nn.Module:
    """The experiment's network (at the profile's width for the CIFAR networks)."""
    return models.build(config.model, width_multiplier=config.width_multiplier, **options)


def _augment(config: profiles.Config) -> bool:
    """Random crops and flips for CIFAR-10, as its schedules expect; none for MNIST-like data."""
    return config.dataset == "cifar10"


def _input_shape(config: profiles.Config, batch: int = 1) -> tuple[int, ...]:
    return (batch, *models.input_shape(config.model))


# Artefacts already read by this process, by path and modification time: later stages ask for
# the base network and the importances again and again, and a reuse is logged once.
_MEMO: dict[Path, tuple[float, Any]] = {}


def _memo_get(path: Path) -> Any:
    held = _MEMO.get(path)
    if held is None or not path.exists() or path.stat().st_mtime != held[0]:
        return None
    return held[1]


def _memo_put(path: Path, value: Any) -> Any:
    _MEMO[path] = (path.stat().st_mtime, value)
    return value


def _reused(stage: str, result: Cached, log: Log) -> None:
    if result.reused:
        log(f"{stage}: reusing {result.path.relative_to(paths.runs_root())}")


# Stage 1: pretraining -----------------------------------------------------------------------
def pretrain_key(config: profiles.Config) -> dict[str, Any]:
    """The settings pretraining depends on (their hash names the artefact)."""
    keys = ("dataset", "model", "seed", "subset", "eval_subset", "batch_size")
    key = {k: getattr(config, k) for k in keys} | {
        "epochs": config.pretrain_epochs,
        "lr": config.pretrain_lr,
    }
    if config.width_multiplier is not None:  # only CIFAR networks have one
        key["width_multiplier"] = config.width_multiplier
    return key


def pretrain(config: profiles.Config, *, log: Log = log_line, loaders=None) -> Pretrained:
    """Train the base network (or reuse it): ``base-<h>.pt`` and ``base-<h>.json``.

    Metrics: validation and test accuracy, parameters, MACs, seconds per epoch.
    """
    key = pretrain_key(config)
    path = run_dir(config) / f"base-{config_hash(key)}.pt"
    if (held := _memo_get(path)) is not None:
        return held
    loaders = loaders or _Data(config)
    result = cached(
        path,
        key,
        lambda: _train_base(config, loaders, path, log),
        save=lambda model, target: save_checkpoint(
            target, model, model_name=config.model, config_hash=config_hash(key)
        ),
        load=lambda source, _: _load_base(config, source),
        log=log,
    )
    _reused("pretrain", result, log)
    path.with_name(f".{path.stem}.training-state.pt").unlink(missing_ok=True)
    return _memo_put(path, Pretrained(result.value, result.meta["metrics"], path, result.reused))


def _load_base(config: profiles.Config, path: Path) -> nn.Module:
    model = _build(config)
    load_checkpoint(path, model)
    return model.eval()


def _train_base(
    config: profiles.Config, loaders: _Data, path: Path, log: Log
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the base network, resuming from the training state of its last complete epoch."""
    log(f"pretrain: training {config.model} on {config.dataset_label}")
    state = path.with_name(f".{path.stem}.training-state.pt")
    options = {
        "epochs": config.pretrain_epochs,
        "lr": config.pretrain_lr,
        "val_loader": loaders().val,
        "device": config.device,
        "seed": config.seed,
        "augment": _augment(config),
        "checkpoint": state,
        "desc": "pretrain",
    }
    model = _build(config, seed=config.seed)
    try:
        history = fit(model, loaders().train, **options)
    except CheckpointError as error:  # a damaged training state: start the pretraining afresh
        log(f"cannot reuse {state.name}: {type(error).__name__}: {error} -- rebuilding it")
        state.unlink(missing_ok=True)
        model = _build(config, seed=config.seed)
        history = fit(model, loaders().train, **options)
    model.cpu().eval()
    metrics = _base_metrics(config, model, loaders(), history)
    log(
        f"pretrain: test accuracy {metrics['test_accuracy']:.4f}, {metrics['params']:,} params, "
        f"{metrics['macs']:,} MACs ({history['seconds']:.0f} s)"
    )
    return model, {"metrics": metrics, "history": history}


def _base_metrics(
    config: profiles.Config, model: nn.Module, loaders: data.Loaders, history: dict[str, Any]
) -> dict[str, Any]:
    counted = measure.count(model, _input_shape(config))
    return {
        "val_accuracy": evaluate(model, loaders.val, "cpu")["accuracy"],
        "test_accuracy": evaluate(model, loaders.test, "cpu")["accuracy"],
        "params": counted.params,
        "macs": counted.macs,
        "widths": "-".join(str(k) for k in widths_of(model).values()),
        "seconds": history["seconds"],
        "seconds_per_epoch": history["seconds_per_epoch"],
        "data_source": loaders.splits.source,
        "data_sizes": loaders.splits.sizes,
    }


# Stage 2: importance ------------------------------------------------------------------------
def importance_key(config: profiles.Config, criterion: str = "dirichlet") -> dict[str, Any]:
    """The settings an importance depends on (pretraining's included)."""
    key: dict[str, Any] = {
        "base": config_hash(pretrain_key(config)),
        "criterion": criterion,
        "seed": config.seed,
    }
    if criterion == "dirichlet":
        key["settings"] = config.dirichlet.to_dict()
    else:
        key["batches"] = config.taylor_batches
    return key


def _importance_path(config: profiles.Config, criterion: str) -> Path:
    key = config_hash(importance_key(config, criterion))
    return run_dir(config) / f"importance-{criterion}-{key}.pt"


def _learned(config: profiles.Config, criterion: str, build, log: Log) -> Learned:
    """The cached importance of ``criterion`` (``build`` computes it and its metrics)."""
    path = _importance_path(config, criterion)
    if (held := _memo_get(path)) is not None:
        return held
    result = cached(
        path,
        importance_key(config, criterion),
        build,
        save=lambda importance, target: importance.save(target),
        load=lambda source, _: Importance.load(source),
        log=log,
    )
    _reused(f"importance ({criterion})", result, log)
    learned = Learned(result.value, result.meta["metrics"], path, result.reused)
    return _memo_put(path, learned)


def importance(config: profiles.Config, *, log: Log = log_line, loaders=None) -> Learned:
    """Attach Dirichlet gates to the base network and learn their posteriors (or reuse them),
    with the experiment's :class:`dplib.DirichletSettings` (``config.dirichlet``)."""
    loaders = loaders or _Data(config)
    base = pretrain(config, log=log, loaders=loaders)

    def build() -> tuple[Importance, dict[str, Any]]:
        log(f"importance: learning the Dirichlet posteriors for {config.dirichlet.epochs:g} epochs")
        learned = criteria.compute(
            "dirichlet",
            base.model,
            loaders().train,
            settings=config.dirichlet,
            device=config.device,
            seed=config.seed,
        )
        seconds = learned.history["seconds"]
        log(f"importance: learned in {seconds:.1f} s ({len(learned.history['loss'])} steps)")
        epoch_seconds = max(base.metrics["seconds_per_epoch"], 1e-9)
        return learned, {
            "metrics": {
                "seconds": seconds,
                "fraction_of_training_epoch": seconds
                / epoch_seconds
                / max(config.dirichlet.epochs, 1e-9),
                "final_cross_entropy": learned.history["cross_entropy"][-1],
                "steps": len(learned.history["loss"]),
            }
        }

    return _learned(config, "dirichlet", build, log)


def baseline(
    config: profiles.Config, criterion: str, *, log: Log = log_line, loaders=None
) -> Learned:
    """A registered criterion's importance of the base network (Dirichlet: :func:`importance`)."""
    if criterion == "dirichlet":
        return importance(config, log=log, loaders=loaders)
    loaders = loaders or _Data(config)
    base = pretrain(config, log=log, loaders=loaders)

    def build() -> tuple[Importance, dict[str, Any]]:
        started = time.perf_counter()
        learned = criteria.compute(
            criterion,
            base.model,
            loaders().train if criteria.get(criterion).needs_data else None,
            seed=config.seed,
            batches=config.taylor_batches,
            device=config.device,
        )
        return learned, {"metrics": {"seconds": time.perf_counter() - started}}

    return _learned(config, criterion, build, log)


# Interpretability: first-layer feature maps -------------------------------------------------
def feature_maps(
    config: profiles.Config, *, per_class: int = 1, log: Log = log_line, loaders=None
) -> Path | None:
    """Save the first prunable layer's feature maps of ``per_class`` test images per class.

    Stored with the images, labels, class names and the Dirichlet importance of that layer, so
    the interpretability figure reads only ``runs/``. Returns None when the first prunable layer
    is not a convolution (nothing to show as maps).
    """
    loaders = loaders or _Data(config)
    learned = importance(config, log=log, loaders=loaders)
    base = pretrain(config, log=log, loaders=loaders)
    layer = learned.importance.names[0]
    if not isinstance(base.model.get_submodule(layer), nn.Conv2d):
        return None
    key = {"importance": config_hash(importance_key(config)), "per_class": per_class}
    result = cached(
        run_dir(config) / f"feature-maps-{config_hash(key)}.pt",
        key,
        lambda: _capture_maps(config, base.model, learned.importance, loaders(), per_class),
        save=lambda payload, target: atomic_torch_save(payload, target),
        load=lambda source, _: torch.load(source, map_location="cpu", weights_only=True),
        log=log,
    )
    return result.path


def _capture_maps(
    config: profiles.Config,
    model: nn.Module,
    learned: Importance,
    loaders: data.Loaders,
    per_class: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first layer's maps of a few test images, with what the figure needs to draw them."""
    layer = learned.names[0]
    images, labels = loaders.splits.test.tensors
    chosen = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(10)])
    captured: dict[str, torch.Tensor] = {}
    conv = model.get_submodule(layer)
    handle = conv.register_forward_hook(lambda m, i, o: captured.setdefault("maps", o.detach()))
    with torch.no_grad():
        model.eval()(images[chosen])
    handle.remove()
    spec = loaders.splits.spec
    payload = {
        "layer": layer,
        "images": images[chosen] * torch.tensor(spec.std).view(1, -1, 1, 1)
        + torch.tensor(spec.mean).view(1, -1, 1, 1),
        "labels": labels[chosen],
        "maps": captured["maps"],
        "importance": learned.mean(layer),
        "std": learned.std(layer) if learned.concentration else None,
    }
    meta = {
        "layer": layer,
        "classes": list(spec.classes),
        "dataset": config.dataset_label,
        "model": config.model,
    }
    return payload, meta


# Stage 3: prune, fine-tune, measure ---------------------------------------------------------
def _row_key(config: profiles.Config, criterion: str, widths: str) -> dict[str, Any]:
    return {
        "importance": config_hash(importance_key(config, criterion)),
        "widths": widths,
        "finetune_epochs": config.finetune_epochs,
        "finetune_lr": config.finetune_lr,
        "speedup": [config.speedup_batch, config.speedup_repeats, config.speedup_rounds],
    }


def base_row(config: profiles.Config, base: Pretrained) -> dict[str, Any]:
    """The unpruned network's row of the results table."""
    return {
        "network": config.model,
        "dataset": config.dataset_label,
        "criterion": BASE_CRITERION,
        "widths": base.metrics["widths"],
        "accuracy_pruned": base.metrics["test_accuracy"],
        "accuracy": base.metrics["test_accuracy"],
        "error": 100 * (1 - base.metrics["test_accuracy"]),
        "error_pruned": 100 * (1 - base.metrics["test_accuracy"]),
        "params": base.metrics["params"],
        "macs": base.metrics["macs"],
        "params_ratio": 1.0,
        "macs_ratio": 1.0,
        "speedup": 1.0,
        "profile": config.profile,
    }


def prune_and_finetune(
    config: profiles.Config,
    criterion: str,
    widths: str,
    *,
    log: Log = log_line,
    loaders=None,
) -> dict[str, Any]:
    """Prune the base network to ``widths`` by ``criterion``, fine-tune it, measure it.

    Writes ``pruned-<criterion>-<widths>-<h>.pt`` (weights; rebuild the architecture with
    ``dplib.models.build(model, widths=widths)``) and its ``.json`` row: test accuracy right
    after pruning and after fine-tuning, parameters, MACs, measured CPU speed-up at batch 64.
    """
    loaders = loaders or _Data(config)
    key = _row_key(config, criterion, widths)
    name = f"pruned-{criterion}-{widths.replace(':', '-')}-{config_hash(key)}.pt"
    result = cached(
        run_dir(config) / name,
        key,
        lambda: _prune_finetune_measure(config, criterion, widths, loaders, log),
        save=lambda pruned, target: save_checkpoint(
            target, pruned, model_name=config.model, widths=widths, config_hash=config_hash(key)
        ),
        load=lambda source, meta: load_checkpoint(
            source, _build(config, widths=meta["row"]["widths"])
        ),
        log=log,
    )
    return result.meta["row"]


def _allocated_widths(
    config: profiles.Config, base: Pretrained, learned: Learned, widths: str
) -> tuple[str, str | None]:
    """``widths`` as kept units, a budget ("macs:4x") allocated by the criterion's own scores;
    and the budget in words (None for fixed widths)."""
    budget = split_budget_widths(widths)
    if budget is None:
        return widths, None
    what, target = budget
    chosen = choose_widths(
        base.model,
        learned.importance,
        input_shape=_input_shape(config),
        **{f"target_{what}": target},
    )
    return format_widths(chosen), f"{what} {target} fewer"


def _prune_finetune_measure(
    config: profiles.Config, criterion: str, widths: str, loaders: _Data, log: Log
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune, evaluate, fine-tune, evaluate and measure one (criterion, widths)."""
    base = pretrain(config, log=log, loaders=loaders)
    learned = baseline(config, criterion, log=log, loaders=loaders)
    started = time.perf_counter()
    widths, budget = _allocated_widths(config, base, learned, widths)
    pruned = prune(base.model, learned.importance, widths)
    before = evaluate(pruned, loaders().test, "cpu")["accuracy"]
    fit(
        pruned,
        loaders().train,
        epochs=config.finetune_epochs,
        lr=config.finetune_lr,
        val_loader=loaders().val,
        device=config.device,
        seed=config.seed,
        augment=_augment(config),
        desc=f"fine-tune {criterion} {widths}",
    )
    pruned.cpu().eval()
    after = evaluate(pruned, loaders().test, "cpu")["accuracy"]
    row = _pruned_row(config, base, pruned, criterion, widths, budget, (before, after))
    row["seconds"] = time.perf_counter() - started
    log(
        f"{criterion:>9} {widths:>12}: accuracy {before:.4f} -> {after:.4f} after fine-tuning, "
        f"{row['params']:,} params, {row['speedup']:.2f}x faster"
    )
    return pruned, {"row": row}


def _pruned_row(
    config: profiles.Config,
    base: Pretrained,
    pruned: nn.Module,
    criterion: str,
    widths: str,
    budget: str | None,
    accuracies: tuple[float, float],
) -> dict[str, Any]:
    """The results-table row of a pruned network: accuracies, size, measured speed-up."""
    before, after = accuracies
    counted = measure.count(pruned, _input_shape(config))
    speedup = measure.speedup(
        base.model,
        pruned,
        _input_shape(config, config.speedup_batch),
        repeats=config.speedup_repeats,
        rounds=config.speedup_rounds,
    )
    return base_row(config, base) | {
        "criterion": criterion,
        "widths": widths,
        "budget": budget,
        "accuracy_pruned": before,
        "accuracy": after,
        "error_pruned": 100 * (1 - before),
        "error": 100 * (1 - after),
        "params": counted.params,
        "macs": counted.macs,
        "params_ratio": base.metrics["params"] / counted.params,
        "macs_ratio": base.metrics["macs"] / counted.macs,
        "speedup": speedup,
    }


def compare(config: profiles.Config, *, log: Log = log_line) -> Comparison:
    """Every criterion at every widths setting through the same surgery; ``results-<h>.json``.

    Rows that exist are reused, so an interrupted comparison resumes where it stopped.
    """
    loaders = _Data(config)
    keys = [_row_key(config, c, w) for w in config.widths for c in config.criteria]

    def build() -> tuple[None, dict[str, Any]]:
        rows = [base_row(config, pretrain(config, log=log, loaders=loaders))]
        for widths in config.widths:
            for criterion in config.criteria:
                rows.append(prune_and_finetune(config, criterion, widths, log=log, loaders=loaders))
        return None, {"rows": rows}

    result = cached(run_dir(config) / f"results-{config_hash(keys)}.json", keys, build, log=log)
    _reused("compare", result, log)
    return Comparison(result.value["rows"], result.path, result.reused)


def architecture_table(config: profiles.Config) -> list[dict[str, Any]]:
    """Parameters and MACs of the base network and of each pruned architecture of ``config``.

    Exact and deterministic (no training): the surgery's result depends only on the widths.
    """
    shape = _input_shape(config)
    base = _build(config)
    rows = [{"widths": "-".join(str(k) for k in widths_of(base).values()), **_counted(base, shape)}]
    for widths in config.widths:
        if split_budget_widths(widths) is None:  # a budget's widths depend on the criterion
            rows.append({"widths": widths, **_counted(_build(config, widths=widths), shape)})
    return rows


def _counted(model: nn.Module, shape: tuple[int, ...]) -> dict[str, int]:
    counted = measure.count(model, shape)
    return {"params": counted.params, "macs": counted.macs}


def run_all(config: profiles.Config, *, log: Log = log_line) -> Comparison:
    """Every stage of one experiment: pretrain, importance, feature maps, compare."""
    importance(config, log=log)
    feature_maps(config, log=log)
    return compare(config, log=log)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m dplib.experiments.stages --profile smoke --stage compare``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument(
        "--stage", default="all", choices=["pretrain", "importance", "compare", "all"]
    )
    parser.add_argument("--widths", nargs="*", default=None)
    parser.add_argument("--criteria", nargs="*", default=None)
    args = parser.parse_args(argv)
    config = profiles.resolve(
        args.profile, args.dataset, args.model, widths=args.widths, criteria=args.criteria
    )
    log_line(profiles.describe(config))
    stage = {"pretrain": pretrain, "importance": importance, "compare": compare, "all": run_all}
    stage[args.stage](config)


if __name__ == "__main__":
    main()
