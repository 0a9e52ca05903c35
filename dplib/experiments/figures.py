"""The kit's figures (matplotlib + seaborn) of the notebooks, the comparison and the study.

Each function draws from the data it is given (never from training) and returns a Figure;
:func:`save` writes it as PNG and PDF. Figure numbers: ``notebooks/METHOD.md``, section 6.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from ..files import atomic_path
from ..importance import Importance
from . import compare, study

# One colour per criterion in every figure (a criterion not listed gets matplotlib's next one).
# fmt: off
COLOURS = {
    "dirichlet": "#d62728", "random": "#7f7f7f", "l1": "#1f77b4", "taylor": "#2ca02c",
    "bn_scale": "#9467bd", "tp_l2": "#17becf", "tp_taylor": "#bcbd22",
}
# fmt: on


def save(figure: plt.Figure, folder: str | os.PathLike, name: str) -> list[Path]:
    """Write ``name.png`` (150 dpi) and ``name.pdf`` into ``folder``, each atomically."""
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
    return written


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
    figure.suptitle("Dirichlet samples on the simplex: small alpha -> corners (sparse)")
    figure.tight_layout()
    return figure


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
    figure.tight_layout()
    return figure


def synthetic(results: list[dict[str, Any]]) -> plt.Figure:
    """Figure 2 (the synthetic check): learned E[s] (+- std) against the true s*, per hidden
    size and estimator; units sorted by s*."""
    hiddens = sorted({r["hidden"] for r in results})
    estimators = sorted({r["estimator"] for r in results}, reverse=True)
    rows, cols = len(estimators), len(hiddens)
    figure, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows))
    axes = np.array(axes).reshape(rows, cols)
    for result in results:
        axis = axes[estimators.index(result["estimator"]), hiddens.index(result["hidden"])]
        order = torch.argsort(result["s_star"], descending=True)
        shown = order[: min(len(order), 40)]
        x = np.arange(len(shown))
        axis.bar(x, result["s_star"][shown].numpy(), color="#cccccc", label="true s*")
        mean, std = result["mean"][shown].numpy(), result["std"][shown].numpy()
        axis.errorbar(x, mean, yerr=std, fmt="o", ms=3, color="#d62728", label="E[s] ± std")
        title = f"H = {result['hidden']}, {result['estimator']}: Pearson {result['pearson']:.2f}"
        axis.set_title(title, fontsize=10)
        axis.set_xlabel(f"hidden units by true s* (top {len(shown)})")
    axes[0, 0].legend(fontsize=8)
    figure.tight_layout()
    return figure


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
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def importance_learning(importance: Importance, title: str = "") -> plt.Figure:
    """The ELBO's terms per step, and how fast each layer's ranking settles."""
    history = importance.history
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    steps = np.arange(1, len(history["loss"]) + 1)
    window = max(1, len(steps) // 50)

    def smooth(values):
        return np.convolve(np.asarray(values, dtype=float), np.ones(window) / window, mode="valid")

    smoothed_steps = steps[window - 1 :]
    left.plot(smoothed_steps, smooth(history["cross_entropy"]), label="cross-entropy")
    left.plot(smoothed_steps, smooth(history["loss"]), label=r"loss (CE + $\beta$ KL / Z)", ls="--")
    left.set_xlabel("step")
    left.set_ylabel("per batch")
    left.set_title(f"negative ELBO (moving average of {window})")
    left.legend()
    for name, taus in compare.settling(importance)["tau"].items():
        right.plot(history["steps"], taus, marker=".", label=name)
    right.set_ylim(-1.05, 1.05)
    right.set_xlabel("step")
    right.set_ylabel("Kendall tau with the final ranking")
    right.set_title("how fast the ranking settles")
    right.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def feature_maps(payload: dict[str, Any], classes: list[str], title: str = "", top: int = 3):
    """Figure 4: test images with the maps of the most and least important channels."""
    images, labels, maps = payload["images"], payload["labels"], payload["maps"]
    order = torch.argsort(payload["importance"], descending=True)
    chosen = list(order[:top]) + list(order[-top:])
    rows, cols = len(labels), 1 + len(chosen)
    figure, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows))
    axes = np.array(axes).reshape(rows, cols)
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
    figure.suptitle(title or "first-layer feature maps: most (left) and least important channels")
    figure.tight_layout()
    return figure


# Compression ---------------------------------------------------------------------------------
def accuracy_vs_compression(frame: pd.DataFrame, title: str = "") -> plt.Figure:
    """Figure 5: test accuracy against params and MACs, per criterion, right after
    pruning (dashed, open) and after fine-tuning (solid); ``frame`` is a results table."""
    base = frame[frame["criterion"].str.startswith("base")]
    pruned = frame[~frame["criterion"].str.startswith("base")]
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
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


# The comparison at a MAC budget ------------------------------------------------------------
def plot_comparison(summary: list[dict[str, Any]], title: str = "") -> plt.Figure:
    """Validation accuracy against MACs, right after pruning and after fine-tuning: one line
    per criterion, own allocation solid, same widths dashed, the measured allocation and
    Torch-Pruning's global pruning dash-dotted, error bars one std over seeds (the other rules:
    in the tables)."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    criteria = list(dict.fromkeys(e["criterion"] for e in summary))
    for axis, metric, label in zip(
        axes, ("pruned_val", "finetuned_val"), ("right after pruning", "after fine-tuning")
    ):
        for criterion in criteria:
            of_criterion = [e for e in summary if e["criterion"] == criterion]
            styles = (
                ("own", "-"),
                ("same", "--"),
                ("fixed", ":"),
                ("measured", "-."),
                ("global", "-."),
            )
            for allocation, style in styles:
                entries = [e for e in of_criterion if e["allocation"] == allocation]
                entries.sort(key=lambda e: e["macs"])
                if not entries:
                    continue
                axis.errorbar(
                    [e["macs"] for e in entries],
                    [100 * e[metric] for e in entries],
                    yerr=[100 * e[metric + "_std"] for e in entries],
                    ls=style,
                    marker={"own": "o", "same": "x", "measured": "^", "global": "s"}.get(
                        allocation, "*"
                    ),
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
    figure.tight_layout()
    return figure


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
    figure.tight_layout()
    return figure


def style() -> None:
    """The kit's plot style (seaborn's whitegrid, small fonts)."""
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.0)
