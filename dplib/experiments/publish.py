"""``04_figures`` and the benches' last step: read ``runs/``, write every figure and table.

The figures of :mod:`dplib.experiments.figures` and the tables of
:mod:`dplib.experiments.reports` go into the profile's figures folder, each file atomically.
A figure drawn from rows (the comparison's, CIFAR-10's) or from code alone (the primer's) is
redrawn only when they changed: ``.drawn.json`` in the folder records what each was drawn from.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch

from ..files import atomic_write_text, read_json, write_json
from ..importance import Importance
from . import cifar, compare, figures, paths, profiles, reports, study, synthetic
from .cache import code_version, config_hash


def collect(profile: str) -> dict[str, dict[str, Any]]:
    """Per ``<dataset>-<model>`` folder of ``runs/<profile>/``, from its seed folder with the
    newest results table: ``table``, the Dirichlet ``importance`` that table was pruned with and
    its ``feature_maps`` payload with their ``classes`` (without a table, or with one older than
    its record, the newest of each), each present only when its stage has run."""
    found: dict[str, dict[str, Any]] = {}
    for folder in sorted(p for p in paths.profile_dir(profile).glob("*-*") if p.is_dir()):
        seeds = [p for p in folder.glob("seed*") if p.is_dir()]
        if not seeds:
            continue
        # the seed whose table (else the folder itself) changed last
        seed = max(seeds, key=lambda p: max(p.glob("table.json"), default=p).stat().st_mtime)
        entry: dict[str, Any] = {}
        if (seed / "table.json").exists():
            entry["table"] = read_json(seed / "table.json")
        wanted = entry.get("table", {}).get("importance_hash")
        base_key = entry.get("table", {}).get("base_key")
        if (learned := _drawn_importance(seed, wanted, base_key)) is not None:
            entry["importance"] = learned
        if (maps := _drawn_maps(seed, wanted, base_key)) is not None:
            entry["feature_maps"] = torch.load(
                maps.with_suffix(".pt"), map_location="cpu", weights_only=True
            )
            entry["classes"] = read_json(maps)["classes"]
        if entry:
            found[folder.name] = entry
    return found


def _drawn_importance(seed: Path, wanted: str | None, base_key: str | None) -> Importance | None:
    """The Dirichlet importance whose settings hash to ``wanted`` (the table's) and that was
    learnt on the table's base network ``base_key``, else the newest: an exercise's weaker base
    learns one with the same settings in the same folder."""
    files = sorted(seed.glob("importance-dirichlet-*.pt"), key=lambda p: p.stat().st_mtime)
    for path in reversed(files):  # newest first; the base is read from the cache record, the
        record = path.with_suffix(".json")  # settings from the importance, loaded only then
        base = read_json(record)["config"].get("base") if record.exists() else None
        if _on_the_tables_base(base, base_key):
            importance = Importance.load(path)
            if config_hash(importance.config) == wanted:
                return importance
    return Importance.load(files[-1]) if files else None


def _drawn_maps(seed: Path, wanted: str | None, base_key: str | None) -> Path | None:
    """The feature maps captured with the importance ``wanted`` on the base network ``base_key``
    (the table's), else the newest."""
    files = sorted(seed.glob("feature-maps-*.json"), key=lambda p: p.stat().st_mtime)
    configs = {path: read_json(path)["config"] for path in files}
    matching = [
        path
        for path, config in configs.items()
        if _on_the_tables_base(config.get("base"), base_key)
        and config_hash(config["importance"]) == wanted
    ]
    return (matching or files or [None])[-1]


def _on_the_tables_base(base: str | None, base_key: str | None) -> bool:
    """Whether ``base`` is the table's ``base_key`` (either unrecorded: any base is)."""
    return base_key is None or base in (None, base_key)


def write_results(frame: Any, folder: str | os.PathLike) -> list[Path]:
    """``results.csv`` and ``results.md`` in ``folder``, atomically."""
    csv = atomic_write_text(Path(folder) / "results.csv", frame.to_csv(index=False))
    return [csv, atomic_write_text(Path(folder) / "results.md", reports.results_markdown(frame))]


def write_comparison(
    root: str | Path, folder: str | Path, extra: str | Path | None = None
) -> list[Path]:
    """``compare_<model>_<dataset>`` (accuracy against MACs), ``settling_<dataset>-<model>``
    (PNG and PDF) and ``compare.md`` of every setup with results under ``root`` (and ``extra``,
    see :func:`dplib.experiments.compare.load_results`); the files written or kept."""
    results = compare.load_results(root, extra)
    if not results:
        return []
    figures.style()  # the kit's look, whether called from 04_figures or bench/compare.py
    written: list[Path] = []
    for name, result in results.items():
        dataset, _, model = name.partition("-")
        title = f"{model} on {dataset}"
        summary, settling = compare.summarise(result["rows"]), result["settling"]
        written += _emit_from(
            folder, f"compare_{model}_{dataset}", figures.plot_comparison, summary, title
        )
        if settling:
            label = f"how fast the ranking settles: {title}"
            written += _emit_from(
                folder, f"settling_{name}", figures.plot_settling, settling, label
            )
    target = Path(folder) / "compare.md"
    atomic_write_text(target, reports.comparison_markdown(results))
    return [*written, target]


def write_cifar(
    source: str | Path, folder: str | Path, name: str = "cifar", where: str = "the CPU"
) -> list[Path]:
    """``<name>.md``, ``<name>.csv`` and ``<name>_<model>`` (PNG and PDF) from the rows in
    ``source`` (``<setup>.json`` each), trained on ``where``; the files written or kept."""
    results = {path.stem: read_json(path) for path in sorted(Path(source).glob("*.json"))}
    if not results:
        return []
    folder = Path(folder)
    figures.style()  # the same look from make figures and from bench/cifar.py
    frame = pd.DataFrame(reports.cifar_rows(results), columns=reports.CIFAR_COLUMNS)
    written = [
        atomic_write_text(folder / f"{name}.md", reports.cifar_markdown(results, where)),
        atomic_write_text(folder / f"{name}.csv", frame.to_csv(index=False, float_format="%.2f")),
    ]
    for setup, result in results.items():
        model = setup.split("-", 1)[1]
        title = f"{model} on {result['bases'][0].get('data_source') or 'CIFAR-10'}"
        if result.get("device"):
            title += f", {result['device']}"
        summary = compare.summarise(result["rows"])
        written += _emit_from(folder, f"{name}_{model}", figures.plot_comparison, summary, title)
    return written


def write_study(results: dict[str, Any], folder: str | Path) -> list[Path]:
    """``study.md``, ``study_factors.png`` and ``study_finals.png`` of the study's results."""
    folder = Path(folder)
    # one order whoever calls (make study, 05_study), so a redraw leaves the files unchanged
    order = {name: index for index, name in enumerate(study.SETUPS)}
    results = {name: results[name] for name in sorted(results, key=lambda n: order.get(n, 99))}
    written = [atomic_write_text(folder / "study.md", reports.summary_table(results))]
    for name, draw in (
        ("study_factors", figures.study_factors),
        ("study_finals", figures.study_finals),
    ):
        figure = draw(results)
        if figure is not None:
            written.append(figures.save_png(figure, folder / f"{name}.png"))
    return written


DRAWN = ".drawn.json"  # in a figures folder: what each figure drawn from rows was drawn from


def _emit_from(
    folder: str | Path, name: str, draw: Callable[..., plt.Figure], *source: Any
) -> list[Path]:
    """Figure ``name`` as ``draw(*source)`` draws it (``source`` JSON-able: what the figure
    shows), unless its files were drawn from the same source by the same figure code: redrawing
    would write the same bytes."""
    folder = Path(folder)
    key = config_hash([source, code_version("experiments.figures")])
    targets = [folder / f"{name}.{suffix}" for suffix in ("png", "pdf")]
    stamps = read_json(folder / DRAWN) if (folder / DRAWN).exists() else {}
    if stamps.get(name) == key and all(target.exists() for target in targets):
        return targets
    written = figures.save(draw(*source), folder, name)
    write_json(folder / DRAWN, stamps | {name: key})
    return written


def write_all(profile: str, folder: str | os.PathLike | None = None) -> list[Path]:
    """Every figure and the results table of ``profile``, from ``runs/<profile>/`` only, into
    ``folder`` (default :func:`~dplib.experiments.paths.figures_dir`); the files written.
    Experiments whose stages have not finished are left out (the notebook lists what it found)."""
    figures.style()
    folder = Path(folder) if folder is not None else paths.figures_dir(profile)
    written: list[Path] = []

    def emit(figure: plt.Figure, name: str) -> None:
        written.extend(figures.save(figure, folder, name))

    alphas = [(1, 1, 1), (10, 10, 10), (0.3, 0.3, 0.3), (6, 2, 1)]  # drawn from code alone
    written += _emit_from(folder, "dirichlet_simplex", figures.dirichlet_simplex, alphas)
    written += _emit_from(folder, "dirichlet_draws", figures.dirichlet_draws, [0.1, 1.0, 10.0])
    synthetic_results = synthetic.load_results(profile)
    if synthetic_results:
        emit(figures.synthetic(synthetic_results), "synthetic_check")
    tables: list[dict[str, Any]] = []
    found = collect(profile)
    # the table and figures follow the profile's order of experiments (networks, then data)
    models = list(dict.fromkeys(m for _, m in profiles.experiments(profile)))
    rank = {model: index for index, model in enumerate(models)}  # unknown models last
    for name in sorted(found, key=lambda n: (rank.get(n.split("-", 1)[1], len(rank)), n)):
        entry = found[name]
        table = entry.get("table")
        label = f"{table['network']} on {table['dataset']}" if table else name
        if (importance := entry.get("importance")) is not None:
            emit(figures.importance_bars(importance, label), f"importance_{name}")
            emit(figures.importance_learning(importance, label), f"importance_learning_{name}")
        if "feature_maps" in entry:
            maps = figures.feature_maps(entry["feature_maps"], entry["classes"], label)
            emit(maps, f"interpretability_{name}")
        if table:
            frame = reports.results_table([table])
            emit(figures.accuracy_vs_compression(frame, label), f"accuracy_vs_compression_{name}")
            tables.append(table)
    if tables:
        written.extend(write_results(reports.results_table(tables), folder))
    # the comparison at a MAC budget (03_prune, or bench/compare.py with the same cache)
    # (the cpu profile also redraws the committed resnet20 rows of bench/compare.py)
    extra = compare.committed_results() if profile == "cpu" else None
    written.extend(write_comparison(paths.profile_dir(profile), folder, extra))
    if profile == "cpu":  # CIFAR-10's committed rows (make cifar), redrawn without training
        written.extend(write_cifar(cifar.committed_results(), folder))
        written.extend(write_cifar(cifar.gpu_results(), folder, "cifar_gpu", "one GPU"))
    return written
