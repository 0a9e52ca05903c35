"""make cifar at toy size: the CIFAR-10 experiment, its report and its shipped networks."""

from __future__ import annotations

import matplotlib
import pytest

matplotlib.use("Agg")

from test_cifar_data import write_jpeg_copy  # noqa: E402

from dplib import data  # noqa: E402
from dplib.experiments import cifar, compare, profiles, publish, reports  # noqa: E402
from dplib.files import read_json, write_json  # noqa: E402

pytestmark = pytest.mark.slow  # left out of `make quick`; CI runs every test


def toy(name: str) -> cifar.Experiment:
    """A CIFAR setup at toy size: 1/8 width, half an epoch of each schedule, batches of 16."""
    setup = cifar.SETUPS[name]
    return setup.replace(
        width_multiplier=0.125,
        batch_size=16,
        speedup_batch=4,
        pretraining=setup.pretraining.replace(epochs=0.5),
        importance=setup.importance.replace(epochs=0.5),
        finetuning=setup.finetuning.replace(epochs=0.5),
    )


def test_toy_cifar_experiment_writes_rows_report_and_loadable_networks(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("DPLIB_CIFAR10", str(write_jpeg_copy(tmp_path / "copy.tar.xz", 4)))
    results = tmp_path / "results"
    done = cifar.run(
        [toy("cifar10-resnet20")],
        tmp_path / "runs",
        criteria=("dirichlet", "l1"),
        budgets=("2x",),
        results=results,
    )
    rows = done["cifar10-resnet20"]["rows"]
    assert {(r["criterion"], r["allocation"]) for r in rows} == {
        ("dirichlet", rule) for rule in ("greedy", "uniform", "measured")
    } | {("l1", rule) for rule in ("greedy", "uniform", "measured")}
    assert all("speedup" in r and r["macs"] <= r["base_macs"] / 2 for r in rows)
    assert read_json(results / "cifar10-resnet20.json")["rows"] == rows
    same = {r["criterion"]: r for r in rows if r["allocation"] == "uniform"}
    assert same["dirichlet"]["widths"] == same["l1"]["widths"]
    assert same["dirichlet"]["speedup"] == same["l1"]["speedup"]  # one timing per architecture

    written = {p.name for p in publish.write_cifar(results, tmp_path / "figures")}
    assert {"cifar.md", "cifar.csv", "cifar_resnet20.png"} <= written
    header = (tmp_path / "figures" / "cifar.csv").read_text().splitlines()[0].split(",")
    for column in ("model", "criterion", "allocation", "budget", "widths", "params", "macs"):
        assert column in header
    report = (tmp_path / "figures" / "cifar.md").read_text()
    assert "JPEG copy" in report
    assert "| 2x (" in report and "x fewer MACs) |" in report  # the ratio each row reached

    # a second seed at one budget: its own importance of the same base network; the first
    # seed's rows are kept
    more = cifar.run(
        [toy("cifar10-resnet20")],
        tmp_path / "runs",
        seeds=(1,),
        criteria=("dirichlet", "l1"),
        budgets=("2x",),
        results=results,
    )
    merged = more["cifar10-resnet20"]
    assert [b["seed"] for b in merged["bases"]] == [0, 1]
    assert merged["bases"][0]["val"] == merged["bases"][1]["val"]  # one base network
    assert sorted({r["seed"] for r in merged["rows"]}) == [0, 1]
    assert len(merged["rows"]) == 2 * len(rows)
    assert not list((tmp_path / "runs" / "cifar10-resnet20" / "seed1").glob("base-*.pt"))

    shipped = cifar.ship(tmp_path / "runs", tmp_path / "shipped")
    assert [p.name for p in shipped] == ["resnet20-dirichlet-greedy.pt"]
    (measured,) = cifar.evaluate_shipped(tmp_path / "shipped")
    assert measured["test_accuracy"] == pytest.approx(measured["recorded"])


def test_the_reference_widths_fit_their_networks():
    import dplib

    for model, widths in (
        ("vgg16", profiles.VGG16_REFERENCE),
        ("resnet56", profiles.RESNET56_REFERENCE),
    ):
        network = dplib.models.build(model, width_multiplier=1.0)
        units = dplib.widths_of(network)
        assert len(dplib.parse_widths(widths, units)) == len(units)
    setup = cifar.SETUPS["cifar10-resnet20"]
    with pytest.raises(ValueError, match="unknown criteria"):
        cifar.run([setup], "nowhere", criteria=("dirichlett",))
    with pytest.raises(ValueError, match="ratio"):
        cifar.run([setup], "nowhere", budgets=("half",))


def test_the_gpu_script_runs_at_toy_size_on_the_cpu(tmp_path, monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv("DPLIB_CIFAR10", str(write_jpeg_copy(tmp_path / "copy.tar.xz", 2)))
    script = Path(__file__).resolve().parent.parent / "bench" / "cifar_gpu.py"
    argv = ["cifar_gpu.py", "--toy", "--device", "cpu", "--budget", "6"]
    argv += ["--root", str(tmp_path / "runs"), "--out", str(tmp_path / "rows")]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(script), run_name="__main__")
    for name in ("cifar10-resnet56", "cifar10-vgg16", "cifar10-wrn28_10"):
        result = read_json(tmp_path / "rows" / f"{name}.json")
        assert result["device"] == "CPU" and result["rows"]
        assert result["seconds"] > 0 and result["epoch_seconds"] > 0
        assert {r["allocation"] for r in result["rows"]} >= {"greedy", "uniform"}
    written = publish.write_cifar(tmp_path / "rows", tmp_path / "figures", "cifar_gpu", "one GPU")
    assert {p.name for p in written} >= {"cifar_gpu.md", "cifar_gpu.csv", "cifar_gpu_vgg16.png"}
    report = (tmp_path / "figures" / "cifar_gpu.md").read_text()
    assert report.startswith("# CIFAR-10: the paper's networks pruned on one GPU")
    assert "s per training epoch on CPU." in report  # the device each network was trained on


def test_the_gpu_script_refuses_a_bad_budget_or_a_missing_gpu_before_any_work(monkeypatch, capsys):
    import runpy
    import sys
    from pathlib import Path

    import torch

    script = str(Path(__file__).resolve().parent.parent / "bench" / "cifar_gpu.py")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, message in [
        (["--budget", "0", "--device", "cpu"], "must be positive"),
        (["--device", "cuda"], "sees no CUDA GPU"),
    ]:
        monkeypatch.setattr(sys, "argv", ["cifar_gpu.py", *argv])
        with pytest.raises(SystemExit):
            runpy.run_path(script, run_name="__main__")
        assert message in capsys.readouterr().err


def test_the_gpu_script_fits_every_phase_in_its_share_of_the_budget():
    """Pretraining, one importance epoch and every fine-tuning (a tenth of the pretraining
    epochs, at least half an epoch) fit the seconds given; one more epoch would not."""
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "cifar_gpu.py"
    epochs_for = runpy.run_path(str(script))["pretraining_epochs"]

    def seconds(epochs: int, epoch_seconds: float, finetunings: int, importance: float) -> float:
        return epoch_seconds * (epochs + importance + finetunings * max(0.5, epochs / 10))

    for case in [(100, 1.0, 9, 1.0), (10, 1.0, 9, 1.0), (300, 7.5, 6, 1.0), (126, 3.0, 9, 4.0)]:
        budget, epoch_seconds, finetunings, importance = case
        epochs = epochs_for(budget, epoch_seconds, finetunings, importance)
        assert seconds(epochs, epoch_seconds, finetunings, importance) <= budget
        assert seconds(epochs + 1, epoch_seconds, finetunings, importance) > budget
    assert epochs_for(1, 10.0, 9) == 1  # at least one epoch, even over budget


def test_the_shipped_networks_are_the_committed_rows():
    """Each network in figures/cifar/ loads with no other argument, has the widths and the
    parameter count of its row in bench/results/cifar/ and claims that row's test accuracy."""
    import dplib

    for model, (setup, criterion, allocation, _) in cifar.SHIPPED.items():
        network = dplib.load_pruned(cifar.shipped_dir() / f"{model}-{criterion}-{allocation}.pt")
        extra = network.dplib_extra
        (row,) = [
            r
            for r in read_json(cifar.committed_results() / f"{setup}.json")["rows"]
            if (r["criterion"], r["allocation"], r["seed"]) == (criterion, allocation, 0)
            and r["widths"] == extra["widths"]
        ]
        assert sum(p.numel() for p in network.parameters()) == row["params"]
        assert extra["finetuned_test"] == row["finetuned_test"]
        assert dplib.count(network, (1, 3, 32, 32)).macs == row["macs"]


def test_a_longer_finetuning_probe_reuses_the_pretrained_networks(monkeypatch):
    """bench/cifar.py --finetune-epochs changes the fine-tuning alone: the pretrained networks'
    and the importances' cache keys are the table's (nothing retrained); a non-positive number
    of epochs is refused before any work."""
    import runpy
    import sys
    from pathlib import Path

    from dplib.experiments.experiment import pretraining_key

    script = Path(__file__).resolve().parent.parent / "bench" / "cifar.py"
    module = runpy.run_path(str(script))
    setup = cifar.SETUPS["cifar10-vgg16"]
    probe = module["probe"](setup, 20)
    assert probe.finetuning.epochs == 20 and setup.finetuning.epochs == 2
    assert pretraining_key(probe, 0) == pretraining_key(setup, 0)
    assert probe.importance == setup.importance

    monkeypatch.setattr(sys, "argv", ["cifar.py", "--finetune-epochs", "0"])
    with pytest.raises(SystemExit):
        module["main"]()


def test_a_partial_rerun_keeps_what_it_did_not_redo(tmp_path):
    """Seed 0 rerun for L1 only: Taylor's rows and cost, seed 1 and the note stay."""
    row = {"seed": 0, "budget": "4x", "criterion": "l1", "allocation": "greedy"}
    previous = {
        "rows": [row, row | {"criterion": "taylor"}, row | {"seed": 1}],
        "bases": [{"seed": 0, "val": 0.8}, {"seed": 1, "val": 0.8}],
        "importance_seconds": [
            {"seed": 0, "criterion": c, "seconds": 1.0} for c in ("l1", "taylor")
        ],
        "note": "seed 1's rows are the first run's",
    }
    write_json(tmp_path / "setup.json", previous)
    found = {
        "rows": [row | {"finetuned_val": 0.5}],
        "bases": [{"seed": 0, "val": 0.8}],
        "importance_seconds": [{"seed": 0, "criterion": "l1", "seconds": 2.0}],
    }
    new_rows = found["rows"]
    merged = cifar.merge_rows(tmp_path / "setup.json", found, {0}, {"4x"}, {"l1"})
    assert merged["rows"] == previous["rows"][1:] + new_rows
    assert [b["seed"] for b in merged["bases"]] == [1, 0]
    assert {(t["criterion"], t["seconds"]) for t in merged["importance_seconds"]} == {
        ("taylor", 1.0),
        ("l1", 2.0),
    }
    assert merged["note"] == previous["note"]


def test_a_rerun_of_some_allocations_keeps_the_others_and_bad_names_fail_first(tmp_path):
    """Seed 0's L1 rows at 4x rerun for the greedy allocation only: its measured row stays; the
    settling of the Dirichlet ranking stays when Dirichlet is not rerun; an unknown allocation
    fails before any pretraining."""
    row = {"seed": 0, "budget": "4x", "criterion": "l1", "allocation": "greedy"}
    previous = {
        "rows": [row, row | {"allocation": "measured"}],
        "bases": [],
        "importance_seconds": [],
        "settling": [{"fraction": [1.0]}],
    }
    write_json(tmp_path / "setup.json", previous)
    found = {
        "rows": [row | {"finetuned_val": 0.5}],
        "bases": [],
        "importance_seconds": [],
        "settling": [],
    }
    merged = cifar.merge_rows(tmp_path / "setup.json", found, {0}, {"4x"}, {"l1"}, {"greedy"})
    assert merged["rows"] == [row | {"allocation": "measured"}, row | {"finetuned_val": 0.5}]
    assert merged["settling"] == previous["settling"]
    with pytest.raises(ValueError, match="unknown allocations \\['own'\\]; known: greedy"):
        cifar.run([cifar.SETUPS["cifar10-vgg16"]], tmp_path, allocations=["own"])  # a former name
    assert not (tmp_path / "cifar10-vgg16").exists()


def test_a_retrained_base_keeps_its_first_timing_and_a_new_one_its_own(tmp_path):
    """The same network trained again (bit-identical, timed on a busier machine) keeps the epoch
    time first recorded for its seed; a different network carries its own."""
    base = {"seed": 0, "test": 0.8669, "params": 270_000, "seconds_per_epoch": 56.3}
    write_json(tmp_path / "setup.json", {"rows": [], "bases": [base], "importance_seconds": []})
    for test, expected in ((0.8669, 56.3), (0.8512, 71.0)):
        again = base | {"test": test, "seconds_per_epoch": 71.0}
        found = {"rows": [], "bases": [again], "importance_seconds": []}
        merged = cifar.merge_rows(tmp_path / "setup.json", found, {0}, {"2x"}, {"l1"})
        assert [b["seconds_per_epoch"] for b in merged["bases"]] == [expected]
    # a newer run records more of the same network (its data sizes, its total time)
    again = base | {"seconds_per_epoch": 71.0, "seconds": 1420.0, "widths": "16-32-64"}
    found = {"rows": [], "bases": [again], "importance_seconds": []}
    merged = cifar.merge_rows(tmp_path / "setup.json", found, {0}, {"2x"}, {"l1"})
    assert merged["bases"] == [base | {"widths": "16-32-64"}]


@pytest.mark.parametrize("fixed_widths", [True, False])
def test_fixed_width_rows_are_replaced_or_kept_whole(tmp_path, fixed_widths):
    """A rerun with the fixed widths replaces their rows; without them, keeps the file's (a
    smoke-sized LeNet-300 run through the CIFAR runner)."""
    setup = compare.comparison_setup("lenet300", "mnist5k", (0.5, 0.5, 0.1), subset=500)
    setup = setup.replace(widths=("150-50",))
    old = {"seed": 0, "criterion": "l1", "allocation": "fixed", "budget": "150-50"}
    write_json(tmp_path / f"{setup.name}.json", {"rows": [old | {"finetuned_val": -1.0}]})
    done = cifar.run(
        [setup],
        tmp_path / "runs",
        criteria=("l1",),
        budgets=("4x",),
        results=tmp_path,
        fixed_widths=fixed_widths,
        allocations=("greedy", "fixed"),
        log=lambda _: None,
    )
    rows = done[setup.name]["rows"]
    assert sorted(r["allocation"] for r in rows) == ["fixed", "greedy"]
    fixed = next(r for r in rows if r["allocation"] == "fixed")
    assert (fixed["finetuned_val"] == -1.0) is not fixed_widths  # the file's row, kept


def test_a_network_gets_its_leads_table_once_it_was_pruned_to_a_budget():
    """cifar.md judges a network against its best peer where it was pruned to a budget (VGG-16
    at 2x, one seed), not where it was pruned to fixed widths alone."""
    folder = cifar.committed_results()
    vgg = read_json(folder / "cifar10-vgg16.json")
    fixed = vgg | {"rows": [r for r in vgg["rows"] if r["allocation"] == "fixed"]}
    sections = reports.cifar_markdown({"cifar10-vgg16": vgg, "fixed-vgg16": fixed}).split("\n## ")
    assert "Leads over the best peer" in sections[1] and "| cifar10-vgg16 | 2x |" in sections[1]
    # and at the same widths for all, the ranking alone: one case, each metric once
    assert "At the same widths" in sections[1] and "| after pruning | 1 |" in sections[1]
    assert fixed["rows"] and "Leads over the best peer" not in sections[2]


def test_bench_cifar_answers_a_bad_budget_or_name_with_a_usage_error(tmp_path):
    """``bench/cifar.py`` with an impossible budget or an unknown criterion stops at once with
    argparse's usage error (exit status 2, one line naming the fault), not a traceback."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "cifar.py"
    for arguments, fault in (
        (["--budgets", "0.5x"], "a ratio must be at least 1x"),
        (["--criteria", "dirichlet", "l0"], "unknown criteria ['l0']"),
    ):
        done = subprocess.run(
            [sys.executable, str(script), "--root", str(tmp_path), *arguments],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert "cifar.py: error: " in done.stderr and fault in done.stderr
    assert not list(tmp_path.iterdir()), "nothing is pretrained or written"
