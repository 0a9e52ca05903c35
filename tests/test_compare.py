"""dplib.compare: a smoke-sized comparison (rows, budgets, both allocations, cache, summary)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dplib import compare  # noqa: E402

SETUP = compare.Setup("lenet300", "mnist5k", 1, 0.5, 0.25)
BUDGETS = ("4x", "10x")
CRITERIA = ("dirichlet", "l1", "random")


def test_comparison_rows_meet_budgets_and_cache(tmp_path):
    result = compare.run_setup(
        SETUP, tmp_path, seeds=[0], budgets=BUDGETS, criteria=CRITERIA, subset=1000, log=print
    )
    rows = result["rows"]
    assert len(rows) == len(BUDGETS) * len(CRITERIA) * 2
    assert {r["allocation"] for r in rows} == {"own", "same"}
    base_macs = result["bases"][0]["macs"]
    for row in rows:
        target = base_macs // int(row["budget"].rstrip("x"))
        assert 0.98 * target <= row["macs"] <= target, row
        for metric in ("pruned_val", "finetuned_val", "finetuned_test"):
            assert 0.0 <= row[metric] <= 1.0
    # the same widths for every criterion under the uniform allocation
    for budget in BUDGETS:
        same = {r["widths"] for r in rows if r["budget"] == budget and r["allocation"] == "same"}
        assert len(same) == 1
    # a second run reads every result from the cache
    again = compare.run_setup(
        SETUP, tmp_path, seeds=[0], budgets=BUDGETS, criteria=CRITERIA, subset=1000, log=print
    )
    assert again["rows"] == rows

    summary = compare.summarise(rows)
    assert len(summary) == len(rows)
    assert "| 4x | own | dirichlet |" in compare.markdown_table(summary)
    margins = compare.dirichlet_margins(summary)
    assert [m["budget"] for m in margins] == list(BUDGETS)
    plt.close(compare.plot_comparison(summary, "smoke"))

    settles = result["settling"]
    assert len(settles) == 1 and settles[0]["fraction"][-1] == 1.0
    for taus in settles[0]["tau"].values():
        assert taus[-1] == 1.0  # the final snapshot is the final ranking
    assert set(compare.settling_summary(settles)) == set(settles[0]["tau"])
    plt.close(compare.plot_settling(settles))
