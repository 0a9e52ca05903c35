"""CIFAR-10 for real: ResNet-20, ResNet-56 and VGG-16 pretrained on the CPU, then pruned.

Each network (:data:`SETUPS`, from :func:`dplib.experiments.profiles.cifar_setup`) is pretrained
with a short one-cycle schedule, its importance learnt for one epoch, and pruned by every
criterion at 2x and 4x fewer MACs (each criterion's own allocation and the same widths for all)
and at the reference code's widths, then fine-tuned by one fixed schedule. It is
:mod:`dplib.experiments.compare` with CIFAR schedules: the same cache, rows and summaries.
Validation accuracy decides; the test split is reported only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .. import criteria as dplib_criteria
from .. import data
from ..budget import parse_budget
from ..files import atomic_write, read_json, write_json
from ..pruned import load_pruned
from ..train import evaluate
from . import compare, paths, profiles
from .experiment import FIXED, Experiment

BUDGETS = ("2x", "4x")
CRITERIA = ("dirichlet", "l1", "taylor", "random", "tp_l2", "tp_taylor")
SETUPS: dict[str, Experiment] = profiles.SETUPS["cifar"]


def committed_results() -> Path:
    """``bench/results/cifar/``: the committed rows of every network (``make figures`` redraws)."""
    return paths.kit_root() / "bench" / "results" / "cifar"


def gpu_results() -> Path:
    """``bench/results/cifar_gpu/``: the rows of ``bench/cifar_gpu.py`` on one GPU, kept apart."""
    return paths.kit_root() / "bench" / "results" / "cifar_gpu"


def check_arguments(
    criteria: Iterable[str], budgets: Iterable[str], allocations: Iterable[str]
) -> None:
    """Raise ValueError naming what is wrong: an unknown criterion or allocation, or a budget
    that is not a ratio of at least 1 (such as '2x'). :func:`run` calls it before hours of
    pretraining; ``bench/cifar.py`` before anything, to answer with a usage error."""
    unknown = [name for name in allocations if name not in compare.ALLOCATION_NAMES]
    if unknown:
        raise ValueError(
            f"unknown allocations {unknown}; known: {', '.join(compare.ALLOCATION_NAMES)}"
        )
    unknown = [name for name in criteria if name not in dplib_criteria.names()]
    if unknown:
        raise ValueError(
            f"unknown criteria {unknown}; registered: {', '.join(dplib_criteria.names())}"
        )
    for budget in budgets:
        parse_budget(budget, 10**9)  # the syntax only: a ratio string such as '2x'


def run(
    experiments: Iterable[Experiment],
    root: str | Path,
    *,
    seeds: Iterable[int] = (0,),
    criteria: Iterable[str] = CRITERIA,
    budgets: Iterable[str] = BUDGETS,
    results: str | Path | None = None,
    note: dict[str, Any] | None = None,
    fixed_widths: bool = True,
    allocations: Iterable[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run every experiment (cached under ``root``, resumable) and write each one's rows with
    ``note`` (e.g. the device) to ``results/<name>.json`` (default :func:`committed_results`).
    ``fixed_widths=False`` leaves out the rows at the setup's fixed widths, and ``allocations``
    keeps only those allocations' rows (the file keeps the others it holds)."""
    seeds, criteria, budgets = tuple(seeds), tuple(criteria), tuple(budgets)  # each read twice
    allocations = tuple(allocations) if allocations is not None else compare.ALLOCATION_NAMES
    check_arguments(criteria, budgets, allocations)
    results = Path(results) if results is not None else committed_results()
    done = {}
    for experiment in experiments:
        experiment = experiment if fixed_widths else experiment.replace(widths=())
        found = compare.run_setup(
            experiment,
            root,
            seeds=seeds,
            budgets=budgets,
            criteria=criteria,
            allocations=allocations,
            log=log,
        )
        # a fixed-width row's budget is its widths, and every run of a criterion redoes them
        redone = (set(seeds), {*budgets, *experiment.widths}, set(criteria), set(allocations))
        found = merge_rows(results / f"{experiment.name}.json", found, *redone)
        done[experiment.name] = found | (note or {}) | {"shared_base": experiment.shared_base}
        write_json(results / f"{experiment.name}.json", done[experiment.name])
    return done


def merge_rows(
    path: Path,
    found: dict[str, Any],
    seeds: set[int],
    budgets: set[str],
    criteria: set[str],
    allocations: Iterable[str] = compare.ALLOCATION_NAMES,
) -> dict:
    """``found`` with the rows of ``path`` it did not redo (other seeds, budgets, criteria or
    allocations), so that a run of more seeds at one budget keeps the first seed's other
    budgets."""
    if not path.exists():
        return found
    previous = read_json(path)
    redone = {"seed": seeds, "budget": budgets, "criterion": criteria}
    redone["allocation"] = set(allocations)
    kept = [r for r in previous["rows"] if not all(r[k] in v for k, v in redone.items())]
    found["rows"] = kept + found["rows"]
    bases = [b for b in previous.get("bases", []) if b["seed"] not in seeds]
    found["bases"] = bases + [_first_timed(b, previous.get("bases", [])) for b in found["bases"]]
    timed = [
        t
        for t in previous.get("importance_seconds", [])  # the criteria not run again
        if t["seed"] not in seeds or t["criterion"] not in criteria
    ]
    found["importance_seconds"] = timed + found["importance_seconds"]
    if "dirichlet" not in criteria:  # the settling of the Dirichlet ranking was not redone
        found["settling"] = previous.get("settling", [])
    if "note" in previous:  # what a person wrote about the kept rows
        found.setdefault("note", previous["note"])
    return found


TIMINGS = ("seconds", "seconds_per_epoch")  # what a rerun of the same network measures anew


def _first_timed(base: dict[str, Any], previous: list[dict[str, Any]]) -> dict[str, Any]:
    """``base`` with the timing first recorded for its seed when it is the same network (a
    retrained one is bit-identical, but its epoch time depends on what else the machine ran).
    The same network: every measurement both entries hold agrees, as a newer run may record
    more (a timing the first run did not record is left out: it was not measured alone)."""

    def same_network(earlier: dict[str, Any]) -> bool:
        shared = (set(earlier) & set(base)) - set(TIMINGS)
        return earlier["seed"] == base["seed"] and all(earlier[k] == base[k] for k in shared)

    for earlier in filter(same_network, previous):
        untimed = {k: v for k, v in base.items() if k not in TIMINGS}
        return untimed | {k: earlier[k] for k in TIMINGS if k in earlier}
    return base


# The pruned networks shipped in figures/cifar/ ---------------------------------------------------
# (setup, criterion, allocation, budget or widths) of each network committed, fine-tuned, seed 0
SHIPPED: dict[str, tuple[str, str, str, str]] = {
    "resnet20": ("cifar10-resnet20", "dirichlet", "greedy", "2x"),
    "resnet56": ("cifar10-resnet56", "dirichlet", "greedy", "2x"),
    "vgg16": ("cifar10-vgg16", "dirichlet", FIXED, profiles.VGG16_REFERENCE),
}


def shipped_dir() -> Path:
    """``figures/cifar/``: the fine-tuned Dirichlet-pruned networks, one file each."""
    return paths.kit_root() / "figures" / "cifar"


def ship(root: str | Path, folder: str | Path | None = None) -> list[Path]:
    """Copy the fine-tuned networks of :data:`SHIPPED` found under ``root`` into ``folder``."""
    folder = Path(folder) if folder is not None else shipped_dir()
    written = []
    for model, (name, criterion, allocation, budget) in SHIPPED.items():
        wanted = {"criterion": criterion, "allocation": allocation, "budget": budget}
        for found in sorted((Path(root) / name / "seed0" / "results").glob("*.json")):
            row = read_json(found).get("result", {})
            source = found.with_suffix(".pt")
            if all(row.get(k) == v for k, v in wanted.items()) and source.exists():
                target = folder / f"{model}-{criterion}-{allocation}.pt"
                atomic_write(target, lambda stream, s=source: stream.write(s.read_bytes()))
                written.append(target)
    return written


def evaluate_shipped(
    folder: str | Path | None = None, cifar10_copy: str | Path | None = None
) -> list[dict[str, Any]]:
    """Each shipped network's CIFAR-10 test accuracy measured now, beside the recorded one."""
    folder = Path(folder) if folder is not None else shipped_dir()
    test = data.loaders("cifar10", cifar10_copy=cifar10_copy).test
    measured = []
    for path in sorted(folder.glob("*.pt")):
        network = load_pruned(path)
        accuracy = evaluate(network, test, "cpu")["accuracy"]
        claimed = network.dplib_extra.get("finetuned_test")
        measured.append({"file": path.name, "test_accuracy": accuracy, "recorded": claimed})
    return measured
