"""Criteria compared at 4x, 10x and 20x fewer MACs (dplib.experiments.compare), resumable.

    python bench/compare.py                                   # the cpu profile's LeNets, 3 seeds
    python bench/compare.py --setups fashion_mnist32-resnet20 # resnet20 (about 90 minutes)
    python bench/compare.py --setups mnist5k-lenet300 --seeds 0
    python bench/compare.py --criteria dirichlet              # redo one criterion's rows only
    python bench/compare.py --setups fashion_mnist32-resnet20 --criteria dirichlet \
        --allocations greedy uniform                          # and only some allocations

Results are cached under runs/cpu/<dataset>-<model>/seed<k>/ (a rerun continues where it
stopped; the notebooks of the cpu profile share this cache), the raw rows in
runs/cpu/<dataset>-<model>/rows.json and in bench/results/compare/<setup>.json, which is
committed: make figures does not rerun the comparison, it redraws these rows. The figures
(compare_<model>_<dataset>, settling_<dataset>-<model>, PNG and PDF) and the table (compare.md)
go to figures/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from dplib.experiments import cifar, compare, publish  # noqa: E402
from dplib.files import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--setups", nargs="+", default=list(compare.DEFAULT_SETUPS), choices=list(compare.SETUPS)
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", default=list(compare.BUDGETS))
    parser.add_argument("--criteria", nargs="+", default=None)
    parser.add_argument("--allocations", nargs="+", default=None, choices=compare.ALLOCATION_NAMES)
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "figures")
    args = parser.parse_args()
    for name in args.setups:
        started = time.perf_counter()
        result = compare.run_setup(
            compare.SETUPS[name],
            args.root,
            seeds=args.seeds,
            budgets=args.budgets,
            criteria=args.criteria,
            allocations=args.allocations,
            log=lambda line: print(line, flush=True),
        )
        committed = compare.committed_results() / f"{name}.json"
        if args.criteria is not None:  # the committed rows of the other criteria stay
            redone = (set(args.seeds), {*args.budgets, *compare.SETUPS[name].widths})
            allocations = args.allocations or compare.ALLOCATION_NAMES
            result = cifar.merge_rows(committed, result, *redone, set(args.criteria), allocations)
        write_json(args.root / name / "rows.json", result)
        # make figures does not rerun the comparison: it redraws these committed rows
        write_json(committed, result)
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    # as make figures draws it: the committed rows of the setups not run here (resnet20) too
    written = publish.write_comparison(args.root, args.out, compare.committed_results())
    print(json.dumps({"written": [str(path) for path in written]}, indent=1))


if __name__ == "__main__":
    main()
