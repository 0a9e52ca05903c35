import os
import stat

import pytest

from dplib.files import atomic_path, atomic_write


def test_atomic_write_replaces_the_whole_file(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    atomic_write(target, lambda stream: stream.write(b"first"))
    atomic_write(target, lambda stream: stream.write(b"second"))
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["a.bin"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def broken(stream):
        stream.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]
    with pytest.raises(KeyError), atomic_path(tmp_path / "b.txt") as temporary:
        temporary.write_text("never seen")
        raise KeyError("stop")
    assert os.listdir(tmp_path) == ["a.txt"]
