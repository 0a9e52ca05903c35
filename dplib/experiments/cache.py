"""One caching helper for every stage of the kit's experiments.

An artefact is a file (a checkpoint, an importance, a results row) with a JSON beside it that
holds the configuration that produced it (``"config"``) and what the stage measured. Both are
written atomically (a temporary file, then a rename), the JSON last, so a run killed at any
moment leaves only complete artefacts. :func:`cached` reuses an artefact when its JSON holds the
same configuration and its file reads back; anything else (missing, truncated, corrupt, another
configuration) is rebuilt, with one line in the log saying why.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..files import read_json, write_json

T = TypeVar("T")
Log = Callable[[str], None]


def log_line(message: str) -> None:
    """The experiments' log: one line on stdout (papermill copies it into its log)."""
    print(f"[dplib] {message}", flush=True)


def config_hash(config: Any) -> str:
    """A short, stable hash of a JSON-able configuration (10 hex digits)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), to compare with a stored one."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass
class Cached(Generic[T]):
    """A stage's result: the ``value``, its JSON ``meta`` (``config`` and measurements), where it
    is stored and whether it was reused."""

    value: T
    meta: dict[str, Any]
    path: Path
    reused: bool


def cached(
    path: str | Path,
    config: Any,
    build: Callable[[], tuple[T, dict[str, Any]]],
    *,
    save: Callable[[T, Path], Any] | None = None,
    load: Callable[[Path, dict[str, Any]], T] | None = None,
    log: Log = log_line,
) -> Cached[T]:
    """Reuse the artefact at ``path`` made with ``config``, or ``build`` and store it.

    Args:
        path: the artefact's file. With ``save``/``load`` it holds the value (a checkpoint, an
            importance) and its JSON is ``path`` with the suffix ``.json``; without them the
            artefact is that JSON alone and the value is what ``build`` measured.
        config: what the result depends on (JSON-able); a different one rebuilds.
        build: computes ``(value, measurements)``; the measurements go into the JSON.
        save, load: write the value to a path (atomically); read it back from the path and the
            JSON (raising
            ``FileNotFoundError``/``ValueError``/``RuntimeError`` on a damaged file).
    """
    path = Path(path)
    meta_path = path.with_suffix(".json") if save is not None else path
    meta = _readable_meta(meta_path, log)
    if meta is not None and meta.get("config") == _as_json(config):
        try:
            value = load(path, meta) if load is not None else meta["result"]
            return Cached(value, meta, path, True)
        except (FileNotFoundError, ValueError, RuntimeError, KeyError) as error:
            log(f"cannot reuse {path.name}: {type(error).__name__}: {error} -- rebuilding it")
    value, measured = build()
    if save is not None:
        save(value, path)
        meta = {"config": config, **measured}
    else:
        meta = {"config": config, "result": measured}
        value = _as_json(measured)
    write_json(meta_path, meta)
    return Cached(value, _as_json(meta), path, False)


def _readable_meta(path: Path, log: Log) -> dict[str, Any] | None:
    """The JSON of a finished stage, or None (missing or unreadable: the stage runs)."""
    if not path.exists():
        return None
    try:
        return read_json(path)
    except ValueError as error:
        log(f"{error}")
        return None
