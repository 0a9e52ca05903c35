"""CIFAR-10 for real (dplib.experiments.cifar): ResNet-20, ResNet-56 and VGG-16, resumable.

    python bench/cifar.py                            # every network (hours on 2 cores)
    python bench/cifar.py --setups cifar10-resnet20  # one network
    python bench/cifar.py --setups cifar10-vgg16 --budgets  # the reference widths only
    python bench/cifar.py --setups cifar10-vgg16 --budgets 2x --no-fixed-widths  # 2x only
    python bench/cifar.py --setups cifar10-vgg16 --budgets 2x --no-fixed-widths \
        --allocations greedy global measured        # the rows that decide, first
    python bench/cifar.py --evaluate                 # the shipped networks on the test split
    python bench/cifar.py --setups cifar10-vgg16 --budgets --criteria dirichlet l1 \
        --finetune-epochs 20                         # a longer fine-tuning, on the side

Results are cached under runs/cifar/ (a rerun continues where it stopped); each network's rows
go to bench/results/cifar/<setup>.json (committed), from which make figures redraws
figures/cifar.md, figures/cifar.csv and figures/cifar_<model>.png. The fine-tuned
Dirichlet-pruned networks are copied into figures/cifar/ (dplib.load_pruned reads them). The
data: CIFAR-10's original batches in data/, or its JPEG copy (data/cifar10-jpeg.tar.xz, or a
path in $DPLIB_CIFAR10).

``--finetune-epochs N`` fine-tunes the same pruned networks for N epochs instead of the setup's
own: a probe kept apart from the table. It reuses the pretrained networks and importances cached
under ``--root`` (its results are cached beside the table's, under their own names), writes its
rows to bench/results/cifar_finetune<N>/ and leaves figures/ and the shipped networks alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from dplib.experiments import cifar, compare, publish  # noqa: E402
from dplib.experiments.experiment import Experiment  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=list(cifar.SETUPS), choices=cifar.SETUPS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--criteria", nargs="+", default=list(cifar.CRITERIA))
    parser.add_argument(
        "--budgets", nargs="*", default=list(cifar.BUDGETS), help="none: the fixed widths only"
    )
    parser.add_argument(
        "--no-fixed-widths",
        action="store_true",
        help="leave out the rows at the fixed widths (the results file keeps its own)",
    )
    parser.add_argument(
        "--allocations",
        nargs="+",
        choices=compare.ALLOCATION_NAMES,
        help="only these allocations' rows (the results file keeps the others it holds)",
    )
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "cifar")
    parser.add_argument("--evaluate", action="store_true", help="evaluate figures/cifar/*.pt")
    parser.add_argument(
        "--finetune-epochs", type=float, help="a longer fine-tuning, kept apart (see above)"
    )
    args = parser.parse_args()
    if args.finetune_epochs is not None and args.finetune_epochs <= 0:
        parser.error(f"--finetune-epochs must be positive, got {args.finetune_epochs}")
    try:  # a wrong name or budget is a usage error, before any pretraining
        cifar.check_arguments(args.criteria, args.budgets, args.allocations or ())
    except ValueError as error:
        parser.error(str(error))
    if args.evaluate:
        for row in cifar.evaluate_shipped():
            print(
                f"{row['file']}: test accuracy {100 * row['test_accuracy']:.2f}% "
                f"(the table: {100 * row['recorded']:.2f}%)"
            )
        return
    experiments = [cifar.SETUPS[name] for name in args.setups]
    results = None
    if args.finetune_epochs is not None:
        results = ROOT / "bench" / "results" / f"cifar_finetune{args.finetune_epochs:g}"
        experiments = [probe(experiment, args.finetune_epochs) for experiment in experiments]
    for experiment in experiments:
        started = time.perf_counter()
        cifar.run(
            [experiment],
            args.root,
            seeds=args.seeds,
            criteria=args.criteria,
            budgets=args.budgets,
            results=results,
            fixed_widths=not args.no_fixed_widths,
            allocations=args.allocations,
            log=lambda line: print(line, flush=True),
        )
        print(f"{experiment.name}: {time.perf_counter() - started:.0f} s", flush=True)
    if results is not None:
        print(f"rows: {results}; figures/ and the shipped networks left as they were")
        return
    shipped = cifar.ship(args.root)
    written = publish.write_cifar(cifar.committed_results(), ROOT / "figures")
    print(json.dumps({"written": [str(p) for p in written + shipped]}, indent=1))


def probe(experiment: Experiment, epochs: float) -> Experiment:
    """The experiment with a fine-tuning of ``epochs`` epochs: the same pretrained networks and
    importances (their cache keys do not hold the fine-tuning), new rows."""
    return experiment.replace(finetuning=experiment.finetuning.replace(epochs=epochs))


if __name__ == "__main__":
    main()
