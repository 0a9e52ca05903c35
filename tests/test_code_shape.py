"""The shape of the code: one loop that never waits on the device, short functions, one path.

These guard what a later change could quietly undo: a host read inside the step loop (a GPU
then waits for the host at every batch), a function too long to read on one screen, a second
copy of training in the experiment machinery.
"""

from __future__ import annotations

import ast
import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import dplib

PACKAGE = Path(dplib.__file__).resolve().parent
DISTRIBUTIONS = Path(torch.distributions.__file__).resolve().parent
# the Tensor methods that copy a value from the device to the host (and so wait for it)
READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__")


@contextmanager
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Count the host reads made by dplib's code and by torch.distributions (whose argument
    checks read a value back); torch.optim's are not counted: Adam's step counter is a CPU
    tensor even on a GPU, so reading it never waits for the device."""
    seen: list[str] = []
    with monkeypatch.context() as patch:
        for name in READS:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, _name=name, **kwargs):
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith((str(PACKAGE), str(DISTRIBUTIONS))):
                    seen.append(f"{_name} in {Path(caller).name}")
                return _original(self, *args, **kwargs)

            patch.setattr(torch.Tensor, name, counted)
        yield seen


def _loader(images: int) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(0)
    dataset = torch.utils.data.TensorDataset(
        torch.randn(images, 1, 28, 28, generator=generator),
        torch.randint(0, 10, (images,), generator=generator),
    )
    return dplib.data.make_loader(dataset, 32, shuffle=True, seed=0)


@pytest.mark.parametrize("loop", ["fit", "learn_importance"])
def test_host_reads_do_not_grow_with_the_number_of_steps(loop, monkeypatch):
    val = _loader(64)
    counts = {}
    for images in (128, 640):  # 4 and 20 steps per epoch, two epochs each
        model = dplib.models.build("lenet5_bn", seed=0)
        with host_reads(monkeypatch) as seen:
            if loop == "fit":
                dplib.fit(model, _loader(images), epochs=2, val_loader=val, device="cpu")
            else:
                gated = dplib.attach_gates(model)
                dplib.learn_importance(gated, _loader(images), epochs=2, device="cpu")
        counts[images] = sorted(seen)
    assert counts[128] == counts[640], (len(counts[128]), len(counts[640]))
    phases = 4 if loop == "learn_importance" else 1  # the default learns one layer at a time
    assert len(counts[128]) < 40 * phases  # a few per epoch and at the end, not per step


def test_no_function_of_the_method_is_longer_than_a_screen():
    long = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if ast.get_docstring(node):
                    lines -= node.body[0].end_lineno - node.body[0].lineno + 1
                if lines > 50:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_the_two_loops_take_a_handful_of_parameters():
    for function in (dplib.fit, dplib.learn_importance):
        assert len(inspect.signature(function).parameters) <= 8, function.__name__
    # the allocation's knobs live with its rules (dplib.budget.RULES), not in the call
    assert len(inspect.signature(dplib.choose_widths).parameters) <= 6


def test_one_training_path_in_the_experiment_machinery():
    # pretraining and fine-tuning: the only two (module-level) functions of dplib.experiments
    # that call fit
    callers = []
    for path in sorted((PACKAGE / "experiments").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef):
                calls = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
                if any(getattr(call.func, "id", None) == "fit" for call in calls):
                    callers.append(f"{path.stem}.{node.name}")
    assert len(callers) == 2, callers  # one pretraining, one fine-tuning
    assert {caller.split(".")[0] for caller in callers} == {"experiment"}, callers
