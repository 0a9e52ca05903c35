"""Progress bars that read well in a terminal, in JupyterLab and in papermill logs.

In a Jupyter kernel the bar is a widget (no stderr box in JupyterLab); elsewhere, or with
``DPLIB_PROGRESS=text`` (papermill runs), plain text on stdout, redrawn at most every few
seconds so a log stays short. ``DPLIB_PROGRESS=off`` or ``with hidden():`` hides the bars.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

PROGRESS_ENV = "DPLIB_PROGRESS"
_hidden = False


@contextmanager
def hidden() -> Iterator[None]:
    """No progress bar inside the block."""
    global _hidden
    saved, _hidden = _hidden, True
    try:
        yield
    finally:
        _hidden = saved


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def progress(*, total: int, desc: str = "") -> tqdm:
    """A tqdm bar of ``total`` steps suited to where the code runs (see the module docstring)."""
    style = os.environ.get(PROGRESS_ENV, "auto")
    disable = style == "off" or _hidden
    if style == "auto" and _in_kernel():
        try:
            from tqdm.notebook import tqdm as notebook_tqdm

            return notebook_tqdm(total=total, desc=desc, disable=disable, leave=False)
        except ImportError:
            pass
    interactive = style != "text" and sys.stdout.isatty()
    return tqdm(
        total=total,
        desc=desc,
        disable=disable,
        file=sys.stdout,
        mininterval=0.1 if interactive else 10.0,
        ascii=not interactive,
        dynamic_ncols=interactive,
        ncols=None if interactive else 80,
    )
