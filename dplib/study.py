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
   together);
3. **fine-tune**: the best configurations, the method as specified and the baselines (L1,
   Taylor, random) go through the same surgery and the same fixed fine-tuning at the three
   width settings; validation accuracy decides, test accuracy is only reported.

Every (setup, configuration) result is a small JSON file under ``runs/study/<setup>/``,
written atomically and reused when it exists, so the study resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
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
from .train import evaluate, fit, load_checkpoint, save_checkpoint

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
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as stream:
        json.dump(payload, stream, indent=1)
    os.replace(temporary, path)


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
    checkpoint = folder / "base.pt"
    try:
        load_checkpoint(checkpoint, model)
    except (FileNotFoundError, ValueError):
        fit(
            model,
            loaders.train,
            epochs=setup.pretrain_epochs,
            lr=0.05,
            val_loader=loaders.val,
            seed=seed,
            show_progress=show_progress,
            desc=f"pretrain {setup.name}",
        )
        save_checkpoint(checkpoint, model, model_name=setup.model)
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
        dataset_size=len(train.dataset) if config["kl_divided_by_n"] else 1,
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
    """The one-factor-at-a-time configurations of a setup (BatchNorm switches only with BN)."""
    has_batchnorm = setup.model.endswith("_bn")
    configs = [dict(SPECIFIED)]
    for factor, values in FACTORS.items():
        if factor in BATCHNORM_FACTORS and not has_batchnorm:
            continue
        for value in values:
            configs.append({**SPECIFIED, factor: value})
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
    criteria: tuple[str, ...] = ("l1", "taylor", "random"),
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Screen, pair and fine-tune on every setup; return all results (see the module docstring)."""
    summary: dict[str, Any] = {}
    for name in setup_names:
        if name not in SETUPS:
            raise ValueError(f"unknown study setup {name!r}; available: {', '.join(SETUPS)}")
    for name in setup_names:
        setup = SETUPS[name]
        started = time.perf_counter()
        context = prepare(setup, root, subset=subset, seed=seed)
        log(f"[{name}] base validation accuracy {context.base['val']:.4f}")
        screened = [run_config(context, c, finetune=False, seed=seed) for c in configs(setup)]
        combined = [run_config(context, c, finetune=False, seed=seed) for c in pairs(screened)]
        screened += [r for r in combined if r["key"] not in {s["key"] for s in screened}]
        ranked = sorted(screened, key=screen_value, reverse=True)
        for result in ranked[:5]:
            log(f"[{name}] screen {result['key']}: pruned {screen_value(result):.4f}")
        keys = ["specified"] + [r["key"] for r in ranked if r["key"] != "specified"][:finalists]
        by_key = {r["key"]: r for r in screened}
        finals = [run_config(context, by_key[k]["config"], finetune=True, seed=seed) for k in keys]
        finals += [run_baseline(context, criterion, seed=seed) for criterion in criteria]
        for result in finals:
            log(f"[{name}] fine-tuned {result['key']}: {finetuned_value(result):.4f}")
        summary[name] = {
            "setup": setup.__dict__,
            "base": context.base,
            "screened": screened,
            "finals": finals,
            "seconds": time.perf_counter() - started,
        }
    return summary


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


def _label(result: dict[str, Any]) -> str:
    return result["key"] if result["criterion"] == "dirichlet" else result["criterion"]


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

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(temporary, dpi=120, bbox_inches="tight")
    os.replace(temporary, path)
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
                (r["key"], 100 * (screen_value(r) - screen_value(base)))
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
