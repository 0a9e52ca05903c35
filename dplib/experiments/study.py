"""The study of what makes Dirichlet importance work: configurations, runs, cached results.

A *setup* is a pretrained network on a data set with three width settings (mild, medium,
aggressive); a *configuration* is a set of switches of :func:`dplib.attach_gates` and
:func:`dplib.learn_importance` (and the ranking statistic). :func:`run_study` runs:

1. **screen**: one factor at a time around the method as specified (:data:`SPECIFIED`), and
   the combinations chosen by hand (:data:`HYPOTHESES`); each configuration learns importance
   once and is scored, on validation data, by the accuracy right after pruning at the three
   width settings and by the Spearman correlation of its ranking with the oracle (loss
   increase when a unit alone is removed) per layer;
2. **pairs**: the best values of the most helpful factors, two by two and all together;
3. **fine-tune**: the best configurations, the method as specified and the baselines (L1,
   Taylor, random) through the same surgery and fixed fine-tuning at the three width settings;
   validation accuracy decides, test accuracy is only reported.

Every (setup, configuration) result is a small cached JSON file under ``runs/study/<setup>/``,
so the study resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import criteria as criteria_registry
from .. import data
from ..files import read_json
from ..importance import Importance
from ..measure import spearman
from ..progress import hidden
from ..settings import DirichletSettings
from . import paths, profiles
from .cache import Log, cached
from .experiment import Base, Experiment, pretrain, prune_and_finetune, score

# The method as first specified (notebooks/METHOD.md, sections 2-3), the centre of the
# one-factor grid: every knob of dplib.DirichletSettings, and the ranking statistic.
SPECIFIED: dict[str, Any] = {**DirichletSettings.as_specified().to_dict(), "statistic": "mean"}

# One factor at a time: the values tried for each switch (the specified value is the centre).
FACTORS: dict[str, list[Any]] = {
    "scale": ["none"],
    "phi_init": [10.0, 100.0, 1000.0],
    "alpha0": [0.01, 0.1, 0.5],
    "kl_weight": [0.0],
    "kl_divided_by_n": [False],
    "estimator": ["point"],
    "samples": [4, 16],
    "lr": [0.01, 0.03, 0.3],
    "epochs": [0.25, 0.5, 3.0],
    "weights_lr": [0.001],
    "statistic": ["mean-2std", "quantile:0.1"],
    "position": ["before_bn"],
    "batchnorm": ["train"],
}
BATCHNORM_FACTORS = ("position", "batchnorm")
# what gives the configurations screened on a setup (grid, smoke_grid)
GridFunction = Callable[[Experiment], list[dict[str, Any]]]

# Combinations chosen by hand rather than by the screen (notebooks/METHOD.md, section 7): a
# sparse prior whose KL is not divided by N (so that it competes with the data term and squeezes
# the posterior mass onto the units the loss cannot do without), with or without the factor K.
SPARSE: dict[str, Any] = {"alpha0": 0.1, "kl_divided_by_n": False}
BEST = {"phi_init": 100.0, **SPARSE, "kl_weight": 0.01}  # the best of the first round
HYPOTHESES: list[dict[str, Any]] = [
    SPARSE,
    {**SPARSE, "kl_weight": 0.01},
    {"scale": "none", **SPARSE},
    {"scale": "none", **SPARSE, "kl_weight": 0.01},
    {"scale": "none", "alpha0": 0.01, "kl_divided_by_n": False},
    BEST,
    {"estimator": "point", **SPARSE, "kl_weight": 0.01},
    {"scale": "none", **SPARSE, "weights_lr": 0.001},
    # second round, around the best of the first
    {**BEST, "kl_weight": 0.1},
    {**BEST, "kl_weight": 0.001},
    {**BEST, "alpha0": 0.01},
    {**BEST, "phi_init": 10.0},
    {**BEST, "lr": 0.3},
    {**BEST, "epochs": 3.0},
    {**BEST, "samples": 4},
    {"scale": "none", **BEST},
]

ORACLE_IMAGES = 1000  # validation images the oracle is measured on

SETUPS: dict[str, Experiment] = profiles.SETUPS["study"]


@dataclass
class StudyContext:
    """A studied network's :class:`~dplib.experiments.experiment.Base` and oracle importance."""

    base: Base
    oracle: Importance


def config_key(config: dict[str, Any]) -> str:
    """A short, stable name of a configuration: the switches that differ from SPECIFIED."""
    changed = {k: v for k, v in sorted(config.items()) if SPECIFIED.get(k) != v}
    if not changed:
        return "specified"
    text = ",".join(f"{k}={v}" for k, v in changed.items())
    return text if len(text) < 60 else hashlib.sha1(text.encode()).hexdigest()[:12]


def prepare_study(
    setup: Experiment, root: Path, *, subset: int | None = None, seed: int = 0
) -> StudyContext:
    """Pretrain the network (cached) and compute the oracle on validation images (cached)."""
    base = pretrain(setup.replace(subset=subset), root, seed)
    images = data.random_subset(base.loaders.splits.val, ORACLE_IMAGES, seed)
    oracle_loader = data.make_loader(images, 500, shuffle=False)
    oracle = cached(
        base.folder / "oracle.pt",
        {"images": ORACLE_IMAGES, "seed": seed, "base": base.key},
        lambda: (criteria_registry.compute("oracle", base.model, oracle_loader), {}),
        save=lambda importance, path: importance.save(path),
        load=lambda path, _: Importance.load(path),
    ).value
    return StudyContext(base, oracle)


def learn(study: StudyContext, config: dict[str, Any]) -> tuple[Importance, Base]:
    """Dirichlet importance learnt with the switches of ``config``, and the base to prune: the
    study's, or for joint training (``weights_lr > 0``) a copy whose weights learnt too."""
    settings = DirichletSettings(**{k: v for k, v in config.items() if k != "statistic"})
    base = study.base
    if settings.weights_lr > 0:
        model = base.experiment.network()
        model.load_state_dict(base.model.state_dict())
        base = dataclasses.replace(base, model=model)
    importance = criteria_registry.compute(
        "dirichlet", base.model, base.loaders.train, seed=base.seed, settings=settings
    )
    return importance.ranked_by(config["statistic"]), base


def evaluated(
    study: StudyContext, importance: Importance, base: Base, *, finetune: bool, **about: Any
) -> dict[str, Any]:
    """Validation metrics of one importance: Spearman with the oracle per layer, accuracy right
    after pruning (and after the setup's fine-tuning when ``finetune``) at each width setting;
    then ``about`` it and the setup's name."""
    oracle = study.oracle.scores
    rhos = {layer: spearman(importance.scores[layer], oracle[layer]) for layer in importance.names}
    result = {"spearman": rhos, "pruned": {}, "finetuned": {}, "finetuned_test": {}}
    for widths in study.base.experiment.widths:
        row = prune_and_finetune(base, importance.criterion, importance, widths, finetune=finetune)
        result["pruned"][widths] = row["pruned_val"]
        if finetune:
            result["finetuned"][widths] = row["finetuned_val"]
            result["finetuned_test"][widths] = row["finetuned_test"]
    return result | about | {"setup": study.base.experiment.name}


def run_config(study: StudyContext, config: dict[str, Any], *, finetune: bool) -> dict[str, Any]:
    """Learn and score one configuration, or read its cached result."""
    key = config_key(config)

    def build() -> tuple[None, dict[str, Any]]:
        started = time.perf_counter()
        importance, base = learn(study, config)
        seconds = time.perf_counter() - started
        about = {"criterion": "dirichlet", "key": key, "config": config, "seconds": seconds}
        return None, evaluated(study, importance, base, finetune=finetune, **about)

    return cached(_result_path(study, finetune, key), config, build).value


def run_baseline(study: StudyContext, criterion: str) -> dict[str, Any]:
    """Score a baseline criterion with fine-tuning (cached)."""
    key = f"baseline-{criterion}"

    def build() -> tuple[None, dict[str, Any]]:
        importance = score(study.base, criterion)
        seconds = importance.history["seconds_total"]
        about = {"criterion": criterion, "key": key, "config": None, "seconds": seconds}
        return None, evaluated(study, importance, study.base, finetune=True, **about)

    path = _result_path(study, True, key)
    return cached(path, {"criterion": criterion, "base": study.base.key}, build).value


def _result_path(study: StudyContext, finetune: bool, key: str) -> Path:
    return study.base.folder / ("finetune" if finetune else "screen") / f"{key}.json"


def screen_value(result: dict[str, Any]) -> float:
    """How a screened configuration ranks: mean validation accuracy right after pruning."""
    return statistics.mean(result["pruned"].values())


def finetuned_value(result: dict[str, Any]) -> float:
    """Mean validation accuracy after fine-tuning over the width settings."""
    return statistics.mean(result["finetuned"].values())


def grid(setup: Experiment) -> list[dict[str, Any]]:
    """One factor at a time around the specified method (the BatchNorm switches only where the
    network has BatchNorm), then :data:`HYPOTHESES`."""
    has_batchnorm = setup.model.endswith("_bn")
    configs = [dict(SPECIFIED)]
    for factor, values in FACTORS.items():
        if factor in BATCHNORM_FACTORS and not has_batchnorm:
            continue
        configs += [{**SPECIFIED, factor: value} for value in values]
    configs += [{**SPECIFIED, **hypothesis} for hypothesis in HYPOTHESES]
    return configs


def pairs(screened: list[dict[str, Any]], top: int = 3) -> list[dict[str, Any]]:
    """Combine the best value of the ``top`` most helpful factors, two by two and all together."""
    base = next(r for r in screened if r["key"] == "specified")
    best: dict[str, tuple[Any, float]] = {}
    for result in screened:
        changed = [k for k in result["config"] if result["config"][k] != SPECIFIED[k]]
        if len(changed) != 1:
            continue
        gain = screen_value(result) - screen_value(base)
        factor = changed[0]
        if gain > 0 and (factor not in best or gain > best[factor][1]):
            best[factor] = (result["config"][factor], gain)
    chosen = sorted(best, key=lambda f: -best[f][1])[:top]
    combos = []
    for i, first in enumerate(chosen):
        for second in chosen[i + 1 :]:
            combos.append({**SPECIFIED, first: best[first][0], second: best[second][0]})
    if len(chosen) > 2:
        combos.append({**SPECIFIED, **{f: best[f][0] for f in chosen}})
    return combos


def run_study(
    setup_names: list[str],
    root: Path,
    *,
    subset: int | None = None,
    configs: GridFunction = grid,
    finalists: int = 3,
    shared_finalists: int = 3,
    criteria: tuple[str, ...] = ("l1", "taylor", "random"),
    seed: int = 0,
    log: Log = print,
) -> dict[str, Any]:
    """Screen and pair on every setup, then fine-tune the finalists; return all results.

    The finalists of a setup are the method as specified, its ``finalists`` best screened
    configurations, and the ``shared_finalists`` configurations with the best mean screening
    rank over all setups (fine-tuned on every setup, so that one default can be chosen).
    """
    for name in setup_names:
        if name not in SETUPS:
            raise ValueError(f"unknown study setup {name!r}; available: {', '.join(SETUPS)}")
    contexts, screened, seconds = {}, {}, {}
    with hidden():
        for name in setup_names:
            started = time.perf_counter()
            contexts[name] = prepare_study(SETUPS[name], root, subset=subset, seed=seed)
            screened[name] = _screen(contexts[name], configs, log)
            seconds[name] = time.perf_counter() - started
    ranking, top = shared_ranking(screened), shared_finalists
    # the best overall, and the best of those that cost at most one epoch of learning
    cheap = [c for c in ranking if cost_in_epochs(c) <= 1]
    shared = list({config_key(c): c for c in ranking[:top] + cheap[:top]}.values())
    log(f"shared finalists: {'; '.join(label({'config': c}) for c in shared)}")
    summary: dict[str, Any] = {}
    for name, study in contexts.items():
        started = time.perf_counter()
        ranked = sorted(screened[name], key=screen_value, reverse=True)
        chosen = [dict(SPECIFIED)] + [r["config"] for r in ranked[:finalists]] + shared
        unique = list({config_key(c): c for c in chosen}.values())
        with hidden():
            finals = [run_config(study, c, finetune=True) for c in unique]
            finals += [run_baseline(study, criterion) for criterion in criteria]
        for result in finals:
            log(f"[{name}] fine-tuned {label(result)}: {finetuned_value(result):.4f}")
        summary[name] = {
            "base": study.base.metrics,
            "screened": screened[name],
            "finals": finals,
            "seconds": seconds[name] + time.perf_counter() - started,
        }
    return summary


def _screen(study: StudyContext, configs: GridFunction, log: Log) -> list[dict[str, Any]]:
    """Screen a setup's grid, then the pairs of its most helpful factors (no fine-tuning)."""
    name = study.base.experiment.name
    log(f"[{name}] base validation accuracy {study.base.metrics['val']:.4f}")
    results = [run_config(study, c, finetune=False) for c in configs(study.base.experiment)]
    combined = [run_config(study, c, finetune=False) for c in pairs(results)]
    results += [r for r in combined if r["key"] not in {s["key"] for s in results}]
    for result in sorted(results, key=screen_value, reverse=True)[:5]:
        log(f"[{name}] screen {label(result)}: pruned {screen_value(result):.4f}")
    return results


def cost_in_epochs(config: dict[str, Any]) -> float:
    """Importance learning's cost in passes of the network over the training set."""
    return config["epochs"] * (config["samples"] if config["estimator"] == "sample" else 1)


def shared_ranking(screened: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Configurations screened on every setup, by mean rank of their screening value."""
    ranks: dict[str, list[int]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for results in screened.values():
        for rank, result in enumerate(sorted(results, key=screen_value, reverse=True)):
            ranks.setdefault(result["key"], []).append(rank)
            configs[result["key"]] = result["config"]
    everywhere = [k for k, r in ranks.items() if len(r) == len(screened)]
    everywhere.sort(key=lambda k: statistics.mean(ranks[k]))
    return [configs[k] for k in everywhere]


def load_results(root: Path, seed: int = 0) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every cached result under ``root``: ``{setup: {"screened": [...], "finals": [...]}}``."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        entry = {}
        for stage, label in (("screen", "screened"), ("finetune", "finals")):
            files = sorted((folder / f"seed{seed}" / stage).glob("*.json"))
            entry[label] = [r for r in (_cached_result(f) for f in files) if r is not None]
        results[folder.name] = entry
    return results


def committed_results() -> Path:
    """``bench/results/study/``: every setup's results, committed by ``make study``."""
    return paths.kit_root() / "bench" / "results" / "study"


def load_committed(
    names: list[str] | None = None, *, required: bool = True
) -> dict[str, dict[str, list[dict[str, Any]]]] | None:
    """The committed results of the setups ``names`` (default: every committed setup); a
    missing one raises, or gives None when not ``required``."""
    found = {path.stem: read_json(path) for path in sorted(committed_results().glob("*.json"))}
    missing = [name for name in names or [] if name not in found]
    if missing and not required:
        return None
    if missing:
        raise FileNotFoundError(
            f"no committed study results for {missing} in {committed_results()}; run the study "
            "(make study, or recompute = True in 05_study)"
        )
    return {name: found[name] for name in names or found}


def _cached_result(path: Path) -> dict[str, Any] | None:
    """The result stored in a cached study file, or None for a damaged one (it is rebuilt)."""
    try:
        return read_json(path)["result"]
    except (ValueError, KeyError, TypeError):
        return None


# the labels' names of the switches not labelled by their own name
SHORT_NAMES = {
    "position": "gate",
    "phi_init": "phi0",
    "kl_weight": "beta",
    "kl_divided_by_n": "KL/N",
    "estimator": "est",
    "samples": "M",
    "batchnorm": "BN",
    "weights_lr": "joint lr",
    "statistic": "rank by",
}


def label(result: dict[str, Any]) -> str:
    """A readable name: the baseline's, or the switches that differ from the specified method."""
    if result.get("criterion", "dirichlet") != "dirichlet":
        return result["criterion"]
    config = result["config"]
    changed = [f"{SHORT_NAMES.get(k, k)}={v}" for k, v in config.items() if SPECIFIED.get(k) != v]
    return "dirichlet " + (", ".join(changed) if changed else "(as specified)")


def smoke_grid(setup: Experiment) -> list[dict[str, Any]]:
    """A tiny grid for the smoke profile: the specified method and two of the studied changes."""
    return [dict(SPECIFIED), {**SPECIFIED, "estimator": "point"}, {**SPECIFIED, **HYPOTHESES[5]}]


def root_for(profile: str) -> Path:
    """Where the study's results live: ``runs/study`` (cpu, paper) or ``runs/smoke/study``."""
    root = paths.runs_root()
    return root / "smoke" / "study" if profile == "smoke" else root / "study"


def figures_for(profile: str) -> Path:
    """Where the study's figures go: ``figures/study`` for the cpu profile."""
    return paths.figures_dir(profile) / "study"
