"""Where the kit's runs and figures live.

Paths are resolved from the package's location (the kit's root), never from the current
directory, so a notebook finds ``runs/`` and ``figures/`` wherever it is opened.
"""

from __future__ import annotations

import os
from pathlib import Path

RUNS_ENV = "DPLIB_RUNS"
FIGURES_ENV = "DPLIB_FIGURES"


def kit_root() -> Path:
    """The kit's root folder (the one holding ``dplib/``, ``notebooks/``, ``runs/``)."""
    return Path(__file__).resolve().parents[2]


def runs_root() -> Path:
    """``$DPLIB_RUNS`` if set, else ``<kit>/runs``."""
    return Path(os.environ.get(RUNS_ENV) or kit_root() / "runs")


def profile_dir(profile: str) -> Path:
    """``runs/<profile>/``."""
    return runs_root() / profile


def figures_dir(profile: str) -> Path:
    """Where ``04_figures`` writes: ``<kit>/figures`` for the cpu profile (committed), else
    ``runs/<profile>/figures`` (``$DPLIB_FIGURES`` overrides both)."""
    if os.environ.get(FIGURES_ENV):
        return Path(os.environ[FIGURES_ENV])
    return kit_root() / "figures" if profile == "cpu" else profile_dir(profile) / "figures"


def notebook_dir() -> Path:
    """The kit's ``notebooks/`` folder."""
    return kit_root() / "notebooks"
