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
so any notebook can run on its own. A stage is reused when its JSON exists and its files read
back; a corrupt or truncated file is reported in the log and rebuilt. Files are written
atomically and the JSON last, so killing a run at any moment leaves only complete artefacts,
and the next run resumes after the last completed one.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import artefacts, data, measure, models, profiles
from .attach import attach_gates
from .baselines import baseline_importance
from .budget import choose_widths, split_budget_widths
from .importance import Importance, atomic_torch_save, format_widths
from .surgery import prune, widths_of
from .train import CheckpointError, evaluate, fit, load_checkpoint, save_checkpoint
from .vi import learn_importance

Log = Callable[[str], None]
BASE_CRITERION = "base (unpruned)"


def log_line(message: str) -> None:
    """The pipeline's log: one line on stdout (papermill copies it into its log)."""
    print(f"[dplib] {message}", flush=True)


def run_dir(config: profiles.Config) -> Path:
    """``runs/<profile>/<dataset>-<model>/``."""
    return artefacts.profile_dir(config.profile) / config.name


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
    rebuilt: list[str] = field(default_factory=list)


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


def _complete(meta: Path, log: Log) -> dict[str, Any] | None:
    """The JSON of a finished stage, or None (missing or unreadable: the stage runs)."""
    if not meta.exists():
        return None
    try:
        return artefacts.read_json(meta)
    except ValueError as error:
        log(f"{error}")
        return None


def _rebuilding(path: Path, error: Exception, log: Log) -> None:
    log(f"cannot reuse {path.name}: {type(error).__name__}: {error} -- rebuilding it")


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
    key = artefacts.config_hash(pretrain_key(config))
    folder = run_dir(config)
    path, meta = folder / f"base-{key}.pt", folder / f"base-{key}.json"
    if (held := _memo_get(path)) is not None:
        return held
    done = _complete(meta, log)
    if done is not None:
        model = _build(config)
        try:
            load_checkpoint(path, model)
            log(f"pretrain: reusing {path.relative_to(artefacts.runs_root())}")
            return _memo_put(path, Pretrained(model.eval(), done["metrics"], path, True))
        except (CheckpointError, FileNotFoundError) as error:
            _rebuilding(path, error, log)
    loaders = loaders or _Data(config)
    log(f"pretrain: training {config.model} on {config.dataset_label}")
    model = _build(config, seed=config.seed)
    # the training state of every completed epoch: a killed long pretraining resumes from it
    state = folder / f".base-{key}.training-state.pt"
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
    try:
        history = fit(model, loaders().train, **options)
    except CheckpointError as error:  # a damaged training state: start the pretraining afresh
        _rebuilding(state, error, log)
        state.unlink(missing_ok=True)
        model = _build(config, seed=config.seed)
        history = fit(model, loaders().train, **options)
    model.cpu().eval()
    counted = measure.count(model, _input_shape(config))
    metrics = {
        "val_accuracy": evaluate(model, loaders().val, "cpu")["accuracy"],
        "test_accuracy": evaluate(model, loaders().test, "cpu")["accuracy"],
        "params": counted.params,
        "macs": counted.macs,
        "widths": "-".join(str(k) for k in widths_of(model).values()),
        "seconds": history["seconds"],
        "seconds_per_epoch": history["seconds_per_epoch"],
        "data_source": loaders().splits.source,
        "data_sizes": loaders().splits.sizes,
    }
    save_checkpoint(path, model, model_name=config.model, config_hash=key)
    artefacts.write_json(
        meta, {"config": pretrain_key(config), "metrics": metrics, "history": history}
    )
    state.unlink(missing_ok=True)
    log(
        f"pretrain: test accuracy {metrics['test_accuracy']:.4f}, {metrics['params']:,} params, "
        f"{metrics['macs']:,} MACs ({history['seconds']:.0f} s)"
    )
    return _memo_put(path, Pretrained(model, metrics, path, False))


# Stage 2: importance ------------------------------------------------------------------------
def importance_key(config: profiles.Config, criterion: str = "dirichlet") -> dict[str, Any]:
    """The settings an importance depends on (pretraining's included)."""
    key: dict[str, Any] = {
        "base": artefacts.config_hash(pretrain_key(config)),
        "criterion": criterion,
    }
    if criterion == "dirichlet":
        names = ("alpha0", "kl_weight", "kl_divided_by_n", "phi_init", "gate_scale")
        names += ("estimator", "samples")
        key |= {k: getattr(config, k) for k in names}
        key |= {"epochs": config.importance_epochs, "lr": config.importance_lr}
    if criterion in ("random", "dirichlet"):
        key["seed"] = config.seed
    if criterion == "taylor":
        key["batches"] = config.taylor_batches
    return key


def _load_importance(path: Path, meta: Path, log: Log) -> Learned | None:
    if (held := _memo_get(path)) is not None:
        return held
    done = _complete(meta, log)
    if done is None:
        return None
    try:
        learned = Importance.load(path)
    except (ValueError, FileNotFoundError) as error:
        _rebuilding(path, error, log)
        return None
    log(f"importance ({learned.criterion}): reusing {path.relative_to(artefacts.runs_root())}")
    return _memo_put(path, Learned(learned, done["metrics"], path, True))


def importance(config: profiles.Config, *, log: Log = log_line, loaders=None) -> Learned:
    """Attach Dirichlet gates to the base network and learn their posteriors (or reuse them).

    The settings are the profile's named knobs (gate scale, phi_init, alpha0, kl_weight, lr,
    estimator, samples, epochs).
    """
    loaders = loaders or _Data(config)
    base = pretrain(config, log=log, loaders=loaders)
    key = artefacts.config_hash(importance_key(config))
    folder = run_dir(config)
    path = folder / f"importance-dirichlet-{key}.pt"
    meta = path.with_suffix(".json")
    reused = _load_importance(path, meta, log)
    if reused is not None:
        return reused
    log(f"importance: learning the Dirichlet posteriors for {config.importance_epochs:g} epochs")
    gated = attach_gates(base.model, phi_init=config.phi_init, scale=config.gate_scale)
    learned = learn_importance(
        gated,
        loaders().train,
        epochs=config.importance_epochs,
        alpha0=config.alpha0,
        kl_weight=config.kl_weight,
        kl_divided_by_n=config.kl_divided_by_n,
        samples=config.samples,
        estimator=config.estimator,
        lr=config.importance_lr,
        device=config.device,
        seed=config.seed,
    )
    gated.remove()
    seconds = learned.history["seconds"]
    metrics = {
        "seconds": seconds,
        "fraction_of_training_epoch": seconds
        / max(base.metrics["seconds_per_epoch"], 1e-9)
        / max(config.importance_epochs, 1e-9),
        "final_cross_entropy": learned.history["cross_entropy"][-1],
        "steps": len(learned.history["loss"]),
    }
    learned.save(path)
    artefacts.write_json(meta, {"config": importance_key(config), "metrics": metrics})
    log(f"importance: learned in {seconds:.1f} s ({metrics['steps']} steps)")
    return _memo_put(path, Learned(learned, metrics, path, False))


def baseline(
    config: profiles.Config, criterion: str, *, log: Log = log_line, loaders=None
) -> Learned:
    """A baseline criterion's importance for the base network (or the Dirichlet one)."""
    if criterion == "dirichlet":
        return importance(config, log=log, loaders=loaders)
    loaders = loaders or _Data(config)
    base = pretrain(config, log=log, loaders=loaders)
    key = artefacts.config_hash(importance_key(config, criterion))
    path = run_dir(config) / f"importance-{criterion}-{key}.pt"
    meta = path.with_suffix(".json")
    reused = _load_importance(path, meta, log)
    if reused is not None:
        return reused
    started = time.perf_counter()
    needs_data = criterion in ("taylor", "oracle")
    learned = baseline_importance(
        criterion,
        base.model,
        loaders().train if needs_data else None,
        seed=config.seed,
        batches=config.taylor_batches if criterion == "taylor" else None,
        device=config.device,
    )
    metrics = {"seconds": time.perf_counter() - started}
    learned.save(path)
    artefacts.write_json(meta, {"config": importance_key(config, criterion), "metrics": metrics})
    return _memo_put(path, Learned(learned, metrics, path, False))


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
    conv = base.model.get_submodule(layer)
    if not isinstance(conv, nn.Conv2d):
        return None
    key = artefacts.config_hash(
        {"importance": artefacts.config_hash(importance_key(config)), "per_class": per_class}
    )
    path = run_dir(config) / f"feature-maps-{key}.pt"
    meta = path.with_suffix(".json")
    if _complete(meta, log) is not None:
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            return path
        except Exception as error:
            _rebuilding(path, error, log)
    test = loaders().splits.test
    images, labels = test.tensors
    chosen = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(10)])
    captured: dict[str, torch.Tensor] = {}
    handle = conv.register_forward_hook(lambda m, i, o: captured.setdefault("maps", o.detach()))
    with torch.no_grad():
        base.model.eval()(images[chosen])
    handle.remove()
    spec = loaders().splits.spec
    payload = {
        "layer": layer,
        "images": images[chosen] * torch.tensor(spec.std).view(1, -1, 1, 1)
        + torch.tensor(spec.mean).view(1, -1, 1, 1),
        "labels": labels[chosen],
        "maps": captured["maps"],
        "importance": learned.importance.mean(layer),
        "std": learned.importance.std(layer) if learned.importance.concentration else None,
    }
    atomic_torch_save(payload, path)
    artefacts.write_json(
        meta,
        {
            "layer": layer,
            "classes": list(spec.classes),
            "dataset": config.dataset_label,
            "model": config.model,
        },
    )
    return path


# Stage 3: prune, fine-tune, measure ---------------------------------------------------------
def _row_key(config: profiles.Config, criterion: str, widths: str) -> dict[str, Any]:
    return {
        "importance": artefacts.config_hash(importance_key(config, criterion)),
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
    key = artefacts.config_hash(_row_key(config, criterion, widths))
    path = run_dir(config) / f"pruned-{criterion}-{widths.replace(':', '-')}-{key}.pt"
    meta = path.with_suffix(".json")
    done = _complete(meta, log)
    if done is not None:
        try:
            load_checkpoint(path, _build(config, widths=done["row"]["widths"]))
            return done["row"]
        except (CheckpointError, FileNotFoundError) as error:
            _rebuilding(path, error, log)
    base = pretrain(config, log=log, loaders=loaders)
    learned = baseline(config, criterion, log=log, loaders=loaders)
    started = time.perf_counter()
    budget = split_budget_widths(widths)
    if budget is not None:  # this criterion's own allocation of the budget
        what, target = budget
        chosen = choose_widths(
            base.model,
            learned.importance,
            input_shape=_input_shape(config),
            **{f"target_{what}": target},
        )
        widths, budget = format_widths(chosen), f"{what} {target} fewer"
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
    counted = measure.count(pruned, _input_shape(config))
    speedup = measure.speedup(
        base.model,
        pruned,
        _input_shape(config, config.speedup_batch),
        repeats=config.speedup_repeats,
        rounds=config.speedup_rounds,
    )
    row = base_row(config, base) | {
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
        "seconds": time.perf_counter() - started,
    }
    save_checkpoint(path, pruned, model_name=config.model, widths=widths, config_hash=key)
    artefacts.write_json(meta, {"config": _row_key(config, criterion, widths), "row": row})
    log(
        f"{criterion:>9} {widths:>12}: accuracy {before:.4f} -> {after:.4f} after fine-tuning, "
        f"{counted.params:,} params, {speedup:.2f}x faster"
    )
    return row


def compare(config: profiles.Config, *, log: Log = log_line) -> Comparison:
    """Every criterion at every widths setting through the same surgery; ``results-<h>.json``.

    Rows that exist are reused, so an interrupted comparison resumes where it stopped.
    """
    loaders = _Data(config)
    base = pretrain(config, log=log, loaders=loaders)
    rows = [base_row(config, base)]
    keys = [_row_key(config, c, w) for w in config.widths for c in config.criteria]
    path = run_dir(config) / f"results-{artefacts.config_hash(keys)}.json"
    done = _complete(path, log)
    if done is not None:
        log(f"compare: reusing {path.relative_to(artefacts.runs_root())}")
        return Comparison(done["rows"], path, True)
    for widths in config.widths:
        for criterion in config.criteria:
            rows.append(prune_and_finetune(config, criterion, widths, log=log, loaders=loaders))
    artefacts.write_json(path, {"config": config.to_dict(), "rows": rows})
    return Comparison(rows, path, False)


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


def results_table(rows: list[dict[str, Any]]):
    """The rows as a pandas DataFrame with the table's columns first."""
    import pandas as pd

    columns = [
        "network",
        "dataset",
        "widths",
        "criterion",
        "error",
        "error_pruned",
        "params",
        "macs",
        "speedup",
        "params_ratio",
        "macs_ratio",
    ]
    frame = pd.DataFrame(rows)
    return frame[columns + [c for c in frame.columns if c not in columns]]


def run_all(config: profiles.Config, *, log: Log = log_line) -> Comparison:
    """Every stage of one experiment: pretrain, importance, feature maps, compare."""
    importance(config, log=log)
    feature_maps(config, log=log)
    return compare(config, log=log)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m dplib.pipeline --profile smoke --stage compare ...``."""
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
