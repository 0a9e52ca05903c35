"""dplib.experiments.compare: a smoke-sized comparison (rows, budgets, allocations, cache)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dplib.experiments import compare, figures, publish, reports  # noqa: E402
from dplib.experiments.experiment import pretraining_key  # noqa: E402
from dplib.files import read_json, write_json  # noqa: E402

pytestmark = pytest.mark.slow  # left out of `make quick`; CI runs every test

SETUP = compare.comparison_setup("lenet300", "mnist5k", (1, 0.5, 0.25), subset=1000)
BUDGETS = ("4x", "10x")
CRITERIA = ("dirichlet", "l1", "random")


def test_comparison_rows_meet_budgets_and_cache(tmp_path):
    result = compare.run_setup(SETUP, tmp_path, seeds=[0], budgets=BUDGETS, criteria=CRITERIA)
    rows = result["rows"]
    allocations = {c: {"greedy", "uniform", *compare.RULES.get(c, ())} for c in CRITERIA}
    assert len(rows) == len(BUDGETS) * sum(map(len, allocations.values()))
    for criterion, expected in allocations.items():
        assert {r["allocation"] for r in rows if r["criterion"] == criterion} == expected
    base_macs = result["bases"][0]["macs"]
    for row in rows:
        target = base_macs // int(row["budget"].rstrip("x"))
        assert 0.98 * target <= row["macs"] <= target, row
    # the same widths for every criterion under the uniform allocation
    for budget in BUDGETS:
        same = {r["widths"] for r in rows if r["budget"] == budget and r["allocation"] == "uniform"}
        assert len(same) == 1
    # a second run reads every result from the cache
    again = compare.run_setup(SETUP, tmp_path, seeds=[0], budgets=BUDGETS, criteria=CRITERIA)
    assert again["rows"] == rows

    summary = compare.summarise(rows)
    assert len(summary) == len(rows)
    # rows written before the allocation's cost was recorded still summarise
    older = compare.summarise(
        [{k: v for k, v in r.items() if k != "allocation_seconds"} for r in rows]
    )
    assert all(e["allocation_seconds"] != e["allocation_seconds"] for e in older)  # NaN
    assert "| 4x | greedy | dirichlet |" in reports.markdown_table(summary)
    margins = compare.dirichlet_margins(summary)
    assert [m["budget"] for m in margins] == list(BUDGETS)
    measured = compare.dirichlet_margins(summary, "measured")
    assert all(m["finetuned_val_control"] is not None for m in measured)  # L1 measured ran
    assert all(m["finetuned_val_best_other"] in ("l1", "random") for m in measured)
    verdict = reports.verdict({"smoke": result}, skip=())
    assert set(zip(verdict["criterion"], verdict["allocation"])) == {
        ("dirichlet", rule) for rule in reports.RULES
    } | {("l1", "measured")}
    assert (verdict["cases"] == len(BUDGETS)).all()
    # the allocation's cost in training epochs of the setup's base
    epoch = result["bases"][0]["seconds_per_epoch"]
    seconds = verdict["allocation seconds (median)"]  # both rounded: 0.01 s, 0.001 epochs
    epochs = verdict["allocation in training epochs (median)"]
    assert np.allclose(epochs * epoch, seconds, atol=0.006 + 0.0006 * epoch), (epochs, seconds)
    assert "| Dirichlet measured |" in reports.comparison_markdown({"smoke": result})
    same = reports.same_widths_verdict({"smoke": result}, skip=())
    assert list(same["metric"]) == ["after fine-tune", "after pruning"]
    assert (same["cases"] == len(BUDGETS)).all()
    leads = [
        100 * (mine["finetuned_val"] - max(e["finetuned_val"] for e in others))
        for budget in BUDGETS
        for mine, others in [_same_widths(summary, budget)]
    ]
    assert same["at least the best other"][0] == sum(v >= -1e-6 for v in leads)
    assert same["worst lead (points)"][0] == round(min(leads), 2)
    plt.close(figures.plot_comparison(summary, "smoke"))

    settles = result["settling"]
    assert len(settles) == 1 and settles[0]["fraction"][-1] == 1.0
    for taus in settles[0]["tau"].values():
        assert taus[-1] == 1.0  # the final snapshot is the final ranking
    assert set(compare.settling_summary(settles)) == set(settles[0]["tau"])
    plt.close(figures.plot_settling(settles))


def test_only_the_allocations_asked_for_are_run(tmp_path):
    result = compare.run_setup(
        SETUP,
        tmp_path,
        seeds=[0],
        budgets=("4x",),
        criteria=("l1",),
        allocations=("greedy", "measured"),
        log=lambda _: None,
    )
    assert sorted(r["allocation"] for r in result["rows"]) == ["greedy", "measured"]


def _same_widths(summary: list[dict], budget: str) -> tuple[dict, list[dict]]:
    """Dirichlet's entry at the same widths and the other criteria's, at ``budget``."""
    same = [e for e in summary if e["budget"] == budget and e["allocation"] == "uniform"]
    mine = next(e for e in same if e["criterion"] == "dirichlet")
    return mine, [e for e in same if e["criterion"] != "dirichlet"]


def test_notebook_experiment_runs_writes_rows_and_report(tmp_path, monkeypatch):
    from dplib.experiments import profiles

    monkeypatch.setenv("DPLIB_RUNS", str(tmp_path / "runs"))
    config = profiles.resolve(
        "smoke", "fashion_mnist", "lenet5", subset=600, eval_subset=200, pretrain_epochs=1.0
    )
    assert config.compare and config.compare_seeds == (0,) and config.compare_budgets == ("4x",)
    result = compare.run_experiment(config, log=print)
    root = tmp_path / "runs" / "smoke"
    rows_file = root / "fashion_mnist-lenet5" / "rows.json"
    assert rows_file.exists() and read_json(rows_file)["rows"] == result["rows"]
    assert {r["criterion"] for r in result["rows"]} == set(config.compare_criteria)
    # the evaluation subset is used: accuracies are multiples of 1/200
    assert all(
        abs(200 * r["pruned_val"] - round(200 * r["pruned_val"])) < 1e-6 for r in result["rows"]
    )

    written = publish.write_comparison(root, tmp_path / "figures")
    names = {path.name for path in written}
    assert {"compare_lenet5_fashion_mnist.png", "compare_lenet5_fashion_mnist.pdf"} <= names
    assert "settling_fashion_mnist-lenet5.png" in names
    text = (tmp_path / "figures" / "compare.md").read_text()
    assert "| fashion_mnist-lenet5 | 4x | " in text  # the goals table
    # the same rows drawn by the same code: the files are kept; changed rows are redrawn
    drawn = []

    def draw(*args):
        drawn.append(args)
        return plt.figure()

    with monkeypatch.context() as patched:
        patched.setattr(publish.figures, "plot_comparison", draw)
        patched.setattr(publish.figures, "plot_settling", draw)
        assert publish.write_comparison(root, tmp_path / "figures") == written and not drawn
        write_json(rows_file, result | {"rows": result["rows"][1:]})
        assert publish.write_comparison(root, tmp_path / "figures") == written
        assert len(drawn) == 1  # the comparison's figure; the settling's rows are the same
    write_json(rows_file, result)
    assert "### lenet5 on fashion_mnist (1 seeds)" in text
    frame = reports.margins_table(compare.summarise(result["rows"]))
    assert list(frame["budget"]) == ["4x"]

    # committed rows (bench/results/compare) join for setups the runs do not have; runs win
    extra = tmp_path / "extra"
    write_json(extra / "fashion_mnist32-resnet20.json", result)
    write_json(extra / "fashion_mnist-lenet5.json", {"rows": [], "stale": True})
    with pytest.warns(UserWarning, match="differs from the committed"):
        both = compare.load_results(root, extra)
    assert list(both) == ["fashion_mnist-lenet5", "fashion_mnist32-resnet20"]
    assert "stale" not in both["fashion_mnist-lenet5"]
    with pytest.warns(UserWarning, match="fashion_mnist-lenet5.json: the local rows are used"):
        written = publish.write_comparison(root, tmp_path / "figures", extra)
    assert "compare_resnet20_fashion_mnist32.png" in {path.name for path in written}

    # an experiment the profile does not compare is skipped, and says so by returning None
    assert compare.run_experiment(config.replace(compare=False)) is None
    assert publish.write_comparison(tmp_path / "empty", tmp_path / "nothing") == []


def test_cpu_profile_compares_the_lenets_with_the_bench_setups():
    from dplib.experiments import profiles

    for dataset, model in profiles.LENET_COMPARISONS:
        # the main job reads the committed rows of make compare; compare=True reruns them
        config = profiles.resolve("cpu", dataset, model, compare=True)
        assert config.compare and config.compare_seeds == (0, 1, 2)
        assert config.compare_budgets == compare.BUDGETS
        # the same experiment as bench/compare.py, so the two share one cache, and the same
        # pretraining as the notebooks' table: seed 0 is pretrained once
        setup = compare.SETUPS[config.name].replace(device=config.experiment.device)
        assert setup == compare.experiment_for(config)  # the notebooks' device: cpu
        key = pretraining_key(config.experiment, 0)
        assert key == pretraining_key(compare.SETUPS[config.name], 0)
        assert not profiles.resolve("cpu", dataset, model).compare
        committed = compare.committed_result(config)
        assert committed is not None and committed["setup"] == config.name
        assert len({row["seed"] for row in committed["rows"]}) == 3
    assert not profiles.resolve("cpu", "mnist", "lenet5_bn").compare


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"compare_budgets": ["4"]}, "ratio of fewer MACs"),
        ({"compare_budgets": ["0.5x"]}, "at least 1x"),
        ({"compare_budgets": []}, "compare_budgets is empty"),
        ({"compare_criteria": ["l2"]}, "unknown criterion 'l2'"),
    ],
)
def test_bad_comparison_settings_fail_before_training(override, message):
    from dplib.experiments import profiles

    with pytest.raises(ValueError, match=message):
        profiles.resolve("smoke", "fashion_mnist", "lenet5", **override)


def test_the_course_verdict_is_computed_from_the_committed_comparison():
    import copy

    from dplib.experiments import reports

    committed = compare.load_results(compare.committed_results(), compare.committed_results())
    found = reports.what_the_kit_found(committed)
    pooled = reports.setups_with_rules(committed)  # the ResNet-20 setup ran the greedy rule alone
    assert set(committed) - set(pooled) == {"fashion_mnist32-resnet20"}
    cases = reports.same_widths_verdict(pooled).set_index("metric")
    every = reports.same_widths_leads(pooled)
    assert set(every["criterion"]) == {"dirichlet", "l1", "taylor", "random", "tp_l2", "tp_taylor"}
    mine = every[every["criterion"] == "dirichlet"].set_index("metric")
    assert mine["mean lead (points)"].to_dict() == cases["mean lead (points)"].to_dict()
    wins = int(cases.loc["after pruning", "at least the best other"])
    assert f"in {wins} of 12 cases" in found
    # a comparison where Dirichlet's ranking wins or loses everywhere changes what students read
    for accuracy, expected in ((1.0, 12), (0.0, 0)):
        changed = copy.deepcopy(committed)
        for result in changed.values():
            for row in result["rows"]:
                if row["criterion"] == "dirichlet" and row["allocation"] == "uniform":
                    row["pruned_val"] = accuracy
        assert f"in {expected} of 12 cases" in reports.what_the_kit_found(changed)


def test_comparison_figure_draws_one_question_per_panel():
    """The ranking (every criterion, same widths) and one column per Dirichlet rule beside L1,
    after pruning and after fine-tuning: 2 x (1 + 2) panels where the rules ran, 2 x 2 where
    only greedy and uniform did; no empty panel, few lines in each, the budgets in their order."""
    committed = compare.load_results(compare.committed_results(), compare.committed_results())
    rows = committed["mnist5k-lenet5"]["rows"]
    greedy_and_uniform = [r for r in rows if r["allocation"] in ("greedy", "uniform")]
    # lines per panel: 6 criteria in the ranking's two, Dirichlet and L1 under each rule
    for chosen, lines in (
        (rows, [2] * 4 + [6] * 2),
        (greedy_and_uniform, [2] * 2 + [6] * 2),
    ):
        figure = figures.plot_comparison(compare.summarise(chosen), "committed")
        axes = figure.get_axes()
        assert len(axes) == len(lines) and all(axis.has_data() for axis in axes)
        assert sorted(len(axis.containers) for axis in axes) == lines  # one errorbar a line
        bottom = [axis for axis in axes if axis.get_xlabel()]  # the top row shares their x
        assert len(bottom) == len(axes) // 2
        for axis in bottom:
            assert [t.get_text() for t in axis.get_xticklabels()] == ["4x", "10x", "20x"]
        assert all("validation accuracy (%)" in a.get_ylabel() for a in axes if a.get_ylabel())
        plt.close(figure)


def test_learning_curves_draw_the_cross_entropy_and_the_kl_on_their_own_axes():
    import torch

    from dplib import Importance

    steps = 200
    history = {
        "cross_entropy": [0.3 + 0.1 * 0.99**s for s in range(steps)],
        "kl": [2000.0 - s for s in range(steps)],
        "steps": [100, 200],
        "snapshots": [{"fc": torch.tensor([0.2, 0.3, 0.5])}, {"fc": torch.tensor([0.1, 0.3, 0.6])}],
    }
    scores = {"fc": torch.tensor([0.1, 0.3, 0.6])}
    for beta, panels in ((0.01, 3), (0.0, 2)):  # beta 0: the loss is the cross-entropy alone
        loss = [ce + beta * kl for ce, kl in zip(history["cross_entropy"], history["kl"])]
        importance = Importance(
            scores, history=history | {"loss": loss}, config={"kl_weight": beta}
        )
        figure = figures.importance_learning(importance, "fake")
        axes = figure.get_axes()
        assert len(axes) == panels and all(axis.has_data() for axis in axes)
        assert axes[0].get_ylim()[1] < 1  # the cross-entropy is not flattened by the KL's scale
        plt.close(figure)
