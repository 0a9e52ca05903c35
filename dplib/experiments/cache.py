"""One caching helper for every stage of the kit's experiments.

An artefact is a file (a checkpoint, an importance, a results row) with a JSON beside it that
holds the configuration that produced it (``"config"``) and what the stage measured, both
written atomically and the JSON last, so a run killed at any moment leaves only complete
artefacts. :func:`cached` reuses an artefact when its JSON holds the same configuration and its
file reads back; anything else is rebuilt (a damaged one with a line in the log saying why).
Each stage's configuration holds the :func:`code_version` of the method modules it runs, so a
changed statement in them rebuilds what they made (a changed comment or docstring does not).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
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


def code_version(*modules: str) -> str:
    """A short hash of what the ``dplib`` modules named ``modules`` (e.g. ``"vi"``) do (10 hex
    digits): their syntax trees without docstrings, so that an edited statement changes it and an
    edited comment, docstring or layout does not."""
    return config_hash([_code_of(name) for name in sorted(modules)])


@functools.cache
def _code_of(name: str) -> str:
    module = importlib.import_module(f"dplib.{name}")
    tree = ast.parse(inspect.getsource(module))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]):
            node.body = body[1:] or [ast.Pass()]
    return f"{name}:{ast.dump(tree)}"


def _is_docstring(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), to compare with a stored one."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass
class Cached(Generic[T]):
    """A stage's ``value``, its JSON ``meta`` (config, measurements), ``path``, ``reused``."""

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
    """Reuse the artefact at ``path`` made with ``config`` (JSON-able), or ``build`` it.

    ``build`` returns ``(value, measurements)``; the measurements go into the JSON. With
    ``save``/``load`` (write the value to a path atomically; read it back from the path and the
    JSON, raising FileNotFoundError, ValueError or RuntimeError on a damaged file) the JSON is
    ``path`` with the suffix ``.json``; without them the artefact is the JSON at ``path`` alone
    and the value is what ``build`` measured.
    """
    path = Path(path)
    meta_path = path.with_suffix(".json") if save is not None else path
    meta = None  # missing or unreadable: the stage runs
    if meta_path.exists():
        try:
            meta = read_json(meta_path)
        except ValueError as error:
            log(f"{error}")
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
