"""The committed notebooks: their list, no outputs, one `parameters` cell, fast failure."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

from dplib.experiments import profiles, runner

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
EXPECTED = ["00_primer", "01_pretrain", "02_importance", "03_prune", "04_figures", "05_study"]
# make figures (the main job) runs 00-04; 05_study's full grid is `make study` (about 30 minutes)
MAIN_JOB = EXPECTED[:5]


def _load(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def test_notebook_list_and_the_main_jobs_plan():
    found = sorted(path.stem for path in NOTEBOOK_DIR.glob("*.ipynb"))
    assert found == EXPECTED
    steps = [name for name, _, _ in runner.plan("cpu")]
    experiments = len(profiles.experiments("cpu"))
    assert steps == ["00_primer", *MAIN_JOB[1:4] * experiments, "04_figures"]


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_without_outputs(name):
    for index, cell in enumerate(_load(name).cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {index} has outputs: strip them"
            assert cell.execution_count is None, f"{name} cell {index} has an execution count"


@pytest.mark.parametrize("name", EXPECTED)
def test_one_parameters_cell_then_validation(name):
    cells = _load(name).cells
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    source = cells[tagged[0]].source
    for knob in ("profile", "dataset", "model", "seed", "device"):
        assert f"\n{knob} = " in f"\n{source}", f"{name}: parameter {knob!r} missing"
    following = cells[tagged[0] + 1]
    assert following.cell_type == "code" and "profiles.resolve(" in following.source


@pytest.mark.parametrize("name", ["00_primer", "01_pretrain", "03_prune"])
def test_deterministic_cells_are_checked(name):
    marked = [c for c in _load(name).cells if c.source.startswith("# NBVAL_CHECK_OUTPUT")]
    assert marked, f"{name} should mark its deterministic cells with # NBVAL_CHECK_OUTPUT"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"profile": "laptop"}, "unknown profile 'laptop'"),
        ({"model": "lenet6"}, "unknown model 'lenet6'"),
        ({"dataset": "svhn"}, "unknown dataset 'svhn'"),
        ({"device": "tpu"}, "unknown device"),
        ({"estimator": "mean"}, "unknown estimator"),
        ({"widths": ["5-10"]}, "2 widths given for 3 prunable layers"),
        ({"criteria": ["magic"]}, "unknown criterion"),
    ],
)
def test_resolve_rejects_bad_names(bad, message):
    arguments = {"profile": "smoke", "dataset": "fashion_mnist", "model": "lenet5"}
    arguments.update(bad)
    with pytest.raises(ValueError, match=message):
        profiles.resolve(**arguments)


def test_offline_mnist_falls_back_to_mnist5k(monkeypatch):
    monkeypatch.setattr(profiles, "_mnist_available", lambda: (False, "no files"))
    config = profiles.resolve("smoke", "mnist", "lenet5")
    assert config.dataset == "mnist5k"
    assert config.dataset_label == profiles.MNIST5K_NOTE
    assert "offline" in config.dataset_note


@pytest.mark.slow
def test_papermill_fails_at_once_on_a_bad_name(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("DPLIB_RUNS", str(tmp_path / "runs"))
    started = time.perf_counter()
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        papermill.execute_notebook(
            str(NOTEBOOK_DIR / "01_pretrain.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={"profile": "smoke", "model": "resnet9000"},
            kernel_name="python3",
            progress_bar=False,
            cwd=str(NOTEBOOK_DIR),
        )
    assert "unknown model 'resnet9000'" in str(caught.value)
    assert time.perf_counter() - started < 60
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    failed = [
        i
        for i, c in enumerate(executed.cells)
        if c.get("outputs") and any(o.get("output_type") == "error" for o in c.outputs)
    ]
    # the first code cell after the parameters (and papermill's injected) cell fails
    code_cells = [i for i, c in enumerate(executed.cells) if c.cell_type == "code"]
    assert failed == [code_cells[2]]
    assert not (tmp_path / "runs").exists(), "nothing may be written before the names are checked"


def test_the_main_job_says_which_stage_it_is_at_and_what_is_left(tmp_path, capsys):
    from dplib.files import write_json

    steps = [
        ("01_pretrain", {"profile": "cpu", "dataset": "mnist", "model": "lenet5"}, tmp_path / "a"),
        (
            "02_importance",
            {"profile": "cpu", "dataset": "mnist", "model": "lenet5"},
            tmp_path / "b",
        ),
        ("04_figures", {"profile": "cpu"}, tmp_path / "c.ipynb"),
    ]
    write_json(tmp_path / "b.json", {"stamp": {}, "seconds": 30.0})
    runner._announce(1, steps, 12.0, spent=[20.0])
    line = capsys.readouterr().out
    # the remaining stages: 02 took 30 s last time, 04 never ran (the mean so far: 20 s)
    assert "stage 2/3: 02_importance of mnist-lenet5; 12 s elapsed, about 50 s left" in line
    assert runner.previous_seconds(tmp_path / "c.ipynb") is None
