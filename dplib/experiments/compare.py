"""Criteria compared at a MAC budget (``03_prune``, ``bench/compare.py``): runs and summarises.

For a network on a data set and each seed, through the one experiment path
(:mod:`dplib.experiments.experiment`): pretrain, compute every criterion's importance, and for
each budget (``"4x"``: four times fewer MACs) prune in two ways:

* ``uniform``: every criterion at the widths of the uniform allocation, which isolates the
  ranking within layers;
* ``greedy``: each criterion with its own allocation to the budget, ranking and widths together;
* for Dirichlet and its control L1, the ``measured`` rule of :func:`dplib.choose_widths`; for
  Torch-Pruning's criteria its ``global`` pruning.

Each pruned network is evaluated on validation data right after pruning, fine-tuned by one
fixed schedule (:data:`FINETUNING`) and evaluated on validation and test data. Claims are made
on validation accuracy; test accuracy is reported only. :func:`settling` gives how fast the
Dirichlet ranking settles over learning.
"""

from __future__ import annotations

import bisect
import statistics
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from .. import criteria as criteria_registry
from ..files import read_json, write_json
from ..importance import Importance
from ..measure import kendall
from ..progress import hidden
from ..settings import TrainSettings
from . import paths, profiles
from .experiment import FIXED, GLOBAL, Experiment, prune_and_finetune, score
from .experiment import pretrain as pretrain_base
from .profiles import Config

BUDGETS = ("4x", "10x", "20x")  # the cases the comparison decides on
# the comparison's one fine-tuning schedule (its epochs are the setup's)
FINETUNING = TrainSettings(**profiles.FIXED_FINETUNING)
SETUPS: dict[str, Experiment] = profiles.SETUPS["compare"]
comparison_setup = profiles.comparison_setup
# What ``make compare`` runs by default (the cpu profile's comparison); resnet20 (about 90 minutes
# for 3 seeds, every criterion and budget, on 2 cores) only when asked.
DEFAULT_SETUPS = tuple(name for name in SETUPS if not name.endswith("resnet20"))


def run_setup(
    experiment: Experiment,
    root: str | Path,
    *,
    seeds: Iterable[int] = (0, 1, 2),
    budgets: Iterable[str] = BUDGETS,
    criteria: Iterable[str] | None = None,
    allocations: Iterable[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every (seed, criterion, budget, allocation) of one experiment, and its fixed widths: the
    rows, the base networks, the settling of the Dirichlet ranking, every importance's cost.
    ``allocations`` (e.g. ``("greedy", "global")``) keeps only those rows (the fixed widths' is
    ``"fixed"``), so that a long run can do the rows that decide first."""
    wanted = set(allocations) if allocations is not None else None
    rows, bases, settles, timings = [], [], [], []
    with hidden():
        for seed in seeds:
            base = pretrain_base(experiment, root, seed, log=log)
            bases.append({"seed": seed, **base.metrics})
            # the registry's defaults, with the peer libraries' where installed
            every = criteria_registry.defaults(base.model, peers=True)
            for criterion in criteria if criteria is not None else every:
                importance = score(base, criterion, log=log)
                seconds = importance.history.get("seconds_total")
                timings.append({"seed": seed, "criterion": criterion, "seconds": seconds})
                if criterion == "dirichlet":
                    settles.append(settling(importance))
                for budget, allocation in cases(experiment, criterion, budgets):
                    if wanted is not None and allocation not in wanted:
                        continue
                    rows.append(prune_and_finetune(base, criterion, importance, budget, allocation))
                log(f"{experiment.name} seed {seed}: {criterion} done")
    return {
        "setup": experiment.name,
        "rows": rows,
        "bases": bases,
        "settling": settles,
        "importance_seconds": timings,
    }


# the rules compared besides greedy and uniform, on Dirichlet and on L1 (the control)
RULES = {
    "dirichlet": ("measured",),
    "l1": ("measured",),
    "tp_l2": (GLOBAL,),
    "tp_taylor": (GLOBAL,),
}


ALLOCATION_NAMES = ("greedy", "uniform", "measured", GLOBAL, FIXED)


def cases(experiment: Experiment, criterion: str, budgets: Iterable[str]) -> list[tuple[str, str]]:
    """(budget or widths, allocation) of every row of ``criterion``."""
    allocations = ("greedy", "uniform", *RULES.get(criterion, ()))
    return [(b, a) for b in budgets for a in allocations] + [(w, FIXED) for w in experiment.widths]


# The notebooks' comparison (03_prune, 04_figures) --------------------------------------------
def experiment_for(config: Config) -> Experiment:
    """A notebook configuration's experiment with the comparison's measurements and
    fine-tuning schedule."""
    experiment, tuned = config.experiment, config.experiment.finetuning
    plain = Experiment(experiment.model, experiment.dataset)  # no speed-ups, as the committed
    measured = ("speedup_batch", "speedup_repeats", "speedup_rounds", "taylor_batches")
    finetuning = FINETUNING.replace(epochs=tuned.epochs, channels_last=tuned.channels_last)
    defaults = {name: getattr(plain, name) for name in measured}
    return experiment.replace(finetuning=finetuning, widths=(), **defaults)


def run_experiment(config: Config, *, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The comparison of one notebook experiment (seed 0 shared with the notebooks), written to
    ``runs/<profile>/<dataset>-<model>/rows.json``; None when ``config.compare`` is false."""
    if not config.compare:
        return None
    experiment = experiment_for(config)
    root = paths.profile_dir(config.profile)
    result = run_setup(
        experiment,
        root,
        seeds=config.compare_seeds,
        budgets=config.compare_budgets,
        criteria=config.compare_criteria,
        log=log,
    )
    write_json(root / experiment.name / "rows.json", result)
    return result


def committed_result(config: Config) -> dict[str, Any] | None:
    """The committed rows of a notebook experiment's comparison (``make compare``), or None."""
    path = committed_results() / f"{config.experiment.name}.json"
    return read_json(path) if path.exists() else None


def committed_results() -> Path:
    """``bench/results/compare/``: the rows of every setup, committed by ``make compare``
    (the LeNets about 30 minutes, resnet20 about 90 on 2 cores)."""
    return paths.kit_root() / "bench" / "results" / "compare"


def load_results(root: str | Path, extra: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """``{setup name: result}`` of every ``<root>/<setup>/rows.json``, in :data:`SETUPS` order;
    ``<extra>/<setup>.json`` for the setups ``root`` does not have. Local rows that differ from
    the committed ones (older rows after a pull, say) are used with a warning naming both."""
    committed = {p.stem: read_json(p) for p in Path(extra).glob("*.json")} if extra else {}
    local = {path.parent.name: read_json(path) for path in Path(root).glob("*/rows.json")}
    for name in sorted(set(committed) & set(local)):
        if committed[name].get("rows") != local[name].get("rows"):
            warnings.warn(
                f"{Path(root) / name / 'rows.json'} differs from the committed "
                f"{Path(extra) / f'{name}.json'}: the local rows are used (make compare writes "
                "both; delete the local file to use the committed rows)",
                stacklevel=2,
            )
    found = committed | local
    order = {name: i for i, name in enumerate(SETUPS)}
    return {name: found[name] for name in sorted(found, key=lambda n: (order.get(n, 99), n))}


# Summaries ---------------------------------------------------------------------------------
METRICS = ("pruned_val", "finetuned_val", "finetuned_test", "macs", "params", "allocation_seconds")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds (0 for one seed) of each of :data:`METRICS` per
    (budget, criterion, allocation), ordered by budget, allocation and criterion."""
    keys = ["budget", "criterion", "allocation"]
    frame = pd.DataFrame(rows, columns=[*keys, *METRICS])  # older rows lack the seconds: NaN
    grouped = frame.groupby(keys, sort=False)
    values = grouped[list(METRICS)]
    spread = values.std().fillna(0.0).where(values.count() > 0)  # one seed: 0; none: NaN
    summary = values.mean().join(spread.add_suffix("_std")).assign(seeds=grouped.size())
    summary = summary.reset_index()
    order = summary["budget"].map({b: i for i, b in enumerate(("2x", *BUDGETS))}).fillna(99)
    summary = summary.assign(order=order).sort_values(["order", "allocation", "criterion"])
    return summary.drop(columns="order").to_dict("records")


PEERS = ("greedy", GLOBAL)  # a peer criterion is judged by its own allocation or global pruning


def dirichlet_margins(summary: list[dict[str, Any]], allocation: str = "greedy") -> list[dict]:
    """Per budget, Dirichlet's mean validation accuracy with ``allocation`` minus the best peer's
    (every other criterion with its own allocation or Torch-Pruning's global pruning);
    ``control``: L1 with the same allocation minus the same peer, where it ran."""
    margins = []
    for budget in dict.fromkeys(e["budget"] for e in summary):
        entries = {(e["criterion"], e["allocation"]): e for e in summary if e["budget"] == budget}
        ours = entries.get(("dirichlet", allocation))
        peers = [e for (c, a), e in entries.items() if c != "dirichlet" and a in PEERS]
        if ours is None or not peers:
            continue
        control = entries.get(("l1", allocation)) if allocation != "greedy" else None
        margin = {"budget": budget, "allocation": allocation}
        for metric in ("pruned_val", "finetuned_val"):
            best = max(peers, key=lambda e: e[metric])
            margin[metric] = ours[metric] - best[metric]
            peer, rule = best["criterion"], best["allocation"]  # its own rule goes unsaid
            margin[f"{metric}_best_other"] = peer if rule == "greedy" else f"{peer} {rule}"
            margin[f"{metric}_dirichlet"] = (ours[metric], ours[f"{metric}_std"])
            margin[f"{metric}_other"] = (best[metric], best[f"{metric}_std"])
            margin[f"{metric}_control"] = control and control[metric] - best[metric]
        margins.append(margin)
    return margins


# How fast importance settles -----------------------------------------------------------------
def settling(importance: Importance) -> dict[str, Any]:
    """Kendall tau, per layer, of each recorded snapshot's ranking with the final ranking:
    ``{"fraction": [of learning, per snapshot], "tau": {layer: [...]}}`` (empty: no snapshots)."""
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
    return {
        layer: {
            f"{fraction:g}": statistics.mean(
                settle["tau"][layer][bisect.bisect_left(settle["fraction"], fraction - 1e-9)]
                for settle in settles
            )
            for fraction in at
        }
        for layer in (settles[0]["tau"] if settles else [])
    }
