"""Writing files so that a reader never sees half of one, and reading them back.

Every file the kit writes goes to a temporary name in the target's folder, renamed onto the
target once complete: a rename within one folder is atomic, so a reader finds the old file or
the whole new one, and a run killed mid-write leaves at most a hidden ``.<name>.*.tmp`` behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on an
    exception remove it (``path`` is left as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    os.chmod(temporary, 0o644)  # mkstemp makes files private; these are ordinary shared files
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(stream)`` on a binary stream that becomes ``path`` once complete."""
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        write(stream)
        stream.flush()
        os.fsync(stream.fileno())
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically: never half a file."""
    return atomic_write(path, lambda stream: torch.save(obj, stream))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    return atomic_write(path, lambda stream: stream.write(text.encode()))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON with sorted keys, atomically."""
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a corrupt one raises ValueError naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); it will be rebuilt") from error


def read_torch_file(
    path: str | os.PathLike,
    file_format: str,
    what: str,
    *,
    error: type[Exception] = ValueError,
    weights_only: bool = True,
) -> dict:
    """Load a dict written by ``torch.save`` whose ``"format"`` entry is ``file_format``; a
    FileNotFoundError, or ``error`` for a file unreadable (truncated, corrupt) or of another kind
    (the message says deleting it lets the stage that writes it run again)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as failure:  # unpickling a damaged file raises almost any type
        raise error(
            f"{path} is not a readable {what} ({type(failure).__name__}: {failure}). It may be "
            "truncated or corrupt: delete it and run the stage that writes it again."
        ) from failure
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        raise error(f"{path} is not a dplib {what} (format {file_format})")
    return payload
