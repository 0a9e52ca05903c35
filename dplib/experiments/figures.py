"""The kit's figures (matplotlib in seaborn's style) of the notebooks, the comparison and the study.

Each function draws from the data it is given (never from training) and returns a Figure;
:func:`save` writes it as PNG and PDF. Figure numbers: ``notebooks/METHOD.md``, section 6.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ..files import atomic_path
from ..importance import Importance
from . import compare, reports, study

# One colour per criterion in every figure (a criterion not listed gets matplotlib's next one).
COLOURS = {
    "dirichlet": "#d62728",
    "random": "#7f7f7f",
    "l1": "#1f77b4",
    "taylor": "#2ca02c",
    "bn_scale": "#9467bd",
    "tp_l2": "#17becf",
    "tp_taylor": "#bcbd22",
}


def save(figure: plt.Figure, folder: str | os.PathLike, name: str) -> list[Path]:
    """Write ``name.png`` (150 dpi) and ``name.pdf`` into ``folder``, each atomically; close
    ``figure``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in ("png", "pdf"):
        target = folder / f"{name}.{suffix}"
        with atomic_path(target) as temporary:
            # PDFs carry a creation date by default; without it reruns give identical files.
            metadata = {"CreationDate": None} if suffix == "pdf" else {"Software": None}
            figure.savefig(temporary, format=suffix, dpi=150, metadata=metadata)
        written.append(target)
    plt.close(figure)
    return written


def _laid_out(figure: plt.Figure, title: str = "") -> plt.Figure:
    """``figure`` with ``title`` (if any) above its panels, laid out tight."""
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


# The primer -------------------------------------------------------------------------------
def dirichlet_simplex(alphas: list[tuple[float, float, float]], samples: int = 1500) -> plt.Figure:
    """Samples of Dir(alpha) on the 2-simplex (a triangle), one panel per alpha."""
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])
    figure, axes = plt.subplots(1, len(alphas), figsize=(3.2 * len(alphas), 3.0))
    generator = torch.Generator().manual_seed(0)
    for axis, alpha in zip(np.atleast_1d(axes), alphas):
        concentration = torch.tensor(alpha, dtype=torch.float)
        gammas = torch._standard_gamma(concentration.expand(samples, 3).contiguous(), generator)
        points = (gammas / gammas.sum(1, keepdim=True)).numpy() @ corners
        axis.fill(corners[:, 0], corners[:, 1], color="#f2f2f2", zorder=0)
        axis.scatter(points[:, 0], points[:, 1], s=2, alpha=0.4, color="#d62728")
        mean = (concentration / concentration.sum()).numpy() @ corners
        axis.scatter(*mean, marker="x", color="black", s=60, label="mean")
        axis.set_title(r"$\alpha$ = (" + ", ".join(f"{a:g}" for a in alpha) + ")")
        axis.set_aspect("equal")
        axis.axis("off")
    return _laid_out(figure, "Dirichlet samples on the simplex: small alpha -> corners (sparse)")


def dirichlet_draws(alpha0s: list[float], units: int = 20) -> plt.Figure:
    """One draw s ~ Dir(alpha0 * 1) over ``units`` units per alpha0, as bars of K*s."""
    figure, axes = plt.subplots(1, len(alpha0s), figsize=(3.2 * len(alpha0s), 2.6), sharey=True)
    generator = torch.Generator().manual_seed(1)
    for axis, alpha0 in zip(np.atleast_1d(axes), alpha0s):
        gammas = torch._standard_gamma(torch.full((units,), float(alpha0)), generator)
        draw = (gammas / gammas.sum()).numpy()
        axis.bar(range(units), units * draw, color="#1f77b4")
        axis.axhline(1.0, color="black", lw=0.8, ls="--")
        axis.set_title(rf"$\alpha_0$ = {alpha0:g}")
        axis.set_xlabel("unit k")
    np.atleast_1d(axes)[0].set_ylabel(r"gate $K s_k$")
    return _laid_out(figure)


def synthetic(results: list[dict[str, Any]]) -> plt.Figure:
    """Figure 2 (the synthetic check): learned E[s] (+- std) against the true s*, per hidden
    size and estimator; units sorted by s*."""
    hiddens = sorted({r["hidden"] for r in results})
    estimators = sorted({r["estimator"] for r in results}, reverse=True)
    rows, cols = len(estimators), len(hiddens)
    figure, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for result in results:
        axis = axes[estimators.index(result["estimator"]), hiddens.index(result["hidden"])]
        order = torch.argsort(result["s_star"], descending=True)
        shown = order[: min(len(order), 40)]
        x = np.arange(len(shown))
        axis.bar(x, result["s_star"][shown].numpy(), color="#cccccc", label="true s*")
        mean, std = result["mean"][shown].numpy(), result["std"][shown].numpy()
        axis.errorbar(x, mean, yerr=std, fmt="o", ms=3, color="#d62728", label="E[s] ± std")
        title = f"K = {result['hidden']}, {result['estimator']}: Pearson {result['pearson']:.2f}"
        axis.set_title(title, fontsize=10)
        axis.set_xlabel(f"hidden units by true s* (top {len(shown)})")
    axes[0, 0].legend(fontsize=8)
    return _laid_out(figure)


# Importance ----------------------------------------------------------------------------------
def importance_bars(importance: Importance, title: str = "") -> plt.Figure:
    """Figure 3: per layer, units sorted by K*E[s] with a ±K*std band."""
    names = importance.names
    figure, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 2.8))
    for axis, name in zip(np.atleast_1d(axes), names):
        relative = importance.relative(name)
        order = torch.argsort(relative, descending=True)
        units = relative.numel()
        x, heights = np.arange(units), relative[order].numpy()
        axis.bar(x, heights, width=1.0, color="#d62728", lw=0, zorder=2)
        if importance.concentration is not None:
            scale = units / importance.mean(name).sum()
            spread = (importance.std(name) * scale)[order].numpy()
            band = {"color": "black", "alpha": 0.15, "step": "mid", "lw": 0, "zorder": 3}
            axis.fill_between(x, heights - spread, heights + spread, label="± std", **band)
        axis.axhline(1.0, color="black", lw=0.8, ls="--")
        axis.set_title(f"{name} ({units} units)")
        axis.set_xlabel("units, most important first")
    np.atleast_1d(axes)[0].set_ylabel(r"$K\,E[s_k]$ (1 = layer average)")
    return _laid_out(figure, title)


def importance_learning(importance: Importance, title: str = "") -> plt.Figure:
    """The negative ELBO's terms per step, each on its own scale: the cross-entropy, the KL
    (left out when ``kl_weight`` is 0: the loss is then the cross-entropy), and how fast each
    layer's ranking settles (when snapshots were kept)."""
    history, config = importance.history, importance.config
    with_kl = config.get("kl_weight") != 0 and bool(history.get("kl"))
    snapshots = bool(history.get("snapshots"))
    count = 1 + with_kl + snapshots
    figure, axes = plt.subplots(1, count, figsize=(4.6 * count, 3.2), squeeze=False)
    panels = iter(axes[0])
    axis = next(panels)
    window = _learning_curve(axis, history["cross_entropy"], "#1f77b4")
    axis.set_ylabel("cross-entropy (nats per image)")
    the_loss = "" if with_kl else r" = the loss ($\beta$ = 0)"
    axis.set_title(f"cross-entropy{the_loss}, moving average of {window}", fontsize=9)
    if with_kl:
        axis = next(panels)
        _learning_curve(axis, history["kl"], "#d62728")
        axis.set_ylabel(r"KL($q\,\|\,$prior), summed over layers")
        per_n = " / N" if config.get("kl_divided_by_n") else ""
        beta = config.get("kl_weight")
        weight = "" if beta is None else rf": in the loss $\times$ {beta:g}{per_n}"
        axis.set_title(f"KL term{weight}", fontsize=9)
    if snapshots:
        axis = next(panels)
        for name, taus in compare.settling(importance)["tau"].items():
            axis.plot(history["steps"], taus, marker=".", label=name)
        axis.set_ylim(-1.05, 1.05)
        axis.set_xlabel("step")
        axis.set_ylabel("Kendall tau with the final ranking")
        axis.set_title("how fast the ranking settles", fontsize=9)
        axis.legend()
    return _laid_out(figure, title)


def _learning_curve(axis: plt.Axes, values: list[float], colour: str) -> int:
    """``values`` per step, faint, and their moving average over a 50th of the steps on top,
    the y range that of the average and of the steps' 1st to 99th percentile (no rare spike
    flattens the trend); the window."""
    values = np.asarray(values, dtype=float)
    steps = np.arange(1, len(values) + 1)
    window = max(1, len(values) // 50)
    smooth = np.convolve(values, np.ones(window) / window, mode="valid")
    axis.plot(steps, values, color=colour, alpha=0.25, lw=0.6)
    axis.plot(steps[window - 1 :], smooth, color=colour, lw=1.6)
    low, high = np.percentile(values, [1, 99])
    low, high = min(low, smooth.min()), max(high, smooth.max())
    margin = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
    axis.set_ylim(low - margin, high + margin)
    axis.set_xlabel("step")
    return window


def feature_maps(payload: dict[str, Any], classes: list[str], title: str = "", top: int = 3):
    """Figure 4: test images with the maps of the most and least important channels."""
    images, labels, maps = payload["images"], payload["labels"], payload["maps"]
    order = torch.argsort(payload["importance"], descending=True)
    chosen = list(order[:top]) + list(order[-top:])
    rows, cols = len(labels), 1 + len(chosen)
    figure, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows), squeeze=False)
    for row in range(rows):
        if images.shape[1] == 3:  # colour images (CIFAR-10): show them in colour
            axes[row, 0].imshow(images[row].permute(1, 2, 0).clamp(0, 1).numpy())
        else:
            axes[row, 0].imshow(images[row, 0].numpy(), cmap="gray")
        axes[row, 0].set_ylabel(classes[int(labels[row])], fontsize=7, rotation=0, ha="right")
        for col, channel in enumerate(chosen, start=1):
            axes[row, col].imshow(maps[row, int(channel)].numpy(), cmap="viridis")
            if row == 0:
                kind = "top" if col <= top else "bottom"
                axes[row, col].set_title(f"{kind} ch {int(channel)}", fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    return _laid_out(
        figure, title or "first-layer feature maps: most (left) and least important channels"
    )


# Compression ---------------------------------------------------------------------------------
def accuracy_vs_compression(frame: pd.DataFrame, title: str = "") -> plt.Figure:
    """Figure 5: test accuracy against params and MACs, per criterion, right after
    pruning (dashed, open) and after fine-tuning (solid); ``frame`` is a results table."""
    is_base = frame["criterion"].str.startswith("base")
    base, pruned = frame[is_base], frame[~is_base]
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for axis, measure_name in zip(axes, ("params", "macs")):
        for criterion, group in pruned.groupby("criterion"):
            group = group.sort_values(measure_name)
            colour, x = COLOURS.get(criterion), group[measure_name]
            axis.plot(x, 100 * group["accuracy"], "o-", color=colour, label=criterion)
            axis.plot(x, 100 * group["accuracy_pruned"], "o--", mfc="none", color=colour, alpha=0.6)
        if len(base):
            axis.axhline(100 * base["accuracy"].iloc[0], color="black", lw=0.8, ls=":")
        axis.set_xscale("log")
        axis.set_xlabel(measure_name.upper() if measure_name == "macs" else "parameters")
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(title="solid: fine-tuned\ndashed: just pruned", fontsize=8)
    return _laid_out(figure, title)


# The comparison at a MAC budget ------------------------------------------------------------
STAGES = (("pruned_val", "right after pruning"), ("finetuned_val", "after fine-tuning"))
RULE_TITLES = {"greedy": "greedy on the scores", "measured": "measured: loss per MAC"}
RANKING_WIDTH = 1.5  # the ranking's panel (six lines) against one rule's panel (two)
MIN_SPAN = 2.0  # points of accuracy at least on a y axis: one seed's noise does not look big
_BUDGET = re.compile(r"^\d+(\.\d+)?x$")  # "4x"; fixed widths and references are not budgets


def plot_comparison(summary: list[dict[str, Any]], title: str = "") -> plt.Figure:
    """The comparison at MAC budgets (``summary``: :func:`dplib.experiments.compare.summarise`)
    as two questions, validation accuracy right after pruning (top row) and after fine-tuning
    (bottom row) against the budget, error bars one std over seeds:

    (a) the ranking: every criterion at the same widths (allocation ``uniform``);
    (b) the allocation: one column per rule that ran for Dirichlet (greedy, measured),
        Dirichlet beside L1 under the same rule (the control).

    Only what ran is drawn; Torch-Pruning's global pruning and fixed widths: in the tables."""
    budgets = sorted({e["budget"] for e in summary if _BUDGET.match(e["budget"])}, key=_ratio)
    shown = [e for e in summary if e["budget"] in budgets]
    same = [e for e in shown if e["allocation"] == "uniform"]
    rules = [r for r in reports.RULES if any(_is(e, "dirichlet", r) for e in shown)]
    groups, ratios = [], []  # (question, [(panel title, entries)]) with rows; their widths
    if same:
        groups.append(("(a) the ranking", [("every criterion at the same widths", same)]))
        ratios.append(RANKING_WIDTH)
    if rules:
        pairs = [
            (RULE_TITLES[r], [e for e in shown if _is(e, ("dirichlet", "l1"), r)]) for r in rules
        ]
        groups.append(("(b) the allocation: Dirichlet vs L1", pairs))
        ratios.append(len(pairs))
    panel = max(2.8, 1.0 + 0.6 * len(budgets))  # inches per panel: narrow for one budget
    figure = plt.figure(figsize=(1.0 + panel * max(1, sum(ratios)), 6.4), layout="constrained")
    if not groups:
        figure.text(0.5, 0.5, "no rows at a MAC budget to draw", ha="center")
        return figure
    subfigures = figure.subfigures(1, len(groups), width_ratios=ratios)
    handles: dict[str, Any] = {}
    for subfigure, (question, columns) in zip(np.atleast_1d(subfigures), groups):
        subfigure.suptitle(question, fontsize=10)
        axes = subfigure.subplots(2, len(columns), sharex=True, sharey="row", squeeze=False)
        for column, (name, entries) in enumerate(columns):
            for row, (metric, stage) in enumerate(STAGES):
                handles |= _accuracy_lines(axes[row, column], entries, metric, budgets)
                axes[row, column].set_ylabel(f"{stage}\nvalidation accuracy (%)")
            axes[0, column].set_title(name, fontsize=9)
            axes[1, column].set_xlabel("MAC budget (times fewer)")
        for axis in axes.flat:
            axis.label_outer()
        for axis in axes[:, 0]:
            _at_least(axis, MIN_SPAN)
    seeds = max(e["seeds"] for e in shown)
    spread = f" (error bars: ± 1 std over {seeds} seeds)" if seeds > 1 else " (one seed)"
    figure.suptitle((title or "the comparison at a MAC budget") + spread)
    figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=len(handles))
    return figure


def _ratio(budget: str) -> float:
    return float(budget.rstrip("x"))


def _at_least(axis: plt.Axes, span: float) -> None:
    """Widen ``axis``'s y range about its middle to at least ``span``."""
    low, high = axis.get_ylim()
    if high - low < span:
        middle = (low + high) / 2
        axis.set_ylim(middle - span / 2, middle + span / 2)


def _is(entry: dict[str, Any], criteria: str | tuple[str, ...], allocation: str) -> bool:
    criteria = (criteria,) if isinstance(criteria, str) else criteria
    return entry["criterion"] in criteria and entry["allocation"] == allocation


OTHERS = {"marker": ".", "ms": 6, "lw": 1.2, "zorder": 2, "capsize": 2, "elinewidth": 0.8}
OURS = OTHERS | {"marker": "o", "ms": 5, "lw": 2.2, "zorder": 3}  # Dirichlet's: bold, on top


def _accuracy_lines(
    axis: plt.Axes, entries: list[dict[str, Any]], metric: str, budgets: list[str]
) -> dict[str, Any]:
    """One line per criterion of ``entries``: ``metric`` (in %) ± std at each of ``budgets``
    (evenly spaced, each criterion nudged sideways so the error bars do not overlap); the
    legend handles by criterion."""
    criteria = list(dict.fromkeys(e["criterion"] for e in entries))
    # Dirichlet first in the legend (and on top of the others: its zorder)
    criteria.sort(key=lambda c: (c != "dirichlet", list(COLOURS).index(c) if c in COLOURS else 99))
    handles = {}
    for index, criterion in enumerate(criteria):
        points = sorted(
            (budgets.index(e["budget"]), 100 * e[metric], 100 * e[f"{metric}_std"])
            for e in entries
            if e["criterion"] == criterion
        )
        x, y, error = (np.array(values) for values in zip(*points))
        nudge = 0.07 * (index - (len(criteria) - 1) / 2)
        look = OURS if criterion == "dirichlet" else OTHERS
        handles[criterion] = axis.errorbar(
            x + nudge, y, yerr=error, color=COLOURS.get(criterion), label=criterion, **look
        )
    axis.set_xticks(range(len(budgets)), budgets)
    axis.set_xlim(-0.5, len(budgets) - 0.5)
    return handles


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
    return _laid_out(figure)


# The study --------------------------------------------------------------------------------
def save_png(figure: plt.Figure, path: str | os.PathLike) -> Path:
    """Write ``figure`` as one PNG (120 dpi, tight), atomically, and close it (the study's)."""
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def study_factors(results: dict[str, dict[str, list[dict[str, Any]]]]) -> plt.Figure | None:
    """Per setup, each one-factor change's effect on accuracy right after pruning (None when
    nothing was screened)."""
    setups = [s for s, e in results.items() if e["screened"]]
    if not setups:
        return None
    figure, axes = plt.subplots(1, len(setups), figsize=(4.2 * len(setups), 6), squeeze=False)
    for axis, setup in zip(axes[0], setups, strict=True):
        screened = results[setup]["screened"]
        base = next((r for r in screened if r["key"] == "specified"), None)
        if base is None:
            continue
        specified = study.screen_value(base)
        rows = [
            (study.label(r)[len("dirichlet ") :], 100 * (study.screen_value(r) - specified))
            for r in screened
            if r["key"] != "specified"
        ]
        rows.sort(key=lambda item: item[1])
        colours = ["tab:green" if gain > 0 else "tab:red" for _, gain in rows]
        axis.barh([k for k, _ in rows], [g for _, g in rows], color=colours)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_title(f"{setup}\n(specified: {100 * specified:.1f}%)", fontsize=9)
        axis.set_xlabel("change in val. accuracy after pruning (points)")
        axis.tick_params(axis="y", labelsize=7)
    return _laid_out(figure)


def study_finals(results: dict[str, dict[str, list[dict[str, Any]]]]) -> plt.Figure | None:
    """Per setup, validation accuracy after fine-tuning at each width, finals and baselines
    (None when nothing was fine-tuned)."""
    setups = [s for s, e in results.items() if e["finals"]]
    if not setups:
        return None
    figure, axes = plt.subplots(1, len(setups), figsize=(4.5 * len(setups), 4), squeeze=False)
    for axis, setup in zip(axes[0], setups, strict=True):
        finals = results[setup]["finals"]
        widths = list(finals[0]["finetuned"])
        for result in finals:
            style = "-" if result["criterion"] == "dirichlet" else "--"
            accuracies = [100 * result["finetuned"][w] for w in widths]
            axis.plot(widths, accuracies, style, marker="o", label=study.label(result)[:40])
        axis.set_title(setup, fontsize=9)
        axis.set_xlabel("kept widths (mild to aggressive)")
        axis.set_ylabel("val. accuracy after fine-tuning (%)")
        axis.legend(fontsize=6)
    return _laid_out(figure)


# seaborn's "deep" palette (0.13), the colour cycle of every figure
DEEP = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
DEEP += ["#CCB974", "#64B5CD"]


def style() -> None:
    """The kit's plot style: seaborn's whitegrid, paper context and deep palette, as matplotlib
    ships them (importing seaborn itself costs each notebook over a second)."""
    plt.style.use(["seaborn-v0_8-whitegrid", "seaborn-v0_8-paper"])
    plt.rcParams["axes.prop_cycle"] = plt.cycler(color=DEEP)
