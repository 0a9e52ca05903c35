"""Criteria compared at a MAC budget: runs the comparison and summarises it.

The suite of ``03_prune`` and ``bench/compare.py``; its figures are drawn by
:mod:`dplib.experiments.figures`, its Markdown written by :mod:`dplib.experiments.reports`.

For a network on a data set and each seed: pretrain (cached), compute every criterion's
importance (cached; Dirichlet with the kit's defaults), and for each budget (``"4x"``: four
times fewer MACs) prune in two ways:

* ``same``: every criterion at the same widths, those of the uniform allocation
  (``choose_widths(..., allocation="uniform")``), which isolates the ranking within layers;
* ``own``: each criterion with its own allocation to the budget
  (``choose_widths(model, importance, target_macs=budget)``), ranking and widths together.

Each pruned network is evaluated on validation data right after pruning (for networks with
BatchNorm, after its running statistics are re-estimated on 20 fixed training batches: no weight
changes, the same for every criterion), fine-tuned by the same
fixed schedule (SGD, lr 0.01, constant, as elsewhere in the kit) and evaluated on validation and
test data. Claims are made on validation accuracy; test accuracy is reported only.

Every result is one JSON file under ``<root>/<dataset>-<model>/seed<k>/results/`` (through
:func:`~dplib.experiments.cache.cached`), reused when it holds the same configuration, so a run
resumes after the last completed result.
:func:`settling` gives the Kendall tau of the Dirichlet ranking against its final state over
the steps of learning (how fast importance settles).
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .. import criteria as criteria_registry
from .. import data
from ..budget import choose_widths
from ..files import read_json, write_json
from ..importance import Importance, format_widths, parse_widths
from ..measure import count, kendall, speedup
from ..pruned import save_pruned
from ..settings import DirichletSettings
from ..surgery import prune
from ..train import evaluate, fit, recalibrate_batchnorm
from . import paths
from .cache import cached
from .profiles import Config
from .setups import Context, Setup, prepare

BUDGETS = ("2x", "4x", "10x", "20x")
ALLOCATIONS = {"own": "importance", "same": "uniform"}
FIXED = "fixed"  # the allocation of widths given by hand (the reference code's)
TAYLOR_BATCHES = 20
FINETUNE_LR = 0.01
# BatchNorm statistics are re-estimated after surgery on this many training batches (networks
# with BatchNorm only; weights unchanged), before "right after pruning" is measured.
RECALIBRATION_BATCHES = 20
SPEEDUP_REPEATS = 10  # forward passes per round when a setup measures its speed-ups

# The cpu profile's schedules (dplib.experiments.profiles): 3 / 1 / 1 epochs, multiplied by 10 on
# mnist5k (3,500 training images) to give about as many steps as the full data sets.
SETUPS: dict[str, Setup] = {
    "mnist5k-lenet300": Setup("lenet300", "mnist5k", 30, 10, 10),
    "mnist5k-lenet5": Setup("lenet5", "mnist5k", 30, 10, 10),
    "fashion_mnist-lenet300": Setup("lenet300", "fashion_mnist", 3, 1, 1),
    "fashion_mnist-lenet5": Setup("lenet5", "fashion_mnist", 3, 1, 1),
    # resnet20 at half width on Fashion-MNIST padded to 32x32 (10.2M MACs), stages pruned too
    # (coupled): about 42 s per training epoch on 2 CPU cores.
    "fashion_mnist32-resnet20": Setup("resnet20", "fashion_mnist", 3, 1, 1, 32, 0.5, coupled=True),
}
# What ``make compare`` runs by default (the cpu profile's comparison); resnet20 (about 90 minutes
# for 3 seeds, every criterion and budget, on 2 cores) only when asked.
DEFAULT_SETUPS = tuple(name for name in SETUPS if not name.endswith("resnet20"))


def prepare_seed(setup: Setup, root: str | Path, seed: int, **options: Any) -> Context:
    """One seed of ``setup`` in ``<root>/<setup>/seed<k>/``: data and pretrained network."""
    return prepare(setup, Path(root) / setup.name / f"seed{seed}", seed, **options)


def compute_importance(context: Context, criterion: str) -> Importance:
    """One criterion's importance of the seed's network (cached as ``importance-<c>.pt``);
    Dirichlet with the kit's defaults for the setup's importance epochs."""
    settings = DirichletSettings(epochs=context.setup.importance_epochs)
    key = {"criterion": criterion, "seed": context.seed, "batches": TAYLOR_BATCHES}
    if criterion == "dirichlet":
        key["settings"] = settings.to_dict()
        key["precision"] = [context.setup.amp, context.setup.channels_last]

    def build() -> tuple[Importance, dict[str, Any]]:
        started = time.perf_counter()
        importance = criteria_registry.compute(
            criterion,
            context.model,
            context.loaders.train,
            seed=context.seed,
            batches=TAYLOR_BATCHES,
            coupled=context.setup.coupled,
            settings=settings,
            input_shape=context.input_shape,
            amp=context.setup.amp,
            channels_last=context.setup.channels_last,
            show_progress=False,
        )
        importance.history["seconds_total"] = time.perf_counter() - started
        return importance, {"seconds": importance.history["seconds_total"]}

    return cached(
        context.folder / f"importance-{criterion}.pt",
        key,
        build,
        save=lambda importance, path: importance.save(path),
        load=lambda path, _: Importance.load(path),
    ).value


def widths_for(
    context: Context, importance: Importance, budget: str, allocation: str
) -> dict[str, int]:
    """The widths of ``allocation`` (``own`` or ``same``) at ``budget`` fewer MACs; for the
    ``fixed`` allocation ``budget`` is the widths themselves (e.g. the reference widths)."""
    if allocation == "fixed":
        return parse_widths(budget, importance.units)
    return choose_widths(
        context.model,
        importance,  # names the layers; the uniform allocation ignores its scores
        target_macs=budget,
        input_shape=context.input_shape,
        allocation=ALLOCATIONS[allocation],
    )


def recalibration_loader(context: Context) -> torch.utils.data.DataLoader:
    """The fixed training images on which a pruned network's BatchNorm statistics are
    re-estimated (:data:`RECALIBRATION_BATCHES` batches, the same for every criterion)."""
    batch = context.setup.batch_size
    images = data.random_subset(
        context.loaders.splits.train, RECALIBRATION_BATCHES * batch, context.seed
    )
    return data.make_loader(images, batch, shuffle=False)


def run_one(
    context: Context,
    criterion: str,
    importance: Importance,
    budget: str,
    allocation: str,
    *,
    finetune_epochs: float | None = None,
) -> dict[str, Any]:
    """Prune, evaluate, fine-tune and evaluate one (criterion, budget, allocation); cached."""
    epochs = context.setup.finetune_epochs if finetune_epochs is None else finetune_epochs
    key = {
        "criterion": criterion,
        "importance": _fingerprint(importance),
        "budget": budget,
        "allocation": allocation,
        "finetune_epochs": epochs,
        "finetune": [context.setup.finetune_lr, context.setup.finetune_schedule],
        "training": context.setup.training(),
        "speedup_batch": context.setup.speedup_batch,
    }
    label = (
        budget if allocation != FIXED else f"widths-{hashlib.sha1(budget.encode()).hexdigest()[:8]}"
    )
    path = context.folder / "results" / f"{criterion}-{allocation}-{label}.json"

    def build() -> tuple[None, dict[str, Any]]:
        row = prune_and_finetune(context, criterion, importance, budget, allocation, epochs)
        small = row.pop("network")
        if context.setup.keep_pruned:
            save_pruned(path.with_suffix(".pt"), small, **row)
        return None, row

    return cached(path, key, build).value


def result_path(folder: Path, criterion: str, allocation: str, budget: str) -> Path:
    """Where :func:`run_one` keeps a result (the fixed widths named by a short hash)."""
    label = budget
    if allocation == FIXED:
        label = f"widths-{hashlib.sha1(budget.encode()).hexdigest()[:8]}"
    return folder / "results" / f"{criterion}-{allocation}-{label}.json"


def _fingerprint(importance: Importance) -> str:
    """A short hash of the scores: a result is rebuilt when its importance changed."""
    digest = hashlib.sha256()
    for name in importance.names:
        digest.update(name.encode() + importance.scores[name].double().numpy().tobytes())
    return digest.hexdigest()[:12]


def prune_and_finetune(
    context: Context,
    criterion: str,
    importance: Importance,
    budget: str,
    allocation: str,
    epochs: float,
) -> dict[str, Any]:
    """The row of one pruned network (right after pruning, then after the fixed fine-tuning),
    with the fine-tuned ``network`` itself."""
    widths = widths_for(context, importance, budget, allocation)
    small = prune(context.model, importance, widths)
    recalibrated = recalibrate_batchnorm(
        small, recalibration_loader(context), RECALIBRATION_BATCHES
    )
    params, macs = count(small, context.input_shape)
    row: dict[str, Any] = {
        "setup": context.setup.name,
        "seed": context.seed,
        "criterion": criterion,
        "budget": budget if allocation != FIXED else "reference",
        "allocation": allocation,
        "widths": format_widths(widths),
        "params": params,
        "macs": macs,
        "base_macs": context.base["macs"],
        "pruned_val": evaluate(small, context.loaders.val)["accuracy"],
        "pruned_test": evaluate(small, context.loaders.test)["accuracy"],
        "batchnorm_recalibrated": bool(recalibrated),
        "finetune_epochs": epochs,
    }
    row.update(_finetune(context, small, epochs))
    if context.setup.speedup_batch:
        shape = (context.setup.speedup_batch, *context.input_shape[1:])
        row["speedup"] = speedup(
            context.model, small, shape, repeats=SPEEDUP_REPEATS, rounds=3, optimize=True
        )
    return row | {"network": small}


def _finetune(context: Context, small: torch.nn.Module, epochs: float) -> dict[str, Any]:
    """Fine-tune a pruned network by the setup's fixed schedule; its accuracies afterwards."""
    setup = context.setup
    started = time.perf_counter()
    fit(
        small,
        context.loaders.train,
        epochs=epochs,
        lr=setup.finetune_lr,
        schedule=setup.finetune_schedule,
        seed=context.seed,
        show_progress=False,
        **setup.training(),
    )
    return {
        "finetune_seconds": time.perf_counter() - started,
        "finetuned_val": evaluate(small, context.loaders.val)["accuracy"],
        "finetuned_test": evaluate(small, context.loaders.test)["accuracy"],
    }


def criteria_for(model: torch.nn.Module, *, peers: bool = True) -> tuple[str, ...]:
    """The criteria compared on ``model``: the registry's defaults that apply to it, with the
    peer libraries' criteria where installed (``peers``)."""
    return criteria_registry.defaults(model, peers=peers)


def run_setup(
    setup: Setup,
    root: Path,
    *,
    seeds: Iterable[int] = (0, 1, 2),
    budgets: Iterable[str] = BUDGETS,
    criteria: Iterable[str] | None = None,
    subset: int | None = None,
    eval_subset: int | None = None,
    finetune_epochs: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every (seed, criterion, budget, allocation) of one setup; returns rows, bases, settling."""
    rows, bases, settles, timings = [], [], [], []
    for seed in seeds:
        context = prepare_seed(setup, root, seed, subset=subset, eval_subset=eval_subset, log=log)
        chosen = tuple(criteria) if criteria is not None else criteria_for(context.model)
        bases.append({"seed": seed, **context.base})
        for criterion in chosen:
            importance = compute_importance(context, criterion)
            seconds = importance.history.get("seconds_total")
            timings.append({"seed": seed, "criterion": criterion, "seconds": seconds})
            if criterion == "dirichlet":
                settles.append(settling(importance))
            for budget, allocation in _cases(budgets, setup.widths):
                row = run_one(
                    context,
                    criterion,
                    importance,
                    budget,
                    allocation,
                    finetune_epochs=finetune_epochs,
                )
                rows.append(row)
            log(f"{setup.name} seed {seed}: {criterion} done")
    return {
        "setup": setup.name,
        "rows": rows,
        "bases": bases,
        "settling": settles,
        "importance_seconds": timings,
    }


def _cases(budgets: Iterable[str], widths: Iterable[str]) -> list[tuple[str, str]]:
    """(budget, allocation) pairs: every budget with both allocations, then the fixed widths."""
    return [(b, a) for b in budgets for a in ALLOCATIONS] + [(w, FIXED) for w in widths]


# The notebooks' comparison (03_prune, 04_figures) --------------------------------------------
def setup_for(config: Config) -> Setup:
    """The :class:`Setup` of a notebook experiment: its data, network and schedules."""
    return Setup(
        config.model,
        config.dataset,
        config.pretrain_epochs,
        config.dirichlet.epochs,
        config.finetune_epochs,
        width_multiplier=config.width_multiplier,
        batch_size=config.batch_size,
    )


def root_for(profile: str) -> Path:
    """``runs/<profile>/compare/``: one folder per setup, ``rows.json`` in each."""
    return paths.profile_dir(profile) / "compare"


def run_experiment(config: Config, *, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The comparison of one notebook experiment, with the profile's seeds, budgets, criteria.

    Returns None when the profile does not compare this experiment (``config.compare``);
    otherwise writes and returns ``runs/<profile>/compare/<dataset>-<model>/rows.json``.
    Torch-Pruning's criteria join where the optional package is installed.
    """
    if not config.compare:
        return None
    setup = setup_for(config)
    root = root_for(config.profile)
    result = run_setup(
        setup,
        root,
        seeds=config.compare_seeds,
        budgets=config.compare_budgets,
        criteria=config.compare_criteria,
        subset=config.subset,
        eval_subset=config.eval_subset,
        log=log,
    )
    write_json(root / setup.name / "rows.json", result)
    return result


def committed_result(config: Config) -> dict[str, Any] | None:
    """The committed rows of a notebook experiment's comparison (``make compare``), or None."""
    path = committed_results() / f"{setup_for(config).name}.json"
    return read_json(path) if path.exists() else None


def committed_results() -> Path:
    """``bench/results/compare/``: the raw rows of every setup, committed by
    ``bench/compare.py`` (``make compare``: the LeNets about 16 minutes, resnet20 about 90 on
    2 cores); ``make figures`` redraws them without rerunning."""
    return paths.kit_root() / "bench" / "results" / "compare"


def load_results(root: str | Path, extra: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """``{setup name: result}`` of every ``<root>/<setup>/rows.json``, in :data:`SETUPS` order;
    ``<extra>/<setup>.json`` for the setups ``root`` does not have."""
    found = {}
    if extra is not None:
        found = {path.stem: read_json(path) for path in Path(extra).glob("*.json")}
    found.update({path.parent.name: read_json(path) for path in Path(root).glob("*/rows.json")})
    order = {name: i for i, name in enumerate(SETUPS)}
    return {name: found[name] for name in sorted(found, key=lambda n: (order.get(n, 99), n))}


# Summaries ---------------------------------------------------------------------------------
METRICS = ("pruned_val", "finetuned_val", "finetuned_test", "macs", "params")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (budget, criterion, allocation)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["budget"], row["criterion"], row["allocation"]), []).append(row)
    summary = []
    for (budget, criterion, allocation), group in groups.items():
        entry: dict[str, Any] = {
            "budget": budget,
            "criterion": criterion,
            "allocation": allocation,
            "seeds": len(group),
        }
        for metric in METRICS:
            entry[metric], entry[f"{metric}_std"] = _mean_std([r[metric] for r in group])
        summary.append(entry)
    order = {b: i for i, b in enumerate(BUDGETS)}
    summary.sort(key=lambda e: (order.get(e["budget"], 99), e["allocation"], e["criterion"]))
    return summary


def dirichlet_margins(summary: list[dict[str, Any]], allocation: str = "own") -> list[dict]:
    """Per budget, Dirichlet's mean accuracy minus the best other criterion's (validation)."""
    margins = []
    for budget in dict.fromkeys(e["budget"] for e in summary):
        entries = [e for e in summary if e["budget"] == budget and e["allocation"] == allocation]
        ours = next((e for e in entries if e["criterion"] == "dirichlet"), None)
        others = [e for e in entries if e["criterion"] != "dirichlet"]
        if ours is None or not others:
            continue
        margin = {"budget": budget, "allocation": allocation}
        for metric in ("pruned_val", "finetuned_val"):
            best = max(others, key=lambda e: e[metric])
            margin[metric] = ours[metric] - best[metric]
            margin[f"{metric}_best_other"] = best["criterion"]
            margin[f"{metric}_dirichlet"] = (ours[metric], ours[f"{metric}_std"])
            margin[f"{metric}_other"] = (best[metric], best[f"{metric}_std"])
        margins.append(margin)
    return margins


# How fast importance settles -----------------------------------------------------------------
def settling(importance: Importance) -> dict[str, Any]:
    """Kendall tau, per layer, of each recorded snapshot's ranking with the final ranking.

    Returns ``{"fraction": [fraction of learning at each snapshot], "tau": {layer: [...]}}``;
    empty lists when the importance recorded no snapshots (a non-Dirichlet criterion).
    """
    history = importance.history
    snapshots, steps = history.get("snapshots", []), history.get("steps", [])
    total = max(steps) if steps else 1
    tau = {
        name: [kendall(snapshot[name], importance.mean(name)) for snapshot in snapshots]
        for name in importance.names
    }
    return {"fraction": [step / total for step in steps], "tau": tau}


def settling_summary(
    settles: list[dict[str, Any]], at: Iterable[float] = (0.1, 0.25, 0.5)
) -> dict[str, dict[str, float]]:
    """Mean tau over seeds at the first snapshot at or after each fraction of learning."""
    result: dict[str, dict[str, float]] = {}
    for layer in settles[0]["tau"] if settles else []:
        result[layer] = {}
        for fraction in at:
            values = []
            for settle in settles:
                index = next(i for i, f in enumerate(settle["fraction"]) if f >= fraction - 1e-9)
                values.append(settle["tau"][layer][index])
            result[layer][f"{fraction:g}"] = statistics.mean(values)
    return result
