"""Run the kit's notebooks headless with papermill: the main job, ``make figures``.

``00_primer``, then ``01_pretrain``, ``02_importance`` and ``03_prune`` per experiment of a
profile, then ``04_figures``; executed copies go to ``runs/<profile>/notebooks/``, each renamed
into place when its run finished, beside a JSON stamp (the notebook's hash, its parameters and
inputs, the kit's code): an up-to-date notebook is not run again unless ``--force`` (the
stages inside reuse their artefacts, so a forced run of an unchanged experiment takes seconds
too; after a change to the kit's code each notebook runs again, and its stages rebuild only what
the changed modules made). Each notebook runs in a fresh kernel, started with the kit imported
while the notebook before it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ..data import DataNotFoundError, load_splits
from ..files import read_json, write_json
from . import paths, profiles
from .cache import code_version

PER_EXPERIMENT = ("01_pretrain", "02_importance", "03_prune")
DEFAULT_SECONDS = 60.0  # a notebook's duration before any has run (for the first estimate)


def plan(profile: str) -> list[tuple[str, dict[str, Any], Path]]:
    """(notebook, parameters, executed copy) in the order the main command runs them."""
    out = paths.profile_dir(profile) / "notebooks"
    steps = [("00_primer", {"profile": profile}, out / "00_primer.ipynb")]
    for dataset, model in profiles.experiments(profile):
        parameters = {"profile": profile, "dataset": dataset, "model": model}
        for name in PER_EXPERIMENT:
            steps.append((name, parameters, out / f"{dataset}-{model}" / f"{name}.ipynb"))
    steps.append(("04_figures", {"profile": profile}, out / "04_figures.ipynb"))
    return steps


def _inputs(name: str, parameters: dict[str, Any]) -> Any:
    """What a notebook's results depend on beyond its source and parameters: an experiment's
    resolved configuration (a changed default reruns it), ``00_primer``'s preset, or for
    ``04_figures`` the artefacts under ``runs/<profile>/`` and their times (new results redraw)."""
    profile = parameters["profile"]
    if name == "04_figures":
        root = paths.profile_dir(profile)
        listing = hashlib.sha256()
        for path in sorted(root.glob("*/*")):
            if path.parent.name not in ("notebooks", "figures") and not path.name.startswith("."):
                listing.update(f"{path.relative_to(root)} {path.stat().st_mtime_ns}\n".encode())
        return listing.hexdigest()[:12]
    if "dataset" in parameters:
        return profiles.resolve(**parameters).to_dict()
    return profiles.preset(profile)


def kit_code() -> str:
    """The :func:`~dplib.experiments.cache.code_version` of every module of ``dplib`` and
    ``dplib.experiments``: a changed statement anywhere in the kit makes every notebook stale."""
    package = Path(__file__).resolve().parent.parent
    names = [path.stem for path in package.glob("*.py")]
    names += [f"experiments.{path.stem}" for path in (package / "experiments").glob("*.py")]
    return code_version(*(name for name in names if not name.endswith("__init__")))


def run_notebook(
    name: str,
    parameters: dict[str, Any],
    output: Path,
    *,
    force: bool = False,
    kernels: Kernels | None = None,
):
    """Execute notebook ``name`` with papermill into ``output`` unless an identical run exists
    (False: reused), in a kernel of ``kernels`` (None: papermill starts one); the JSON beside it
    holds the stamp and how many seconds the run took."""
    import papermill

    source = paths.notebook_dir() / f"{name}.ipynb"
    stamp = {
        "notebook": hashlib.sha256(source.read_bytes()).hexdigest()[:12],
        "parameters": parameters,
        "inputs": _inputs(name, parameters),
        "code": kit_code(),
    }
    stamp = json.loads(json.dumps(stamp, sort_keys=True, default=str))
    done = output.with_suffix(".json")
    if not force and output.exists() and done.exists():
        with contextlib.suppress(ValueError, AttributeError):  # a damaged stamp: run again
            if read_json(done).get("stamp") == stamp:
                print(f"[dplib] {output}: up to date", flush=True)
                return False
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.stem}.running.ipynb")
    print(f"[dplib] running {name} {parameters} -> {output}", flush=True)
    started = time.perf_counter()
    options = {"kernel_name": "python3", "log_output": True, "progress_bar": False}
    kernel = kernels.take() if kernels is not None else None
    if kernel is not None:
        options["km"] = kernel
    else:
        options["kernel_manager_class"] = _kernel_manager()
    try:
        papermill.execute_notebook(
            str(source),
            str(temporary),
            parameters=parameters,
            cwd=str(paths.notebook_dir()),
            **options,
        )
    finally:
        if kernel is not None:
            asyncio.run(kernel.shutdown_kernel(now=True))
    os.replace(temporary, output)
    seconds = time.perf_counter() - started
    write_json(done, {"stamp": stamp, "seconds": seconds})
    print(f"[dplib] {name} finished in {seconds:.0f} s", flush=True)
    return True


def _kernel_manager() -> type:
    """A kernel manager that talks to the kernel over local sockets (ZeroMQ's IPC) instead of
    TCP: no port is opened, and ipykernel has no unencrypted-TCP warning to print into the log.
    ZeroMQ has no local sockets on Windows: there the kernel stays on TCP."""
    from jupyter_client.manager import AsyncKernelManager

    class LocalKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            # the sockets' path is absolute: the kernel runs in the notebooks' folder
            where = Path(tempfile.gettempdir()) / f"dplib-kernel-{uuid.uuid4().hex[:12]}"
            super().__init__(transport="ipc", ip=str(where), **kwargs)
            self.clients: list[Any] = []

        def client(self, **kwargs: Any) -> Any:
            self.clients.append(super().client(**kwargs))
            return self.clients[-1]

        async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
            # papermill leaves the client of a kernel it did not start listening, which logs
            # "Could not destroy zmq context" once collected: each notebook added a line
            for client in self.clients:
                client.stop_channels()
            await super().shutdown_kernel(now=now, restart=restart)

    return AsyncKernelManager if os.name == "nt" else LocalKernelManager


# What the notebooks import first (torch alone takes over a second), loaded into the next
# notebook's kernel while the one before it runs.
WARM_UP = "import IPython.display, matplotlib.pyplot, pandas, torch, dplib.experiments.publish"


class Kernels:
    """Kernels started one notebook ahead: while a notebook runs, a thread starts the next
    notebook's kernel and imports :data:`WARM_UP` into it, work that would otherwise hold up
    every notebook for about 4 s. Each notebook still gets a kernel of its own."""

    def __init__(self, notebooks: int) -> None:
        self.left = notebooks  # how many notebooks may still want a kernel
        self.warned = False
        self._starter = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._next: concurrent.futures.Future | None = None

    def take(self) -> Any:
        """A started kernel's manager (None when none could be started: papermill starts one),
        and the next notebook's kernel starting in the background."""
        started = self._next or self._start()
        self.left -= 1
        self._next = self._start() if self.left > 0 else None
        try:
            return started.result()
        except Exception as error:  # any failure: the notebook starts its own kernel, as before
            if not self.warned:
                print(f"[dplib] WARNING: no kernel started ahead ({error}); papermill starts them")
            self.warned = True
            return None

    def _start(self) -> concurrent.futures.Future:
        return self._starter.submit(lambda: asyncio.run(_warm_kernel()))

    def close(self) -> None:
        """Shut down a kernel started for a notebook that did not need it."""
        if self._next is not None and self._next.exception() is None:
            asyncio.run(self._next.result().shutdown_kernel(now=True))
        self._next = None
        self._starter.shutdown()


async def _warm_kernel() -> Any:
    """A kernel started in the notebooks' folder, with :data:`WARM_UP` imported."""
    kernel = _kernel_manager()(kernel_name="python3")
    await kernel.start_kernel(cwd=str(paths.notebook_dir()))
    client = kernel.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        client.execute(WARM_UP, silent=True, store_history=False)
        await client.get_shell_msg(timeout=120)
    except BaseException:
        await kernel.shutdown_kernel(now=True)  # no kernel is left behind
        raise
    finally:
        client.stop_channels()
    return kernel


def previous_seconds(output: Path) -> float | None:
    """How long the last complete run of this executed copy took (None: never ran)."""
    try:
        return float(read_json(output.with_suffix(".json"))["seconds"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _announce(index: int, steps: list[tuple[str, dict, Path]], elapsed: float, spent: list) -> None:
    """Stage n of N, the time elapsed and what is left: each remaining notebook's last duration,
    or the mean duration of this run's notebooks so far."""
    name, parameters, _ = steps[index]
    typical = sum(spent) / len(spent) if spent else DEFAULT_SECONDS
    left = sum(previous_seconds(output) or typical for _, _, output in steps[index:])
    where = f" of {parameters['dataset']}-{parameters['model']}" if "dataset" in parameters else ""
    print(
        f"[dplib] stage {index + 1}/{len(steps)}: {name}{where}; {elapsed:.0f} s elapsed, "
        f"about {left:.0f} s left",
        flush=True,
    )


def _missing_data(dataset: str) -> str | None:
    """Why ``dataset`` cannot be used here (None when it can); prints the offline-MNIST note and
    tells the notebooks' kernels, through ``$DPLIB_OFFLINE``, not to try the download again."""
    used, _, note = profiles.resolve_dataset(dataset)
    if note:
        print(f"[dplib] NOTE: {note}", flush=True)
        # the kernels inherit the answer: each would spend a second on the same failed download
        os.environ[profiles.OFFLINE_ENV] = "1"
    if used in ("mnist", "mnist5k"):
        return None  # resolve_dataset has just checked it
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            load_splits(used)
    except DataNotFoundError as error:
        return str(error)
    return None


def runnable(
    steps: list[tuple[str, dict, Path]], only: list[str] | None
) -> list[tuple[str, dict, Path]]:
    """The steps asked for (``--only``) whose data are here; says why one is skipped. A name in
    ``only`` that is no notebook or experiment of ``steps`` raises ValueError listing them."""
    names = {name for name, _, _ in steps}
    names |= {f"{p['dataset']}-{p['model']}" for _, p, _ in steps if "dataset" in p}
    unknown = sorted(set(only or ()) - names)
    if unknown:
        raise ValueError(f"--only {unknown}: not in this profile; choose from {sorted(names)}")
    chosen, noted = [], {}
    for name, parameters, output in steps:
        experiment = f"{parameters.get('dataset')}-{parameters.get('model')}"
        if only and name not in only and experiment not in only:
            continue
        dataset = parameters.get("dataset")
        if dataset and dataset not in noted:
            noted[dataset] = _missing_data(dataset)
        if dataset and noted[dataset]:
            print(f"[dplib] skipping {name} of {experiment}: {noted[dataset]}", flush=True)
            continue
        chosen.append((name, parameters, output))
    return chosen


def main(argv: list[str] | None = None) -> None:
    """``python -m dplib.experiments.runner [--profile cpu] [--only <experiment>] [--force]``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--profile", default=profiles.default_profile())
    parser.add_argument("--only", nargs="*", help="experiments (dataset-model) or notebook names")
    parser.add_argument("--force", action="store_true", help="run even when up to date")
    args = parser.parse_args(argv)
    try:
        profiles.check_profile(args.profile)
        steps = runnable(plan(args.profile), args.only)
    except ValueError as error:
        sys.exit(f"error: {error}")
    # the kernels inherit the environment: DPLIB_PROGRESS here, DPLIB_OFFLINE from runnable
    os.environ.setdefault("DPLIB_PROGRESS", "text")
    kernels = Kernels(len(steps))
    # papermill logs every cell's output at INFO: that is the run's log.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logging.getLogger("papermill").setLevel(logging.INFO)
    started = time.perf_counter()
    spent: list[float] = []
    try:
        for index, (name, parameters, output) in enumerate(steps):
            _announce(index, steps, time.perf_counter() - started, spent)
            clock = time.perf_counter()
            if run_notebook(name, parameters, output, force=args.force, kernels=kernels):
                spent.append(time.perf_counter() - clock)
    finally:
        kernels.close()
    elapsed = time.perf_counter() - started
    print(f"[dplib] profile {args.profile}: done in {elapsed:.0f} s", flush=True)
    print(f"[dplib] figures and results table in {paths.figures_dir(args.profile)}", flush=True)


if __name__ == "__main__":
    main()
