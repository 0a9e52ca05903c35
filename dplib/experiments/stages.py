"""The notebooks' stages: one notebook experiment through the one experiment path.

Each stage runs the experiment of a :class:`~dplib.experiments.profiles.Config` under
``runs/<profile>/`` (so ``03_prune``'s comparison and ``bench/compare.py`` reuse its base network):

=====================  ========================================================================
:func:`pretrain`       ``01``: the base network of the configuration's seed
:func:`importance`     ``02``: its Dirichlet importance, and what learning it cost
:func:`feature_maps`   ``02``: the first layer's feature maps of a few test images (figure 4)
:func:`table`          ``03``: every criterion at every widths setting: ``table.json``
                       (another configuration's table: ``table-<hash>.json``, :func:`table_file`)
=====================  ========================================================================

Every stage first calls the stages it needs (at once when their artefacts are there), so any
notebook can run on its own; ``04_figures`` reads only what they wrote.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import measure
from ..budget import split_budget_widths
from ..data import Loaders
from ..files import atomic_torch_save, write_json
from ..importance import Importance, format_widths
from ..surgery import widths_of
from . import paths, profiles
from .cache import Log, cached, config_hash, log_line
from .experiment import FIXED, Base, Scoring, Training, prune_and_finetune, score
from .experiment import loaders as experiment_loaders
from .experiment import pretrain as pretrain_base

BASE_CRITERION = "base (unpruned)"


def loaders(config: profiles.Config) -> Loaders:
    """The configuration's train / val / test loaders, as its base network is trained on them."""
    return experiment_loaders(config.experiment, config.seed)


def pretrain(
    config: profiles.Config, train: Training | None = None, *, log: Log = log_line
) -> Base:
    """The configuration's base network, trained by ``train`` (01_pretrain's call of
    :func:`dplib.fit`; the kit's own by default) or read back from an earlier run."""
    root = paths.profile_dir(config.profile)
    return pretrain_base(config.experiment, root, config.seed, log=log, train=train)


def importance(base: Base, learn: Scoring | None = None, *, log: Log = log_line) -> tuple:
    """The Dirichlet importance of ``base``, learnt by ``learn`` (02_importance's calls; the
    kit's own by default) or read back, and its cost: ``steps``, ``seconds`` and
    ``fraction_of_training_epoch`` (per pass over the training data; one pass per layer when
    layerwise)."""
    learned = score(base, "dirichlet", log=log, compute=learn)
    epochs = learned.history.get("epochs") or max(base.experiment.importance.epochs, 1e-9)
    seconds = learned.history["seconds"]
    return learned, {
        "steps": len(learned.history["loss"]),
        "seconds": seconds,
        "fraction_of_training_epoch": seconds / base.metrics["seconds_per_epoch"] / epochs,
    }


def case(widths: str) -> tuple[str, str]:
    """(budget, allocation) of a widths setting: fixed widths, or a budget ("macs:2x") that
    each criterion allocates by its own scores."""
    budget = split_budget_widths(widths)
    if budget is None:
        return widths, FIXED
    what, target = budget
    return (target if what == "macs" else f"{what}:{target}"), "greedy"


def table(config: profiles.Config, base: Base | None = None, *, log: Log = log_line) -> dict:
    """Every criterion at every widths setting of the configuration, through the same surgery
    and fine-tuning, on ``base`` (default: the configuration's, read back or trained); written
    beside the base network (:func:`table_file`) and returned."""
    base = base or pretrain(config, log=log)
    scores = {criterion: score(base, criterion, log=log) for criterion in config.criteria}
    rows = []
    for widths in config.widths:
        for criterion, scored in scores.items():
            row = prune_and_finetune(base, criterion, scored, *case(widths))
            log(
                f"{criterion:>9} {row['widths']:>12}: test accuracy {row['pruned_test']:.4f} -> "
                f"{row['finetuned_test']:.4f} after fine-tuning, {row['params']:,} params"
            )
            rows.append(row)
    result = {
        "profile": config.profile,
        "network": config.model,
        "dataset": config.dataset_label,
        "base": base.metrics,
        "rows": rows,
    }
    if "dirichlet" in scores:  # which of the importances beside it 04_figures draws
        result["importance_hash"] = config_hash(scores["dirichlet"].config)
        result["base_key"] = base.key  # an exercise's weaker base learns it with the same settings
    write_json(table_file(config, base.folder), result)
    return result


def table_file(config: profiles.Config, folder: Path) -> Path:
    """Where :func:`table` writes in the base network's ``folder``: ``table.json``, which
    ``04_figures`` draws, for the profile's own table; ``table-<hash>.json`` for any other (an
    exercise's shorter fine-tuning, weaker base or fewer criteria), so that it never replaces
    the profile's rows."""
    key = _table_key(config)
    try:
        own = profiles.resolve(
            config.profile, config.requested_dataset, config.model, seed=config.seed
        )
    except ValueError:  # the profile's own settings do not fit (its widths, a narrower network)
        return folder / f"table-{key}.json"
    return folder / ("table.json" if key == _table_key(own) else f"table-{key}.json")


def _table_key(config: profiles.Config) -> str:
    """What a table's rows depend on; where training runs is left out (the same on any device)."""
    experiment = config.experiment.replace(device="auto", data_device=None)
    return config_hash([dataclasses.asdict(experiment), config.widths, config.criteria])


def architecture_table(config: profiles.Config) -> list[dict[str, Any]]:
    """Parameters and MACs of the base network and of each fixed widths setting of ``config``:
    exact without training, as the surgery's result depends only on the widths."""
    experiment = config.experiment
    network = experiment.network()
    shape = (1, *profiles.input_shape(config.model))
    rows = [{"widths": format_widths(widths_of(network))} | measure.count(network, shape)._asdict()]
    for widths in config.widths:
        if split_budget_widths(widths) is None:  # a budget's widths depend on the criterion
            pruned = experiment.network(widths=widths)
            rows.append({"widths": widths} | measure.count(pruned, shape)._asdict())
    return rows


# Interpretability: first-layer feature maps -------------------------------------------------
def feature_maps(
    base: Base, learned: Importance, *, per_class: int = 1, log: Log = log_line
) -> Path | None:
    """Save the first prunable layer's feature maps of ``per_class`` test images per class, with
    the images, labels, class names and that layer's importance in ``learned`` (the figure
    reads only ``runs/``); None when that layer is not a convolution (no maps to show)."""
    layer = learned.names[0]
    if not isinstance(base.model.get_submodule(layer), nn.Conv2d):
        return None
    key = {"base": base.key, "importance": learned.config, "per_class": per_class}
    return cached(
        base.folder / f"feature-maps-{config_hash(key)}.pt",
        key,
        lambda: _capture_maps(base, learned, per_class),
        save=lambda payload, target: atomic_torch_save(payload, target),
        load=lambda source, _: torch.load(source, map_location="cpu", weights_only=True),
        log=log,
    ).path


def _capture_maps(
    base: Base, learned: Importance, per_class: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    layer = learned.names[0]
    images, labels = base.loaders.splits.test.tensors
    chosen = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(10)])
    captured: dict[str, torch.Tensor] = {}
    conv = base.model.get_submodule(layer)
    handle = conv.register_forward_hook(lambda m, i, o: captured.setdefault("maps", o.detach()))
    with torch.no_grad():
        base.model.eval()(images[chosen])
    handle.remove()
    spec = base.loaders.splits.spec
    payload = {
        "layer": layer,
        "images": images[chosen] * torch.tensor(spec.std).view(1, -1, 1, 1)
        + torch.tensor(spec.mean).view(1, -1, 1, 1),
        "labels": labels[chosen],
        "maps": captured["maps"],
        "importance": learned.mean(layer),
        "std": learned.std(layer) if learned.concentration else None,
    }
    meta = {"layer": layer, "classes": list(spec.classes), "setup": base.experiment.name}
    return payload, meta
