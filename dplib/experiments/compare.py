"""Criteria compared at a MAC budget: the evaluation suite of ``bench/compare.py``.

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

Every result is one JSON file under ``<root>/<dataset>-<model>/seed<k>/results/``, written
atomically and reused when it exists, so a run resumes after the last completed result.
:func:`settling` gives the Kendall tau of the Dirichlet ranking against its final state over
the steps of learning (how fast importance settles).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from . import artefacts, baselines, data, models
from .artefacts import atomic_write_text, read_json, write_json
from .attach import attach_gates
from .budget import choose_widths
from .importance import Importance, format_widths
from .measure import count, kendall
from .profiles import Config
from .surgery import prune
from .train import evaluate, fit, fit_or_load, recalibrate_batchnorm
from .vi import learn_importance

BUDGETS = ("2x", "4x", "10x", "20x")
ALLOCATIONS = {"own": "importance", "same": "uniform"}
CRITERIA = ("dirichlet", "l1", "taylor", "random")
TP_CRITERIA = ("tp_l2", "tp_taylor")
TAYLOR_BATCHES = 20
FINETUNE_LR = 0.01
# BatchNorm statistics are re-estimated after surgery on this many training batches (networks
# with BatchNorm only; weights unchanged), before "right after pruning" is measured.
RECALIBRATION_BATCHES = 20


@dataclass(frozen=True)
class Setup:
    """A network on a data set and its fixed schedules (epochs over the training split)."""

    model: str
    dataset: str
    pretrain_epochs: float
    importance_epochs: float
    finetune_epochs: float
    pad_to: int | None = None  # pad the images (28x28) to this size, e.g. 32 for resnet20
    width_multiplier: float | None = None  # CIFAR networks only
    coupled: bool = False  # also prune the residual-coupled groups (stages), as one unit each
    batch_size: int = 128

    @property
    def name(self) -> str:
        """``<dataset>-<model>``, the dataset suffixed by the padded size (``32``)."""
        return f"{self.dataset}{self.pad_to or ''}-{self.model}"


# The cpu profile's schedules (dplib.profiles): 3 / 1 / 1 epochs, multiplied by 10 on mnist5k
# (3,500 training images) to give about as many steps as the full data sets.
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


def _padded(loaders: data.Loaders, size: int, seed: int, batch_size: int = 128) -> data.Loaders:
    """The same loaders over images padded to ``size`` x ``size`` with the background value."""
    splits = loaders.splits
    for split in ("train", "val", "test"):
        images, labels = getattr(splits, split).tensors
        margin = (size - images.shape[-1]) // 2
        padded = F.pad(images, (margin,) * 4, value=float(images.min()))
        setattr(splits, split, TensorDataset(padded, labels))
    return data.Loaders(
        train=data.make_loader(splits.train, batch_size, shuffle=True, seed=seed),
        val=data.make_loader(splits.val, 1000, shuffle=False),
        test=data.make_loader(splits.test, 1000, shuffle=False),
        splits=splits,
    )


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
    root: Path,
    seed: int,
    *,
    subset: int | None = None,
    eval_subset: int | None = None,
    log=print,
) -> Context:
    """Load the data and pretrain the network of one seed (checkpoint cached in its folder)."""
    folder = Path(root) / setup.name / f"seed{seed}"
    loaders = data.loaders(
        setup.dataset,
        batch_size=setup.batch_size,
        subset=subset,
        eval_subset=eval_subset,
        seed=seed,
    )
    if setup.pad_to:
        loaders = _padded(loaders, setup.pad_to, seed, setup.batch_size)
    options: dict[str, Any] = {}
    if setup.pad_to:  # a CIFAR network on grey images
        options = {"in_channels": 1, "width_multiplier": setup.width_multiplier}
    model = models.build(setup.model, seed=seed, **options)
    loaded = fit_or_load(
        model,
        folder / "base.pt",
        loaders.train,
        model_name=setup.model,
        epochs=setup.pretrain_epochs,
        lr=0.05,
        val_loader=loaders.val,
        seed=seed,
        show_progress=False,
    )
    if not loaded:
        log(f"{setup.name} seed {seed}: pretrained {setup.pretrain_epochs} epochs")
    shape = (1, *loaders.splits.train.tensors[0].shape[1:])
    params, macs = count(model, shape)
    base = {
        "val": evaluate(model, loaders.val)["accuracy"],
        "test": evaluate(model, loaders.test)["accuracy"],
        "params": params,
        "macs": macs,
    }
    return Context(setup, seed, folder, loaders, model, shape, base)


def compute_importance(context: Context, criterion: str) -> Importance:
    """One criterion's importance of the seed's network (cached as ``importance-<c>.pt``)."""
    path = context.folder / f"importance-{criterion}.pt"
    try:
        return Importance.load(path)
    except (FileNotFoundError, ValueError):
        pass
    started = time.perf_counter()
    if criterion == "dirichlet":
        gated = attach_gates(context.model, coupled=context.setup.coupled)  # kit defaults
        importance = learn_importance(
            gated,
            context.loaders.train,
            epochs=context.setup.importance_epochs,
            seed=context.seed,
            show_progress=False,
        )
        gated.remove()
    elif criterion in TP_CRITERIA:
        from .torch_pruning import tp_importance

        importance = tp_importance(
            context.model,
            criterion,
            context.loaders.train,
            batches=TAYLOR_BATCHES,
            input_shape=context.input_shape,
            coupled=context.setup.coupled,
        )
    else:
        importance = baselines.baseline_importance(
            criterion,
            context.model,
            context.loaders.train,
            seed=context.seed,
            batches=TAYLOR_BATCHES,
            coupled=context.setup.coupled,
        )
    importance.history["seconds_total"] = time.perf_counter() - started
    importance.save(path)
    return importance


def widths_for(
    context: Context, importance: Importance, budget: str, allocation: str
) -> dict[str, int]:
    """The widths of ``allocation`` (``own`` or ``same``) at ``budget`` fewer MACs."""
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
    path = context.folder / "results" / f"{criterion}-{allocation}-{budget}.json"
    try:
        return read_json(path)
    except (FileNotFoundError, ValueError):
        pass
    epochs = context.setup.finetune_epochs if finetune_epochs is None else finetune_epochs
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
        "budget": budget,
        "allocation": allocation,
        "widths": format_widths(widths),
        "params": params,
        "macs": macs,
        "base_macs": context.base["macs"],
        "pruned_val": evaluate(small, context.loaders.val)["accuracy"],
        "batchnorm_recalibrated": bool(recalibrated),
        "finetune_epochs": epochs,
    }
    started = time.perf_counter()
    fit(
        small,
        context.loaders.train,
        epochs=epochs,
        lr=FINETUNE_LR,
        schedule="constant",
        seed=context.seed,
        show_progress=False,
    )
    row["finetune_seconds"] = time.perf_counter() - started
    row["finetuned_val"] = evaluate(small, context.loaders.val)["accuracy"]
    row["finetuned_test"] = evaluate(small, context.loaders.test)["accuracy"]
    write_json(path, row)
    return row


def criteria_for(model: str, *, torch_pruning: bool = False) -> tuple[str, ...]:
    """The criteria compared on ``model``: bn_scale only where it has BatchNorm."""
    chosen = CRITERIA + (("bn_scale",) if model.endswith("_bn") else ())
    return chosen + (TP_CRITERIA if torch_pruning else ())


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
    criteria = tuple(criteria) if criteria is not None else criteria_for(setup.model)
    rows, bases, settles = [], [], []
    for seed in seeds:
        context = prepare(setup, root, seed, subset=subset, eval_subset=eval_subset, log=log)
        bases.append({"seed": seed, **context.base})
        for criterion in criteria:
            importance = compute_importance(context, criterion)
            if criterion == "dirichlet":
                settles.append(settling(importance))
            for budget in budgets:
                for allocation in ALLOCATIONS:
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
    return {"setup": setup.name, "rows": rows, "bases": bases, "settling": settles}


# The notebooks' comparison (03_prune, 04_figures) --------------------------------------------
def setup_for(config: Config) -> Setup:
    """The :class:`Setup` of a notebook experiment: its data, network and schedules."""
    return Setup(
        config.model,
        config.dataset,
        config.pretrain_epochs,
        config.importance_epochs,
        config.finetune_epochs,
        width_multiplier=config.width_multiplier,
        batch_size=config.batch_size,
    )


def root_for(profile: str) -> Path:
    """``runs/<profile>/compare/``: one folder per setup, ``rows.json`` in each."""
    return artefacts.profile_dir(profile) / "compare"


def run_experiment(config: Config, *, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The comparison of one notebook experiment, with the profile's seeds, budgets, criteria.

    Returns None when the profile does not compare this experiment (``config.compare``);
    otherwise writes and returns ``runs/<profile>/compare/<dataset>-<model>/rows.json``.
    Torch-Pruning's criteria join where the optional package is installed.
    """
    if not config.compare:
        return None
    setup = setup_for(config)
    criteria = config.compare_criteria
    if criteria is None:
        criteria = criteria_for(config.model, torch_pruning=_has_torch_pruning())
    root = root_for(config.profile)
    result = run_setup(
        setup,
        root,
        seeds=config.compare_seeds,
        budgets=config.compare_budgets,
        criteria=criteria,
        subset=config.subset,
        eval_subset=config.eval_subset,
        log=log,
    )
    write_json(root / setup.name / "rows.json", result)
    return result


def _has_torch_pruning() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch_pruning") is not None


def committed_results() -> Path:
    """``bench/results/compare/``: the raw rows of setups too long for the main job (resnet20,
    about 90 minutes on 2 cores), committed by ``bench/compare.py``; ``make figures`` redraws
    them."""
    return artefacts.kit_root() / "bench" / "results" / "compare"


def load_results(root: str | Path, extra: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """``{setup name: result}`` of every ``<root>/<setup>/rows.json``, in :data:`SETUPS` order;
    ``<extra>/<setup>.json`` for the setups ``root`` does not have."""
    found = {}
    if extra is not None:
        found = {path.stem: read_json(path) for path in Path(extra).glob("*.json")}
    found.update({path.parent.name: read_json(path) for path in Path(root).glob("*/rows.json")})
    order = {name: i for i, name in enumerate(SETUPS)}
    return {name: found[name] for name in sorted(found, key=lambda n: (order.get(n, 99), n))}


def _percent(pair: tuple[float, float]) -> str:
    return f"{100 * pair[0]:.2f} ± {100 * pair[1]:.2f}"


def goals_table(results: dict[str, dict[str, Any]], skip: Iterable[str] = ("2x",)) -> str:
    """Dirichlet (own allocation) against the best other criterion per setup and budget."""
    lines = [
        "| setup | budget | seeds | Dirichlet after pruning | best other | Dirichlet after "
        "fine-tune | best other | lead after pruning / after fine-tune (points) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for m in dirichlet_margins(summarise(result["rows"])):
            if m["budget"] in skip:
                continue
            lines.append(
                f"| {name} | {m['budget']} | {len(result['bases'])} "
                f"| {_percent(m['pruned_val_dirichlet'])} "
                f"| {m['pruned_val_best_other']} {_percent(m['pruned_val_other'])} "
                f"| {_percent(m['finetuned_val_dirichlet'])} "
                f"| {m['finetuned_val_best_other']} {_percent(m['finetuned_val_other'])} "
                f"| {100 * m['pruned_val']:+.2f} / {100 * m['finetuned_val']:+.2f} |"
            )
    return "\n".join(lines) + "\n"


def setup_section(name: str, result: dict[str, Any]) -> str:
    """The Markdown section of one setup: its table, base network, margins and settling."""
    dataset, _, model = name.partition("-")
    summary = summarise(result["rows"])
    val = [b["val"] for b in result["bases"]]
    epochs = result["rows"][0]["finetune_epochs"] if result["rows"] else 0
    section = markdown_table(summary, f"{model} on {dataset} ({len(val)} seeds)")
    section += (
        f"\nBase network: {100 * statistics.mean(val):.2f}% validation accuracy (mean over "
        f"seeds), {result['bases'][0]['params']:,} params, {result['bases'][0]['macs']:,} MACs; "
        f"fine-tuning {epochs:g} epoch(s) at lr {FINETUNE_LR}, constant.\n\n"
        "Dirichlet (own allocation) minus the best other criterion, validation, points:\n\n"
    )
    for m in dirichlet_margins(summary):
        section += (
            f"- {m['budget']}: after pruning {100 * m['pruned_val']:+.2f} (best other: "
            f"{m['pruned_val_best_other']}), after fine-tuning {100 * m['finetuned_val']:+.2f} "
            f"(best other: {m['finetuned_val_best_other']})\n"
        )
    if result["settling"]:
        taus = settling_summary(result["settling"])
        section += (
            "\nKendall tau with the final ranking (mean over seeds) at 10%, 25%, 50% of "
            "importance learning: "
            + "; ".join(
                f"{layer} " + " / ".join(f"{v:.2f}" for v in values.values())
                for layer, values in taus.items()
            )
            + "\n"
        )
    return section


def write_report(
    root: str | Path, folder: str | Path, extra: str | Path | None = None
) -> list[Path]:
    """Figures (PNG and PDF) and ``compare.md`` of every setup with results under ``root`` (and
    ``extra``, see :func:`load_results`).

    ``compare_<model>_<dataset>``: accuracy against MACs, one line per criterion;
    ``settling_<dataset>-<model>``: Kendall tau over learning; ``compare.md``: the goals table
    (Dirichlet against the best other criterion) and every setup's full table. Returns the
    files written (none when there are no results).
    """
    from .plots import save, style

    results = load_results(root, extra)
    if not results:
        return []
    style()  # the kit's look, whether called from 04_figures or bench/compare.py
    written: list[Path] = []
    sections = []
    for name, result in results.items():
        dataset, _, model = name.partition("-")
        title = f"{model} on {dataset}"
        figure = plot_comparison(summarise(result["rows"]), title)
        written += save(figure, folder, f"compare_{model}_{dataset}")
        plt.close(figure)
        if result["settling"]:
            figure = plot_settling(result["settling"], f"how fast the ranking settles: {title}")
            written += save(figure, folder, f"settling_{name}")
            plt.close(figure)
        sections.append(setup_section(name, result))
    header = (
        "# Criteria compared at a MAC budget\n\n"
        "Own allocation, validation accuracy %, mean ± std over seeds; the best other criterion "
        "is the one with the highest mean. Goal: Dirichlet at least as high after fine-tuning "
        "and highest right after pruning, at 4x, 10x and 20x fewer MACs.\n\n"
    )
    target = Path(folder) / "compare.md"
    atomic_write_text(target, header + goals_table(results) + "\n" + "\n".join(sections))
    return [*written, target]


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


def markdown_table(summary: list[dict[str, Any]], title: str = "") -> str:
    """The summary as a Markdown table (accuracies in %, mean ± std over seeds)."""

    def pct(entry: dict[str, Any], metric: str) -> str:
        return f"{100 * entry[metric]:.2f} ± {100 * entry[metric + '_std']:.2f}"

    lines = [f"### {title}", ""] if title else []
    lines += [
        "| budget | allocation | criterion | val after pruning | val after fine-tune "
        "| test after fine-tune | MACs | params | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in summary:
        lines.append(
            f"| {entry['budget']} | {entry['allocation']} | {entry['criterion']} "
            f"| {pct(entry, 'pruned_val')} | {pct(entry, 'finetuned_val')} "
            f"| {pct(entry, 'finetuned_test')} | {entry['macs']:,.0f} | {entry['params']:,.0f} "
            f"| {entry['seeds']} |"
        )
    return "\n".join(lines) + "\n"


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


def margins_table(summary: list[dict[str, Any]], allocation: str = "own") -> Any:
    """:func:`dirichlet_margins` as a pandas DataFrame, in points of validation accuracy."""
    import pandas

    return pandas.DataFrame(
        [
            {
                "budget": m["budget"],
                "Dirichlet after pruning": round(100 * m["pruned_val_dirichlet"][0], 2),
                "best other": m["pruned_val_best_other"],
                "lead after pruning": round(100 * m["pruned_val"], 2),
                "Dirichlet after fine-tune": round(100 * m["finetuned_val_dirichlet"][0], 2),
                "best other ": m["finetuned_val_best_other"],
                "lead after fine-tune": round(100 * m["finetuned_val"], 2),
            }
            for m in dirichlet_margins(summary, allocation)
        ]
    )


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


# Figures -------------------------------------------------------------------------------------
COLOURS = {
    "dirichlet": "#d62728",
    "random": "#7f7f7f",
    "l1": "#1f77b4",
    "taylor": "#2ca02c",
    "bn_scale": "#9467bd",
    "tp_l2": "#17becf",
    "tp_taylor": "#bcbd22",
}


def plot_comparison(summary: list[dict[str, Any]], title: str = "") -> plt.Figure:
    """Validation accuracy against MACs, right after pruning and after fine-tuning: one line
    per criterion, own allocation solid, same widths dashed, error bars one std over seeds."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    criteria = list(dict.fromkeys(e["criterion"] for e in summary))
    for axis, metric, label in zip(
        axes, ("pruned_val", "finetuned_val"), ("right after pruning", "after fine-tuning")
    ):
        for criterion in criteria:
            for allocation, style in (("own", "-"), ("same", "--")):
                entries = sorted(
                    (
                        e
                        for e in summary
                        if e["criterion"] == criterion and e["allocation"] == allocation
                    ),
                    key=lambda e: e["macs"],
                )
                if not entries:
                    continue
                axis.errorbar(
                    [e["macs"] for e in entries],
                    [100 * e[metric] for e in entries],
                    yerr=[100 * e[metric + "_std"] for e in entries],
                    ls=style,
                    marker="o" if allocation == "own" else "x",
                    ms=4,
                    capsize=3,
                    color=COLOURS.get(criterion),
                    label=f"{criterion} ({allocation})",
                )
        axis.set_xscale("log")
        axis.set_xlabel("MACs (log)")
        axis.set_ylabel("validation accuracy (%)")
        axis.set_title(label)
    axes[1].legend(fontsize=7, ncol=2)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_settling(settles: list[dict[str, Any]], title: str = "") -> plt.Figure:
    """Kendall tau with the final ranking against the fraction of learning, per layer (mean
    over seeds, band: min to max)."""
    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    for layer in settles[0]["tau"] if settles else []:
        fraction = np.asarray(settles[0]["fraction"])
        values = np.array([s["tau"][layer] for s in settles], dtype=float)
        line = axis.plot(fraction, values.mean(0), marker=".", label=layer)[0]
        axis.fill_between(fraction, values.min(0), values.max(0), alpha=0.2, color=line.get_color())
    axis.set_ylim(-0.1, 1.05)
    axis.set_xlabel("fraction of importance learning (steps)")
    axis.set_ylabel("Kendall tau with the final ranking")
    axis.set_title(title or "how fast the ranking settles")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
