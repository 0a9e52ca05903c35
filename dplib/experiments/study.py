"""The study of what makes Dirichlet importance work: configurations, runs, cached results.

A *setup* is a pretrained network on a data set with three width settings (mild, medium,
aggressive). A *configuration* is a set of switches of :func:`dplib.attach_gates` and
:func:`dplib.learn_importance` (and the ranking statistic). The design, run by
:func:`run_study`:

1. **screen**: one factor at a time around the method as specified (:data:`SPECIFIED`);
   each configuration learns importance once and is scored, on validation data, by the
   accuracy right after pruning at the three width settings and by the Spearman correlation of
   its ranking with the oracle (loss increase when a unit alone is removed) per layer;
2. **pairs**: the best value of each of the most helpful factors, combined two by two (and all
   together); beside them, a few combinations chosen from METHOD.md section 7 (a sparse prior
   whose KL is not divided by N), screened in step 1;
3. **fine-tune**: the best configurations, the method as specified and the baselines (L1,
   Taylor, random) go through the same surgery and the same fixed fine-tuning at the three
   width settings; validation accuracy decides, test accuracy is only reported.

Every (setup, configuration) result is a small JSON file under ``runs/study/<setup>/``,
written atomically and reused when it exists, so the study resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import baselines, data, models
from .attach import attach_gates
from .importance import Importance
from .measure import spearman
from .surgery import prune
from .train import evaluate, fit, fit_or_load

# The method as first specified (METHOD.md sections 2-3), the centre of the one-factor grid.
SPECIFIED: dict[str, Any] = {
    "scale": "K",
    "position": "after_bn",
    "phi_init": 1.0,
    "alpha0": 1.0,
    "kl_weight": 1.0,
    "kl_divided_by_n": True,
    "estimator": "sample",
    "samples": 1,
    "lr": 0.1,
    "epochs": 1.0,
    "batchnorm": "eval",
    "weights_lr": 0.0,
    "statistic": "mean",
}

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

# Combinations suggested by METHOD.md section 7 rather than by the screen: a sparse prior whose
# KL is not divided by N (so that it competes with the data term and squeezes the posterior
# mass onto the units the loss cannot do without), with or without the factor K.
HYPOTHESES: list[dict[str, Any]] = [
    {"alpha0": 0.1, "kl_divided_by_n": False},
    {"alpha0": 0.1, "kl_divided_by_n": False, "kl_weight": 0.01},
    {"scale": "none", "alpha0": 0.1, "kl_divided_by_n": False},
    {"scale": "none", "alpha0": 0.1, "kl_divided_by_n": False, "kl_weight": 0.01},
    {"scale": "none", "alpha0": 0.01, "kl_divided_by_n": False},
    {"phi_init": 100.0, "alpha0": 0.1, "kl_divided_by_n": False, "kl_weight": 0.01},
    {"estimator": "point", "alpha0": 0.1, "kl_divided_by_n": False, "kl_weight": 0.01},
    {"scale": "none", "alpha0": 0.1, "kl_divided_by_n": False, "weights_lr": 0.001},
    # second round, around the best of the first (phi0 100, sparse prior, beta 0.01, KL not /N)
    {"phi_init": 100.0, "alpha0": 0.1, "kl_divided_by_n": False, "kl_weight": 0.1},
    {"phi_init": 100.0, "alpha0": 0.1, "kl_divided_by_n": False, "kl_weight": 0.001},
    {"phi_init": 100.0, "alpha0": 0.01, "kl_divided_by_n": False, "kl_weight": 0.01},
    {"phi_init": 10.0, "alpha0": 0.1, "kl_divided_by_n": False, "kl_weight": 0.01},
    {"phi_init": 100.0, "alpha0": 0.1, "kl_divided_by_n": False, "kl_weight": 0.01, "lr": 0.3},
    {"phi_init": 100.0, "alpha0": 0.1, "kl_divided_by_n": False, "kl_weight": 0.01, "epochs": 3.0},
    {"phi_init": 100.0, "alpha0": 0.1, "kl_divided_by_n": False, "kl_weight": 0.01, "samples": 4},
    {
        "scale": "none",
        "phi_init": 100.0,
        "alpha0": 0.1,
        "kl_divided_by_n": False,
        "kl_weight": 0.01,
    },
]


@dataclass(frozen=True)
class Setup:
    """A network, a data set, how to pretrain and fine-tune it, and its width settings."""

    model: str
    dataset: str
    widths: tuple[str, str, str]
    pretrain_epochs: float
    finetune_epochs: float
    oracle_images: int = 1000

    @property
    def name(self) -> str:
        """``<dataset>-<model>``."""
        return f"{self.dataset}-{self.model}"


SETUPS: dict[str, Setup] = {
    "fashion_mnist-lenet5": Setup(
        "lenet5", "fashion_mnist", ("10-25-250", "5-10-76", "3-6-30"), 3, 1
    ),
    "fashion_mnist-lenet300": Setup("lenet300", "fashion_mnist", ("100-30", "40-15", "15-8"), 3, 1),
    "mnist5k-lenet5": Setup("lenet5", "mnist5k", ("10-25-250", "5-10-76", "3-6-30"), 15, 3),
    "mnist5k-lenet300": Setup("lenet300", "mnist5k", ("100-30", "40-15", "15-8"), 15, 3),
    "mnist5k-lenet5_bn": Setup(
        "lenet5_bn", "mnist5k", ("7-14-70-20", "5-8-45-15", "3-5-20-8"), 15, 3
    ),
}


@dataclass
class Context:
    """A setup with its data and pretrained network, loaded once."""

    setup: Setup
    folder: Path
    loaders: data.Loaders
    model: torch.nn.Module
    oracle: Importance
    base: dict[str, float] = field(default_factory=dict)


def config_key(config: dict[str, Any]) -> str:
    """A short, stable name of a configuration: the switches that differ from SPECIFIED."""
    changed = {k: v for k, v in sorted(config.items()) if SPECIFIED.get(k) != v}
    if not changed:
        return "specified"
    text = ",".join(f"{k}={v}" for k, v in changed.items())
    return text if len(text) < 60 else hashlib.sha1(text.encode()).hexdigest()[:12]


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    from .artefacts import write_json

    write_json(path, payload)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def prepare(
    setup: Setup,
    root: Path,
    *,
    subset: int | None = None,
    seed: int = 0,
    show_progress: bool = False,
) -> Context:
    """Load the data, pretrain the network (cached) and compute the oracle (cached)."""
    folder = root / setup.name
    loaders = data.loaders(setup.dataset, batch_size=128, subset=subset, seed=seed)
    model = models.build(setup.model, seed=seed)
    fit_or_load(
        model,
        folder / "base.pt",
        loaders.train,
        model_name=setup.model,
        epochs=setup.pretrain_epochs,
        lr=0.05,
        val_loader=loaders.val,
        seed=seed,
        show_progress=show_progress,
        desc=f"pretrain {setup.name}",
    )
    oracle_loader = data.make_loader(
        data.random_subset(loaders.splits.val, setup.oracle_images, seed), 500, shuffle=False
    )
    oracle_path = folder / "oracle.pt"
    try:
        oracle = Importance.load(oracle_path)
    except (FileNotFoundError, ValueError):
        oracle = baselines.oracle_importance(model, oracle_loader, show_progress=show_progress)
        oracle.save(oracle_path)
    context = Context(setup, folder, loaders, model, oracle)
    context.base = {"val": evaluate(model, loaders.val)["accuracy"]}
    return context


def learn(
    context: Context, config: dict[str, Any], seed: int = 0
) -> tuple[Importance, torch.nn.Module]:
    """Learn Dirichlet importance with the switches of ``config``.

    Returns the importance and the network to prune: the setup's network, or for joint training
    (``weights_lr > 0``) a copy whose weights were trained with the gates.
    """
    from .vi import learn_importance

    model = context.model
    if config["weights_lr"] > 0:
        model = models.build(context.setup.model)
        model.load_state_dict(context.model.state_dict())
    gated = attach_gates(
        model, phi_init=config["phi_init"], scale=config["scale"], position=config["position"]
    )
    train = context.loaders.train
    importance = learn_importance(
        gated,
        train,
        epochs=config["epochs"],
        alpha0=config["alpha0"],
        kl_weight=config["kl_weight"],
        samples=config["samples"],
        estimator=config["estimator"],
        lr=config["lr"],
        seed=seed,
        kl_divided_by_n=config["kl_divided_by_n"],
        batchnorm=config["batchnorm"],
        weights_lr=config["weights_lr"],
        show_progress=False,
    )
    gated.remove()
    return importance.ranked_by(config["statistic"]), model


def score(
    context: Context,
    importance: Importance,
    *,
    finetune: bool,
    seed: int = 0,
    network: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Validation metrics of one importance: Spearman with the oracle, accuracy after pruning
    (and after the setup's fixed fine-tuning when ``finetune``) at each width setting."""
    network = network if network is not None else context.model
    result: dict[str, Any] = {
        "spearman": {
            layer: spearman(importance.scores[layer], context.oracle.scores[layer])
            for layer in importance.names
        },
        "pruned": {},
        "finetuned": {},
        "finetuned_test": {},
    }
    for widths in context.setup.widths:
        small = prune(network, importance, widths)
        result["pruned"][widths] = evaluate(small, context.loaders.val)["accuracy"]
        if finetune:
            fit(
                small,
                context.loaders.train,
                epochs=context.setup.finetune_epochs,
                lr=0.01,
                schedule="constant",
                seed=seed,
                show_progress=False,
            )
            result["finetuned"][widths] = evaluate(small, context.loaders.val)["accuracy"]
            result["finetuned_test"][widths] = evaluate(small, context.loaders.test)["accuracy"]
    return result


def run_config(
    context: Context, config: dict[str, Any], *, finetune: bool, seed: int = 0
) -> dict[str, Any]:
    """Learn and score one configuration, or read its cached result."""
    key = config_key(config)
    path = context.folder / f"{'finetune' if finetune else 'screen'}-seed{seed}" / f"{key}.json"
    cached = _read_json(path)
    if cached is not None:
        return cached
    started = time.perf_counter()
    importance, network = learn(context, config, seed)
    seconds = time.perf_counter() - started
    result = score(context, importance, finetune=finetune, seed=seed, network=network)
    result.update(
        criterion="dirichlet", key=key, config=config, seconds=seconds, setup=context.setup.name
    )
    _write_json(path, result)
    return result


def run_baseline(context: Context, criterion: str, *, seed: int = 0) -> dict[str, Any]:
    """Score a baseline criterion with fine-tuning (cached)."""
    path = context.folder / f"finetune-seed{seed}" / f"baseline-{criterion}.json"
    cached = _read_json(path)
    if cached is not None:
        return cached
    started = time.perf_counter()
    importance = baselines.baseline_importance(
        criterion, context.model, context.loaders.train, seed=seed, batches=20
    )
    seconds = time.perf_counter() - started
    result = score(context, importance, finetune=True, seed=seed)
    result.update(
        criterion=criterion,
        key=f"baseline-{criterion}",
        config=None,
        seconds=seconds,
        setup=context.setup.name,
    )
    _write_json(path, result)
    return result


def screen_value(result: dict[str, Any]) -> float:
    """How a screened configuration ranks: mean validation accuracy right after pruning."""
    return statistics.mean(result["pruned"].values())


def finetuned_value(result: dict[str, Any]) -> float:
    """Mean validation accuracy after fine-tuning over the width settings."""
    return statistics.mean(result["finetuned"].values())


def grid(setup: Setup) -> list[dict[str, Any]]:
    """The configurations screened on a setup: one factor at a time around the specified
    method (the BatchNorm switches only where the network has BatchNorm), then
    :data:`HYPOTHESES`."""
    has_batchnorm = setup.model.endswith("_bn")
    configs = [dict(SPECIFIED)]
    for factor, values in FACTORS.items():
        if factor in BATCHNORM_FACTORS and not has_batchnorm:
            continue
        for value in values:
            configs.append({**SPECIFIED, factor: value})
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
    configs: Callable[[Setup], list[dict[str, Any]]] = grid,
    finalists: int = 3,
    shared_finalists: int = 3,
    criteria: tuple[str, ...] = ("l1", "taylor", "random"),
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Screen and pair on every setup, then fine-tune the finalists; return all results.

    The finalists of a setup are the method as specified, its ``finalists`` best screened
    configurations, and the ``shared_finalists`` configurations with the best mean screening
    rank over all setups (fine-tuned on every setup, so that one default can be chosen).
    """
    for name in setup_names:
        if name not in SETUPS:
            raise ValueError(f"unknown study setup {name!r}; available: {', '.join(SETUPS)}")
    contexts, screened, started = {}, {}, {}
    for name in setup_names:
        started[name] = time.perf_counter()
        context = contexts[name] = prepare(SETUPS[name], root, subset=subset, seed=seed)
        log(f"[{name}] base validation accuracy {context.base['val']:.4f}")
        results = [
            run_config(context, c, finetune=False, seed=seed) for c in configs(context.setup)
        ]
        combined = [run_config(context, c, finetune=False, seed=seed) for c in pairs(results)]
        results += [r for r in combined if r["key"] not in {s["key"] for s in results}]
        screened[name] = results
        for result in sorted(results, key=screen_value, reverse=True)[:5]:
            log(f"[{name}] screen {label(result)}: pruned {screen_value(result):.4f}")
        started[name] = time.perf_counter() - started[name]
    ranking = shared_ranking(screened)
    # the best overall, and the best of those that cost at most one epoch of learning
    shared = (
        ranking[:shared_finalists]
        + [c for c in ranking if cost_in_epochs(c) <= 1][:shared_finalists]
    )
    shared = list({config_key(c): c for c in shared}.values())
    log(f"shared finalists: {'; '.join(label({'config': c}) for c in shared)}")
    summary: dict[str, Any] = {}
    for name, context in contexts.items():
        clock = time.perf_counter()
        ranked = sorted(screened[name], key=screen_value, reverse=True)
        chosen = [dict(SPECIFIED)] + [r["config"] for r in ranked[:finalists]] + shared
        unique = list({config_key(c): c for c in chosen}.values())
        finals = [run_config(context, c, finetune=True, seed=seed) for c in unique]
        finals += [run_baseline(context, criterion, seed=seed) for criterion in criteria]
        for result in finals:
            log(f"[{name}] fine-tuned {label(result)}: {finetuned_value(result):.4f}")
        summary[name] = {
            "setup": context.setup.__dict__,
            "base": context.base,
            "screened": screened[name],
            "finals": finals,
            "seconds": started[name] + time.perf_counter() - clock,
        }
    return summary


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
            files = sorted((folder / f"{stage}-seed{seed}").glob("*.json"))
            entry[label] = [r for r in (_read_json(f) for f in files) if r is not None]
        results[folder.name] = entry
    return results


SHORT_NAMES = {
    "scale": "scale",
    "position": "gate",
    "phi_init": "phi0",
    "alpha0": "alpha0",
    "kl_weight": "beta",
    "kl_divided_by_n": "KL/N",
    "estimator": "est",
    "samples": "M",
    "lr": "lr",
    "epochs": "epochs",
    "batchnorm": "BN",
    "weights_lr": "joint lr",
    "statistic": "rank by",
}


def label(result: dict[str, Any]) -> str:
    """A readable name: the baseline's, or the switches that differ from the specified method."""
    if result.get("criterion", "dirichlet") != "dirichlet":
        return result["criterion"]
    config = result["config"]
    changed = [f"{SHORT_NAMES[k]}={v}" for k, v in config.items() if SPECIFIED.get(k) != v]
    return "dirichlet " + (", ".join(changed) if changed else "(as specified)")


_label = label


def summary_table(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """Markdown: per setup, the screened configurations and the fine-tuned finals."""
    lines = ["# What makes Dirichlet importance work: the study", ""]
    for setup, entry in results.items():
        if not entry["screened"]:
            continue
        lines += [
            f"## {setup}",
            "",
            "Screening (validation, right after pruning, mean over the "
            "three width settings; Spearman with the oracle, mean over layers):",
            "",
            "| configuration | accuracy after pruning | Spearman | seconds |",
            "|---|---|---|---|",
        ]
        for result in sorted(entry["screened"], key=screen_value, reverse=True):
            rho = statistics.mean(result["spearman"].values())
            lines.append(
                f"| {result['key']} | {100 * screen_value(result):.1f} | {rho:.2f} | "
                f"{result['seconds']:.1f} |"
            )
        finals = entry["finals"]
        if finals:
            widths = list(finals[0]["pruned"])
            lines += [
                "",
                "Finals: validation accuracy right after pruning / after fine-tuning "
                "[test after fine-tuning], %:",
                "",
                "| criterion | " + " | ".join(widths) + " | mean fine-tuned (val) |",
                "|---" * (len(widths) + 2) + "|",
            ]
            for result in sorted(finals, key=finetuned_value, reverse=True):
                cells = [
                    f"{100 * result['pruned'][w]:.1f} / {100 * result['finetuned'][w]:.2f}"
                    f" [{100 * result['finetuned_test'][w]:.2f}]"
                    for w in widths
                ]
                lines.append(
                    f"| {_label(result)} | "
                    + " | ".join(cells)
                    + f" | {100 * finetuned_value(result):.2f} |"
                )
        lines.append("")
    return "\n".join(lines) + "\n"


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    from .files import atomic_path

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=path.suffix[1:], dpi=120, bbox_inches="tight")
    plt.close(figure)


def plot_factors(results: dict[str, dict[str, list[dict[str, Any]]]], path: Path) -> None:
    """Per setup, each one-factor change's effect on accuracy right after pruning."""
    import matplotlib.pyplot as plt

    setups = [s for s, e in results.items() if e["screened"]]
    if not setups:
        return
    figure, axes = plt.subplots(1, len(setups), figsize=(4.2 * len(setups), 6), squeeze=False)
    for axis, setup in zip(axes[0], setups, strict=True):
        screened = results[setup]["screened"]
        base = next((r for r in screened if r["key"] == "specified"), None)
        if base is None:
            continue
        rows = sorted(
            (
                (label(r)[len("dirichlet ") :], 100 * (screen_value(r) - screen_value(base)))
                for r in screened
                if r["key"] != "specified"
            ),
            key=lambda item: item[1],
        )
        colours = ["tab:green" if gain > 0 else "tab:red" for _, gain in rows]
        axis.barh([k for k, _ in rows], [g for _, g in rows], color=colours)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_title(f"{setup}\n(specified: {100 * screen_value(base):.1f}%)", fontsize=9)
        axis.set_xlabel("change in val. accuracy after pruning (points)")
        axis.tick_params(axis="y", labelsize=7)
    figure.tight_layout()
    _save(figure, path)


def plot_finals(results: dict[str, dict[str, list[dict[str, Any]]]], path: Path) -> None:
    """Per setup, validation accuracy after fine-tuning at each width, finals and baselines."""
    import matplotlib.pyplot as plt

    setups = [s for s, e in results.items() if e["finals"]]
    if not setups:
        return
    figure, axes = plt.subplots(1, len(setups), figsize=(4.5 * len(setups), 4), squeeze=False)
    for axis, setup in zip(axes[0], setups, strict=True):
        finals = results[setup]["finals"]
        widths = list(finals[0]["finetuned"])
        for result in finals:
            style = "-" if result["criterion"] == "dirichlet" else "--"
            axis.plot(
                widths,
                [100 * result["finetuned"][w] for w in widths],
                style,
                marker="o",
                label=_label(result)[:40],
            )
        axis.set_title(setup, fontsize=9)
        axis.set_xlabel("kept widths (mild to aggressive)")
        axis.set_ylabel("val. accuracy after fine-tuning (%)")
        axis.legend(fontsize=6)
    figure.tight_layout()
    _save(figure, path)


def smoke_grid(setup: Setup) -> list[dict[str, Any]]:
    """A tiny grid for the smoke profile: the specified method and two of the studied changes."""
    return [
        dict(SPECIFIED),
        {**SPECIFIED, "estimator": "point"},
        {**SPECIFIED, **HYPOTHESES[5]},
    ]


def root_for(profile: str) -> Path:
    """Where the study's results live: ``runs/study`` (cpu, paper) or ``runs/smoke/study``."""
    from .artefacts import runs_root

    return runs_root() / "smoke" / "study" if profile == "smoke" else runs_root() / "study"


def figures_for(profile: str) -> Path:
    """Where the study's figures go: ``figures/study`` for the cpu profile."""
    from .artefacts import figures_dir

    return figures_dir(profile) / "study"


def recommendation(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    max_cost_epochs: float = 1.0,
) -> tuple[dict[str, Any] | None, str]:
    """The Dirichlet configuration with the best mean validation accuracy after fine-tuning
    over the setups where it was fine-tuned everywhere, among those whose importance learning
    costs at most ``max_cost_epochs`` passes over the data (the paper's promise: one epoch), and
    a markdown table of it against the best baseline (L1 or Taylor) at every width setting,
    validation and test."""
    finals = {setup: entry["finals"] for setup, entry in results.items() if entry["finals"]}
    if not finals:
        return None, "no fine-tuned results yet"
    keys = None
    for entries in finals.values():
        present = {
            r["key"]
            for r in entries
            if r["criterion"] == "dirichlet" and cost_in_epochs(r["config"]) <= max_cost_epochs
        }
        keys = present if keys is None else keys & present
    if not keys:
        return None, "no configuration was fine-tuned on every setup"

    def mean_over_setups(key: str) -> float:
        return statistics.mean(
            finetuned_value(next(r for r in entries if r["key"] == key))
            for entries in finals.values()
        )

    best_key = max(keys, key=mean_over_setups)
    lines = [
        "| setup | widths | Dirichlet (chosen) val / test | best of L1, Taylor val / test "
        "| Dirichlet - best (val) | after pruning: Dirichlet / best (val) |",
        "|---|---|---|---|---|---|",
    ]
    config = None
    for setup, entries in finals.items():
        chosen = next(r for r in entries if r["key"] == best_key)
        config = chosen["config"]
        peers = [r for r in entries if r["criterion"] in ("l1", "taylor")]
        for widths in chosen["finetuned"]:
            best = max(peers, key=lambda r, w=widths: r["finetuned"][w])
            best_pruned = max(r["pruned"][widths] for r in peers)
            lines.append(
                f"| {setup} | {widths} | {100 * chosen['finetuned'][widths]:.2f} / "
                f"{100 * chosen['finetuned_test'][widths]:.2f} | {best['criterion']} "
                f"{100 * best['finetuned'][widths]:.2f} / "
                f"{100 * best['finetuned_test'][widths]:.2f} | "
                f"{100 * (chosen['finetuned'][widths] - best['finetuned'][widths]):+.2f} | "
                f"{100 * chosen['pruned'][widths]:.1f} / {100 * best_pruned:.1f} |"
            )
    header = (
        f"Chosen on validation data among configurations that cost at most {max_cost_epochs:g} "
        f"epoch(s) of learning: **{label({'config': config})}** (mean validation accuracy after "
        f"fine-tuning over the setups: {100 * mean_over_setups(best_key):.2f}%).\n\n"
    )
    return config, header + "\n".join(lines) + "\n"
