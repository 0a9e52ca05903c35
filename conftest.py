"""pytest at the kit's root: notebooks collected by nbval run the smoke profile.

The kernels nbval starts inherit this process's environment, so the notebooks' ``parameters``
cells read ``DPLIB_PROFILE=smoke`` even under a plain ``pytest`` (``make test`` sets it too),
and they cache into a fresh folder of their own: a test never reuses what an earlier run (or an
earlier version of the code) left in ``runs/``.
"""

import os
import tempfile

os.environ.setdefault("DPLIB_PROFILE", "smoke")
os.environ.setdefault("DPLIB_PROGRESS", "off")
os.environ.setdefault("DPLIB_RUNS", tempfile.mkdtemp(prefix="dplib-test-runs-"))


def pytest_collection_modifyitems(items):
    """The notebooks (nbval) are slow tests: ``make quick`` leaves them out."""
    import pytest

    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
