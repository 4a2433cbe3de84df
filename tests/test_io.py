"""bench.io, the one atomic writer: no half file after a failure, permissions from the umask, fsync
before the rename, and OS errors as one-line OutputErrors naming the target."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

import bench.io
from bench.errors import OutputError
from bench.io import atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic

FULL = "it is on a full disk (no space left on device); free some space, or write the outputs to another disk"


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_creates_folders_and_returns_the_path(tmp_path):
    target = tmp_path / "a" / "b" / "x.txt"
    assert write_text_atomic(target, "héllo\n") == target
    assert target.read_bytes() == "héllo\n".encode()
    assert write_bytes_atomic(tmp_path / "y.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    # A lone surrogate (a broken label) is replaced, not fatal.
    assert write_text_atomic(tmp_path / "s.txt", "a\udcffb").read_text() == "a?b"
    assert _files(tmp_path) == ["a", "s.txt", "y.bin"]  # no temporary file left next to them


def test_json_converts_numpy_and_paths(tmp_path):
    p = write_json_atomic(tmp_path / "x.json", {"a": np.float32(1.5), "b": np.arange(3), "c": Path("/p"),
                                                "d": np.int64(7)})
    text = p.read_text()
    assert text.endswith("}\n") and json.loads(text) == {"a": 1.5, "b": [0, 1, 2], "c": "/p", "d": 7}
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        write_json_atomic(tmp_path / "bad.json", {"x": object()})
    assert _files(tmp_path) == ["x.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_permissions_follow_the_umask_not_mkstemp(tmp_path, monkeypatch, umask, mode):
    monkeypatch.setattr(bench.io, "_UMASK", umask)
    assert (write_text_atomic(tmp_path / "t.txt", "x").stat().st_mode & 0o777) == mode
    with atomic_path(tmp_path / "p.bin") as tmp:
        Path(tmp).write_bytes(b"y")
    assert (tmp_path / "p.bin").stat().st_mode & 0o777 == mode


def test_fsync_before_the_rename_unless_asked_not_to(tmp_path, monkeypatch):
    synced: list[bool] = []  # for each fsync: did the target already exist (it must not)?
    target = tmp_path / "t.txt"
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(target.exists()), real(fd))[1])
    write_text_atomic(target, "x")
    assert synced == [False]
    target.unlink()
    write_text_atomic(target, "x", fsync=False)
    with atomic_path(tmp_path / "p", fsync=False) as tmp:
        Path(tmp).write_text("y")
    assert synced == [False]


def test_disk_full_mid_write_keeps_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")

    def half_then_full(fd, data):
        os.write(fd, data[: len(data) // 2])
        os.close(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bench.io, "_write_all", half_then_full)
    with pytest.raises(OutputError) as e:
        write_json_atomic(target, {"new": "x" * 1000})
    assert str(e.value) == f"cannot write {target}: {FULL}"
    assert target.read_text() == "old" and _files(tmp_path) == ["results.json"]
    # map_errors=False: the caller words it (the cache does); still no half file.
    with pytest.raises(OSError) as raw:
        write_text_atomic(target, "new", map_errors=False)
    assert not isinstance(raw.value, OutputError) and raw.value.errno == errno.ENOSPC
    assert target.read_text() == "old" and _files(tmp_path) == ["results.json"]


def test_atomic_path_failures(tmp_path):
    from safetensors import SafetensorError

    target = tmp_path / "x.safetensors"
    target.write_bytes(b"old")
    # A writer's own failure: the temporary file is removed and the exception is the writer's.
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and _files(tmp_path) == ["x.safetensors"]
    # safetensors' wrapped OS error is worded like an OSError.
    with pytest.raises(OutputError) as e, atomic_path(target) as tmp:
        Path(tmp).write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert str(e.value) == f"cannot write {target}: {FULL}"
    assert target.read_bytes() == b"old" and _files(tmp_path) == ["x.safetensors"]


def test_a_file_where_the_folder_should_be(tmp_path):
    (tmp_path / "f").write_text("a file")
    for write in (lambda p: write_text_atomic(p, "x"), lambda p: atomic_path(p).__enter__()):
        with pytest.raises(OutputError) as e:
            write(tmp_path / "f" / "x.json")
        msg = str(e.value)
        assert msg.startswith(f"cannot write {tmp_path / 'f' / 'x.json'}: it ") and "\n" not in msg
        assert "file" in msg and msg.endswith("check the path and its permissions")
    assert _files(tmp_path) == ["f"]


def test_the_package_has_one_writer():
    """No module but bench.io makes temporary files to rename over a target (the four writers of old)."""
    root = Path(bench.io.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "io.py" and "os.replace(" in p.read_text()]
    assert offenders == []
