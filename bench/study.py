"""Run the study of what makes Dirichlet importance work (dplib.experiments.study), resumable.

    python bench/study.py                         # every setup, about 30 minutes on 2 cores
    python bench/study.py --setups mnist5k-lenet5 # one setup

Results are cached under runs/study/ (rerunning continues where it stopped); every setup's
results are committed in bench/results/study/<setup>.json, from which the 05_study notebook
draws without recomputing; the summary table and figures go to figures/study/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dplib.experiments import publish, study
from dplib.files import write_json

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--setups", nargs="+", default=list(study.SETUPS), choices=list(study.SETUPS)
    )
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--out", type=Path, default=ROOT / "figures" / "study")
    args = parser.parse_args()
    started = time.perf_counter()
    summary = study.run_study(args.setups, args.root)
    seconds = time.perf_counter() - started
    print(f"study finished in {seconds:.0f} s (cached results are not recomputed)")
    results = study.load_results(args.root)
    for name, entry in results.items():  # 05_study draws from these without recomputing
        write_json(study.committed_results() / f"{name}.json", entry)
    publish.write_study(results, args.out)
    write_json(
        args.out / "study.json",
        {
            "command": "python bench/study.py",
            "seconds_this_run": seconds,
            "setup_seconds": {k: v["seconds"] for k, v in summary.items()},
        },
    )
    print((args.out / "study.md").read_text())


if __name__ == "__main__":
    main()
