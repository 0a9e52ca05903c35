"""The study at smoke size: screen, pairs, finals, tables and figures; and its committed results."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

from dplib.experiments import publish, reports, study  # noqa: E402

pytestmark = pytest.mark.slow  # left out of `make quick`; CI runs every test


def _smoke_study(root):
    return study.run_study(
        ["mnist5k-lenet300"],
        root,
        subset=1000,
        configs=study.smoke_grid,
        finalists=1,
        shared_finalists=1,
        criteria=("l1",),
        log=print,
    )


def test_a_smoke_study_runs_caches_and_reports(tmp_path):
    summary = _smoke_study(tmp_path)
    entry = summary["mnist5k-lenet300"]
    assert {r["key"] for r in entry["screened"]} >= {"specified", "estimator=point"}
    assert any(r["criterion"] == "l1" for r in entry["finals"])
    results = study.load_results(tmp_path)
    assert len(results["mnist5k-lenet300"]["screened"]) == len(entry["screened"])
    written = {p.name for p in publish.write_study(results, tmp_path / "figures")}
    assert written == {"study.md", "study_factors.png", "study_finals.png"}
    chosen, table = reports.recommendation(results)
    assert chosen is not None and "| mnist5k-lenet300 |" in table
    again = _smoke_study(tmp_path)  # every result read back from the cache
    assert again["mnist5k-lenet300"]["finals"] == entry["finals"]


def test_committed_results_are_read_and_a_missing_setup_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "committed_results", lambda: tmp_path)
    from dplib.files import write_json

    write_json(tmp_path / "mnist5k-lenet300.json", {"screened": [{"key": "a"}], "finals": []})
    assert study.load_committed(["mnist5k-lenet300"])["mnist5k-lenet300"]["screened"]
    assert study.load_committed(["mnist5k-lenet5"], required=False) is None
    try:
        study.load_committed(["mnist5k-lenet5"])
    except FileNotFoundError as error:
        assert "make study" in str(error)
    else:
        raise AssertionError("a missing setup must be reported")
