"""The kit's figures (matplotlib + seaborn). Each function returns a Figure; :func:`save` writes
it as PNG and PDF atomically. The data come from ``runs/`` (see :func:`collect`), never from
training here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from . import artefacts, profiles
from .files import atomic_path
from .importance import Importance
from .measure import spearman

CRITERION_COLOURS = {
    "dirichlet": "#d62728",
    "random": "#7f7f7f",
    "l1": "#1f77b4",
    "taylor": "#2ca02c",
    "bn_scale": "#9467bd",
}


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
    """METHOD.md figure 2: learned E[s] (+- std) against the true s*, per hidden size and
    estimator; units sorted by s*."""
    hiddens = sorted({r["hidden"] for r in results})
    estimators = sorted({r["estimator"] for r in results}, reverse=True)
    figure, axes = plt.subplots(
        len(estimators), len(hiddens), figsize=(4.2 * len(hiddens), 3.0 * len(estimators))
    )
    axes = np.array(axes).reshape(len(estimators), len(hiddens))
    for result in results:
        axis = axes[estimators.index(result["estimator"]), hiddens.index(result["hidden"])]
        order = torch.argsort(result["s_star"], descending=True)
        shown = order[: min(len(order), 40)]
        x = np.arange(len(shown))
        axis.bar(x, result["s_star"][shown].numpy(), color="#cccccc", label="true s*")
        axis.errorbar(
            x,
            result["mean"][shown].numpy(),
            yerr=result["std"][shown].numpy(),
            fmt="o",
            ms=3,
            color="#d62728",
            label="E[s] ± std",
        )
        axis.set_title(
            f"H = {result['hidden']}, {result['estimator']}: Pearson {result['pearson']:.2f}",
            fontsize=10,
        )
        axis.set_xlabel(f"hidden units by true s* (top {len(shown)})")
    axes[0, 0].legend(fontsize=8)
    figure.tight_layout()
    return figure


# Importance ----------------------------------------------------------------------------------
def importance_bars(importance: Importance, title: str = "") -> plt.Figure:
    """METHOD.md figure 3: per layer, units sorted by K*E[s] with a ±K*std band."""
    names = importance.names
    figure, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 2.8))
    for axis, name in zip(np.atleast_1d(axes), names):
        relative = importance.relative(name)
        order = torch.argsort(relative, descending=True)
        units = relative.numel()
        axis.bar(
            np.arange(units), relative[order].numpy(), width=1.0, color="#d62728", lw=0, zorder=2
        )
        if importance.concentration is not None:
            scale = units / importance.mean(name).sum()
            spread = (importance.std(name) * scale)[order].numpy()
            axis.fill_between(
                np.arange(units),
                relative[order].numpy() - spread,
                relative[order].numpy() + spread,
                color="black",
                alpha=0.15,
                step="mid",
                lw=0,
                zorder=3,
                label="± std",
            )
        axis.axhline(1.0, color="black", lw=0.8, ls="--")
        axis.set_title(f"{name} ({units} units)")
        axis.set_xlabel("units, most important first")
    np.atleast_1d(axes)[0].set_ylabel(r"$K\,E[s_k]$ (1 = layer average)")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def ranking_settles(importance: Importance) -> list[list[float]]:
    """Spearman correlation of each recorded snapshot of the means with the final means."""
    history = importance.history
    return [
        [spearman(snapshot[name], importance.mean(name)) for name in importance.names]
        for snapshot in history.get("snapshots", [])
    ]


def importance_learning(importance: Importance, title: str = "") -> plt.Figure:
    """The ELBO's terms per step, and how fast each layer's ranking settles."""
    history = importance.history
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    steps = np.arange(1, len(history["loss"]) + 1)
    window = max(1, len(steps) // 50)

    def smooth(values):
        values = np.asarray(values, dtype=float)
        return np.convolve(values, np.ones(window) / window, mode="valid")

    left.plot(steps[window - 1 :], smooth(history["cross_entropy"]), label="cross-entropy")
    left.plot(steps[window - 1 :], smooth(history["loss"]), label="loss (CE + KL/N)", ls="--")
    left.set_xlabel("step")
    left.set_ylabel("per batch")
    left.set_title(f"negative ELBO (moving average of {window})")
    left.legend()
    settles = np.array(ranking_settles(importance))
    if settles.size:
        for index, name in enumerate(importance.names):
            right.plot(history["steps"], settles[:, index], marker=".", label=name)
    right.set_ylim(-1.05, 1.05)
    right.set_xlabel("step")
    right.set_ylabel("Spearman with the final ranking")
    right.set_title("how fast the ranking settles")
    right.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def feature_maps(payload: dict[str, Any], classes: list[str], title: str = "", top: int = 3):
    """METHOD.md figure 4: test images with the maps of the most and least important channels."""
    images, labels, maps = payload["images"], payload["labels"], payload["maps"]
    order = torch.argsort(payload["importance"], descending=True)
    chosen = list(order[:top]) + list(order[-top:])
    rows = len(labels)
    figure, axes = plt.subplots(
        rows, 1 + len(chosen), figsize=(1.3 * (1 + len(chosen)), 1.3 * rows)
    )
    axes = np.array(axes).reshape(rows, 1 + len(chosen))
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
def accuracy_vs_compression(rows: list[dict[str, Any]], title: str = "") -> plt.Figure:
    """METHOD.md figure 5: test accuracy against params and MACs, per criterion, right after
    pruning (dashed, open) and after fine-tuning (solid)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    base = frame[frame["criterion"].str.startswith("base")]
    pruned = frame[~frame["criterion"].str.startswith("base")]
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for axis, measure_name in zip(axes, ("params", "macs")):
        for criterion, group in pruned.groupby("criterion"):
            group = group.sort_values(measure_name)
            colour = CRITERION_COLOURS.get(criterion)
            axis.plot(
                group[measure_name], 100 * group["accuracy"], "o-", color=colour, label=criterion
            )
            axis.plot(
                group[measure_name],
                100 * group["accuracy_pruned"],
                "o--",
                mfc="none",
                color=colour,
                alpha=0.6,
            )
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


# Reading runs/ -------------------------------------------------------------------------------
def collect(profile: str) -> dict[str, dict[str, Any]]:
    """Everything ``04_figures`` draws, per experiment folder of ``runs/<profile>/``.

    For each ``<dataset>-<model>`` folder: ``rows`` (the newest complete results file), the
    Dirichlet ``importance`` and the ``feature_maps`` payload with its ``classes``, each present
    only when its stage has finished.
    """
    found: dict[str, dict[str, Any]] = {}
    root = artefacts.profile_dir(profile)
    for folder in sorted(p for p in root.glob("*-*") if p.is_dir()):
        entry: dict[str, Any] = {}
        results = sorted(folder.glob("results-*.json"), key=lambda p: p.stat().st_mtime)
        if results:
            entry["rows"] = artefacts.read_json(results[-1])["rows"]
        learned = sorted(folder.glob("importance-dirichlet-*.pt"), key=lambda p: p.stat().st_mtime)
        if learned:
            entry["importance"] = Importance.load(learned[-1])
        maps = sorted(folder.glob("feature-maps-*.json"), key=lambda p: p.stat().st_mtime)
        if maps:
            meta = artefacts.read_json(maps[-1])
            entry["feature_maps"] = torch.load(
                maps[-1].with_suffix(".pt"), map_location="cpu", weights_only=True
            )
            entry["classes"] = meta["classes"]
        if entry:
            found[folder.name] = entry
    return found


def results_markdown(frame) -> str:
    """The results table as Markdown (numbers rounded for reading)."""
    shown = frame.copy()
    shown["error"] = shown["error"].map(lambda v: f"{v:.2f}")
    shown["error_pruned"] = shown["error_pruned"].map(lambda v: f"{v:.2f}")
    shown["params"] = shown["params"].map(lambda v: f"{int(v):,}")
    shown["macs"] = shown["macs"].map(lambda v: f"{int(v):,}")
    shown["speedup"] = shown["speedup"].map(lambda v: f"{v:.2f}x")
    columns = ["network", "dataset", "widths", "criterion", "error", "error_pruned", "params"]
    columns += ["macs", "speedup"]
    header = [
        "network",
        "dataset",
        "widths",
        "criterion",
        "error % (fine-tuned)",
        "error % (just pruned)",
        "params",
        "MACs",
        "measured speed-up (CPU, batch 64)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in shown[columns].iterrows():
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_results(frame, folder: str | os.PathLike) -> list[Path]:
    """``results.csv`` and ``results.md`` in ``folder``, atomically."""
    folder = Path(folder)
    csv = artefacts.atomic_write_text(folder / "results.csv", frame.to_csv(index=False))
    md = artefacts.atomic_write_text(folder / "results.md", results_markdown(frame))
    return [csv, md]


def write_all(profile: str, folder: str | os.PathLike | None = None) -> list[Path]:
    """Every figure and the results table of ``profile``, from ``runs/<profile>/`` only.

    Writes into ``folder`` (default :func:`dplib.artefacts.figures_dir`) and returns the files.
    Experiments whose stages have not finished are left out (the notebook lists what it found).
    """
    from .compare import committed_results, write_report
    from .compare import root_for as compare_root
    from .pipeline import results_table
    from .synthetic import load_results

    style()
    folder = Path(folder) if folder is not None else artefacts.figures_dir(profile)
    written: list[Path] = []

    def emit(figure: plt.Figure, name: str) -> None:
        written.extend(save(figure, folder, name))
        plt.close(figure)

    emit(
        dirichlet_simplex([(1, 1, 1), (10, 10, 10), (0.3, 0.3, 0.3), (6, 2, 1)]),
        "dirichlet_simplex",
    )
    emit(dirichlet_draws([0.1, 1.0, 10.0]), "dirichlet_draws")
    synthetic_results = load_results(profile)
    if synthetic_results:
        emit(synthetic(synthetic_results), "synthetic_check")
    all_rows: list[dict[str, Any]] = []
    found = collect(profile)
    # the table and figures follow the profile's order of experiments (networks, then data)
    order = [f"{d}-{m}" for d, m in profiles.experiments(profile)]
    ranked = sorted(found, key=lambda n: (_model_rank(n, order), n))
    for name in ranked:
        entry = found[name]
        label = name
        if "rows" in entry:
            label = f"{entry['rows'][0]['network']} on {entry['rows'][0]['dataset']}"
        if "importance" in entry:
            emit(importance_bars(entry["importance"], label), f"importance_{name}")
            emit(importance_learning(entry["importance"], label), f"importance_learning_{name}")
        if "feature_maps" in entry:
            emit(
                feature_maps(entry["feature_maps"], entry["classes"], label),
                f"interpretability_{name}",
            )
        if "rows" in entry:
            emit(accuracy_vs_compression(entry["rows"], label), f"accuracy_vs_compression_{name}")
            all_rows.extend(entry["rows"])
    if all_rows:
        written.extend(write_results(results_table(all_rows), folder))
    # the comparison at a MAC budget (03_prune, or bench/compare.py with the same cache)
    # (the cpu profile also redraws the committed resnet20 rows of bench/compare.py)
    extra = committed_results() if profile == "cpu" else None
    written.extend(write_report(compare_root(profile), folder, extra))
    return written


def _model_rank(folder: str, order: list[str]) -> int:
    """Position of a run folder's model in the profile's experiments (unknown ones last)."""
    models_in_order = list(dict.fromkeys(name.split("-", 1)[1] for name in order))
    model = folder.split("-", 1)[1]
    return models_in_order.index(model) if model in models_in_order else len(models_in_order)


def style() -> None:
    """The kit's plot style (seaborn's whitegrid, small fonts)."""
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.0)
