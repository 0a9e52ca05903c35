"""The committed notebooks: their list, no outputs, one `parameters` cell, fast failure."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dplib.experiments import profiles, runner

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
EXPECTED = ["00_primer", "01_pretrain", "02_importance", "03_prune", "04_figures", "05_study"]
SOLUTIONS = sorted(f"solutions/{p.stem}" for p in (NOTEBOOK_DIR / "solutions").glob("*.ipynb"))
# make figures (the main job) runs 00-04; 05_study's full grid is `make study` (about 30 minutes)
MAIN_JOB = EXPECTED[:5]


def _load(name: str) -> SimpleNamespace:
    """The notebook's cells read as JSON, each source joined into one string (nbformat's import
    costs a second; the notebooks' runs, nbval and papermill, validate the format)."""
    notebook = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())
    cells = [{**cell, "source": "".join(cell["source"])} for cell in notebook["cells"]]
    return SimpleNamespace(cells=[SimpleNamespace(**cell) for cell in cells])


def test_notebook_list_and_the_main_jobs_plan():
    found = sorted(path.stem for path in NOTEBOOK_DIR.glob("*.ipynb"))
    assert found == EXPECTED
    steps = [name for name, _, _ in runner.plan("cpu")]
    experiments = len(profiles.experiments("cpu"))
    assert steps == ["00_primer", *MAIN_JOB[1:4] * experiments, "04_figures"]


@pytest.mark.parametrize("name", EXPECTED + SOLUTIONS)
def test_committed_without_outputs(name):
    for index, cell in enumerate(_load(name).cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {index} has outputs: strip them"
            assert cell.execution_count is None, f"{name} cell {index} has an execution count"


@pytest.mark.parametrize("name", EXPECTED + SOLUTIONS)
def test_one_parameters_cell_then_the_check_of_its_names(name):
    cells = _load(name).cells
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    assert "\nprofile = " in f"\n{cells[tagged[0]].source}", f"{name}: no profile parameter"
    # papermill reads each parameter's line and warns into the main job's log at a second "="
    lines = [line for line in cells[tagged[0]].source.splitlines() if "=" in line.split("#")[0]]
    unread = [line for line in lines if line.count("=") > 1]
    assert not unread, f"{name}: papermill cannot read {unread} (one '=' a line, comment included)"
    following = cells[tagged[0] + 1].source
    checks = (
        f'profiles.{call}(globals(), "{name}")' for call in ("check_parameters", "from_notebook")
    )
    assert any(check in following for check in checks), f"{name}: its parameters go unchecked"


def test_notebooks_check_what_a_student_should_see():
    # committed without outputs, the notebooks assert their deterministic results instead
    asserting = [
        (name, index)
        for name in EXPECTED
        for index, cell in enumerate(_load(name).cells)
        if cell.cell_type == "code" and "assert" in cell.source
    ]
    assert len(asserting) >= 6, asserting
    assert not any("NBVAL_CHECK_OUTPUT" in cell.source for n in EXPECTED for cell in _load(n).cells)


def test_every_exercise_answer_is_a_solution_that_runs_in_the_tests():
    linked = set()
    for name in EXPECTED:
        for cell in _load(name).cells:
            linked |= set(re.findall(r"\(solutions/(\w+)\.ipynb\)", cell.source))
    assert linked == {name.split("/")[1] for name in SOLUTIONS}
    assert len(SOLUTIONS) >= 5


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


def test_the_runner_tells_its_kernels_that_mnist_is_offline(monkeypatch, capsys):
    # each kernel would otherwise spend about a second on the same failed download
    monkeypatch.setattr(profiles, "_mnist_available", lambda: (False, "no files"))
    monkeypatch.setenv(profiles.OFFLINE_ENV, "0")
    steps = runner.runnable(runner.plan("cpu"), ["mnist-lenet5"])
    assert [name for name, _, _ in steps] == list(runner.PER_EXPERIMENT)
    assert os.environ[profiles.OFFLINE_ENV] == "1"
    assert "using mnist5k" in capsys.readouterr().out


def test_the_runner_refuses_an_unknown_only_before_any_notebook_runs(capsys):
    with pytest.raises(SystemExit, match=r"--only \['nosuch'\]: not in this profile") as caught:
        runner.main(["--profile", "smoke", "--only", "nosuch"])
    assert "fashion_mnist-lenet5" in str(caught.value)  # the names it could have been
    assert "running" not in capsys.readouterr().out


def _failing_run(notebook: str, parameters: dict, tmp_path) -> tuple[str, list[int]]:
    """Run ``notebook`` with ``parameters`` under papermill, expecting it to stop within a
    minute and to write nothing: the error's text and the indices of the failing code cells."""
    import nbformat

    papermill = pytest.importorskip("papermill")
    started = time.perf_counter()
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        papermill.execute_notebook(
            str(NOTEBOOK_DIR / f"{notebook}.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={"profile": "smoke", **parameters},
            kernel_name="python3",
            progress_bar=False,
            cwd=str(NOTEBOOK_DIR),
        )
    assert time.perf_counter() - started < 60
    assert not (tmp_path / "runs").exists(), "nothing may be written before the names are checked"
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    failed = [i for i, c in enumerate(code) if any(o.output_type == "error" for o in c.outputs)]
    return str(caught.value), failed


@pytest.mark.slow
def test_papermill_fails_at_once_on_a_bad_name(tmp_path, monkeypatch):
    monkeypatch.setenv("DPLIB_RUNS", str(tmp_path / "runs"))
    message, failed = _failing_run("01_pretrain", {"model": "resnet9000"}, tmp_path)
    assert "unknown model 'resnet9000'" in message
    # the first code cell after the parameters (and papermill's injected) cell fails
    assert failed == [2]


@pytest.mark.slow
def test_a_misspelt_parameter_stops_the_notebook_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DPLIB_RUNS", str(tmp_path / "runs"))
    message, failed = _failing_run("03_prune", {"finetune_epochz": 1}, tmp_path)
    assert "03_prune takes no parameter 'finetune_epochz'" in message
    assert "finetune_epochs" in message  # the ones it takes are named
    assert failed == [2]


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


def _write_notebook(folder, name: str, source: str) -> None:
    """A one-cell Python notebook ``name`` in ``folder``, which the runner is pointed at."""
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, folder / f"{name}.ipynb")


@pytest.mark.slow  # it starts Jupyter kernels
def test_a_notebook_runs_again_when_the_kits_code_changes(tmp_path, monkeypatch):
    """Up to date: not run again; after a changed statement anywhere in the kit: run again (its
    stages then rebuild what the changed modules made)."""
    _write_notebook(tmp_path, "plain", "x = 1")
    monkeypatch.setattr(runner.paths, "notebook_dir", lambda: tmp_path)
    output = tmp_path / "out" / "plain.ipynb"
    assert runner.run_notebook("plain", {"profile": "smoke"}, output)
    assert not runner.run_notebook("plain", {"profile": "smoke"}, output)
    monkeypatch.setattr(runner, "kit_code", lambda: "a statement changed")
    assert runner.run_notebook("plain", {"profile": "smoke"}, output)


@pytest.mark.slow  # it starts a Jupyter kernel
def test_the_main_job_talks_to_its_kernels_over_local_sockets(tmp_path, monkeypatch):
    """The runner's kernels listen on no TCP port (ipykernel warns of unencrypted TCP into the
    main job's log otherwise): a notebook run by it finds its kernel on the IPC transport."""
    import os

    if os.name == "nt":
        pytest.skip("ZeroMQ has no IPC transport on Windows; the runner keeps TCP there")
    check = (
        "from ipykernel.kernelapp import IPKernelApp\n"
        'assert IPKernelApp.instance().transport == "ipc"'
    )
    _write_notebook(tmp_path, "transport", check)
    monkeypatch.setattr(runner.paths, "notebook_dir", lambda: tmp_path)
    assert runner.run_notebook("transport", {"profile": "smoke"}, tmp_path / "out" / "t.ipynb")
    assert (tmp_path / "out" / "t.ipynb").exists()


@pytest.mark.slow  # it starts Jupyter kernels
def test_each_notebook_runs_in_a_kernel_of_its_own_started_ahead(tmp_path, monkeypatch, caplog):
    """The main job starts the next notebook's kernel, with torch and the kit imported, while a
    notebook runs; no state passes from one notebook to the next, no kernel is left, and no
    client is left listening (each logged "Could not destroy zmq context" into the main job's
    log)."""
    import gc
    import os

    check = (
        "import os, sys\n"
        "assert 'torch' in sys.modules and 'dplib.experiments.publish' in sys.modules\n"
        "assert 'leftover' not in globals()\n"
        "leftover = 1\n"
        "with open('pids.txt', 'a') as pids:\n"
        "    pids.write(f'{os.getpid()}\\n')"
    )
    _write_notebook(tmp_path, "fresh", check)
    _write_notebook(tmp_path, "failing", check + "\n1 / 0")
    monkeypatch.setattr(runner.paths, "notebook_dir", lambda: tmp_path)
    kernels = runner.Kernels(4)  # the fourth is started ahead and never used
    try:
        for copy in ("a", "b"):
            output = tmp_path / "out" / f"{copy}.ipynb"
            assert runner.run_notebook("fresh", {"profile": "smoke"}, output, kernels=kernels)
        with pytest.raises(Exception, match="ZeroDivisionError"):
            runner.run_notebook(
                "failing", {"profile": "smoke"}, tmp_path / "c.ipynb", kernels=kernels
            )
    finally:
        kernels.close()
    gc.collect()  # a client left listening says so when collected
    assert "Could not destroy zmq context" not in caplog.text
    pids = [int(pid) for pid in (tmp_path / "pids.txt").read_text().split()]
    assert len(set(pids)) == 3
    for pid in pids:  # each kernel shut down, the failed notebook's too
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow  # it starts Jupyter kernels
def test_without_a_kernel_started_ahead_papermill_starts_one(tmp_path, monkeypatch, capsys):

    async def no_kernel():
        raise RuntimeError("no kernel here")

    _write_notebook(tmp_path, "plain", "x = 1")
    monkeypatch.setattr(runner.paths, "notebook_dir", lambda: tmp_path)
    monkeypatch.setattr(runner, "_warm_kernel", no_kernel)
    kernels = runner.Kernels(2)
    for copy in ("a", "b"):
        output = tmp_path / f"{copy}.ipynb"
        assert runner.run_notebook("plain", {"profile": "smoke"}, output, kernels=kernels)
        assert output.exists()
    kernels.close()
    assert capsys.readouterr().out.count("no kernel started ahead (no kernel here)") == 1
