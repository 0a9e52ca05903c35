"""The benchmark pages are what their scripts write from the committed rows (no run needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dplib.files import read_json

from conftest import bench_module

KIT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "name, rows, page",
    [
        ("finetune_noise", "bench/results/finetune_noise.json", "figures/bench/finetune_noise.md"),
        ("measured_floor", "bench/results/measured_floor.json", "figures/study/measured_floor.md"),
    ],
)
def test_a_bench_page_is_its_script_applied_to_the_committed_rows(name, rows, page):
    module = bench_module(name)
    written = module.page(read_json(KIT / rows)["rows"])
    assert written == (KIT / page).read_text()


def test_the_fine_tuning_noise_counts_what_falls_below_a_tenth_of_a_point():
    """A rule equal to greedy gains nothing; one 0.2 points lower in one case is counted once."""
    module = bench_module("finetune_noise")
    rows = []
    for case, (setup, budget) in enumerate([("a", "4x"), ("a", "10x"), ("b", "4x")]):
        for seed in range(3):
            for order in range(2):
                val = 0.9 + 0.01 * seed + 0.001 * order
                for rule in ("greedy", "measured"):
                    lower = 0.002 if (rule == "measured" and case == 2) else 0.0
                    rows.append(
                        {"setup": setup, "seed": seed, "criterion": "l1", "budget": budget}
                        | {"rule": rule, "order": order, "val": val - lower, "pruned_val": 0.5}
                    )
    summary = module.tables(rows).split("\n\n")[0]
    assert "| greedy against itself (order 1) | 3 | 0.1 | 0.1 | 0 | - |" in summary
    assert "| measured against greedy | 3 | -0.07 | -0.2 | 1 | 0.0 |" in summary
