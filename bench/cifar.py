"""CIFAR-10 for real (dplib.experiments.cifar): ResNet-20, ResNet-56 and VGG-16, resumable.

    python bench/cifar.py                            # every network (hours on 2 cores)
    python bench/cifar.py --setups cifar10-resnet20  # one network
    python bench/cifar.py --setups cifar10-vgg16 --budgets  # the reference widths only
    python bench/cifar.py --evaluate                 # the shipped networks on the test split

Results are cached under runs/cifar/ (a rerun continues where it stopped); each network's rows
go to bench/results/cifar/<setup>.json (committed), from which make figures redraws
figures/cifar.md, figures/cifar.csv and figures/cifar_<model>.png. The fine-tuned
Dirichlet-pruned networks are copied into figures/cifar/ (dplib.load_pruned reads them). The
data: CIFAR-10's original batches in data/, or its JPEG copy (data/cifar10-jpeg.tar.xz, or a
path in $DPLIB_CIFAR10).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from dplib.experiments import cifar, publish  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=list(cifar.SETUPS), choices=cifar.SETUPS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--criteria", nargs="+", default=list(cifar.CRITERIA))
    parser.add_argument(
        "--budgets", nargs="*", default=list(cifar.BUDGETS), help="none: the fixed widths only"
    )
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "cifar")
    parser.add_argument("--evaluate", action="store_true", help="evaluate figures/cifar/*.pt")
    args = parser.parse_args()
    if args.evaluate:
        for row in cifar.evaluate_shipped():
            print(
                f"{row['file']}: test accuracy {100 * row['test_accuracy']:.2f}% "
                f"(the table: {100 * row['recorded']:.2f}%)"
            )
        return
    for name in args.setups:
        started = time.perf_counter()
        cifar.run(
            [name],
            args.root,
            seeds=args.seeds,
            criteria=args.criteria,
            budgets=args.budgets,
            log=lambda line: print(line, flush=True),
        )
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    shipped = cifar.ship(args.root)
    written = publish.write_cifar(cifar.committed_results(), ROOT / "figures")
    print(json.dumps({"written": [str(p) for p in written + shipped]}, indent=1))


if __name__ == "__main__":
    main()
