"""Where runs and figures live, and how artefacts are written and recognised.

Paths are resolved from the package's location (the kit's root), never from the current
directory, so a notebook finds ``runs/`` and ``figures/`` wherever it is opened.

An artefact is a file whose name carries the hash of the configuration that produced it, with a
JSON beside it. Both are written atomically (a temporary file, then a rename) and the JSON last:
a stage whose JSON exists and whose files read back is complete and is reused; anything else
(missing, truncated, corrupt, another configuration) is rebuilt, with one line in the log.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .files import atomic_write

RUNS_ENV = "DPLIB_RUNS"
FIGURES_ENV = "DPLIB_FIGURES"


def kit_root() -> Path:
    """The kit's root folder (the one holding ``dplib/``, ``notebooks/``, ``runs/``)."""
    return Path(__file__).resolve().parent.parent


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


def config_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-able configuration (10 hex digits)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (:mod:`dplib.files`)."""
    return atomic_write(path, lambda stream: stream.write(text.encode()))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a corrupt one raises ValueError naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); it will be rebuilt") from error
