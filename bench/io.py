"""The one atomic file writer of the package: a temporary file in the target's folder, then a rename.

A killed run or a full disk never leaves a half-written file under the final name: readers see the
old file or the new one. Every writer here

- creates the target's folder if missing;
- gives the file the permissions a plain `open()` would (0666 minus the umask; mkstemp's 0600 would
  make results and reports unreadable to the rest of a team);
- flushes the data to the disk (fsync) before the rename, unless `fsync=False` (the embedding cache,
  whose shards carry checksums and are recomputed when damaged, skips it for speed);
- removes the temporary file on any failure, and turns an OS error (read-only folder, a file in the
  way, full disk; safetensors' wrapped ones too) into a one-line OutputError naming the target
  (bench.outputs has the wording), unless `map_errors=False` (the caller maps them itself).

`write_text_atomic`, `write_json_atomic` and `write_bytes_atomic` write what they are given;
`atomic_path` is for writers that want a file name (safetensors, numpy): they write the yielded
temporary path, and it replaces the target when the block ends without an exception.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def _is_os_error(e: BaseException) -> bool:
    return isinstance(e, OSError) or type(e).__name__ == "SafetensorError"


def _mkstemp(path: Path, map_errors: bool) -> tuple[int, str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        if not map_errors:
            raise
        from bench.outputs import output_error

        raise output_error(path, e) from None


def _finish(tmp: str, path: Path, fsync: bool) -> None:
    """Permissions, data on disk, then the rename (the one step readers can observe)."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    if fsync:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True, map_errors: bool = True) -> Iterator[str]:
    """Yield a temporary file name next to `path`; on a clean exit it becomes `path` atomically.

    For writers that need a file name (`safetensors.torch.save_file(t, tmp)`, `np.savez(tmp, ...)`).
    On any exception the temporary file is removed; an OS error (or SafetensorError) becomes an
    OutputError naming `path` when `map_errors`.
    """
    path = Path(path)
    fd, tmp = _mkstemp(path, map_errors)
    os.close(fd)
    try:
        yield tmp
        _finish(tmp, path, fsync)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if map_errors and _is_os_error(e):
            from bench.outputs import output_error

            raise output_error(path, e) from None
        raise


def write_bytes_atomic(path: str | Path, data: bytes, *, fsync: bool = True, map_errors: bool = True) -> Path:
    """Write `data` to `path` atomically (see the module docstring); return `path`."""
    path = Path(path)
    fd, tmp = _mkstemp(path, map_errors)
    try:
        _write_all(fd, data)
        _finish(tmp, path, fsync)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if map_errors and isinstance(e, OSError):
            from bench.outputs import output_error

            raise output_error(path, e) from None
        raise
    return path


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte to `fd` and close it (closed on failure too)."""
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | Path, text: str, *, fsync: bool = True, map_errors: bool = True) -> Path:
    """UTF-8 text written atomically. errors="replace": a stray lone surrogate in some label must not
    lose a finished run's report."""
    return write_bytes_atomic(path, text.encode("utf-8", errors="replace"), fsync=fsync, map_errors=map_errors)


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 2, fsync: bool = True,
                      map_errors: bool = True) -> Path:
    """JSON (indented, numpy values and paths converted) written atomically, with a final newline."""
    text = json.dumps(data, indent=indent, sort_keys=False, default=json_default)
    return write_text_atomic(path, text + "\n", fsync=fsync, map_errors=map_errors)


def json_default(o: Any) -> Any:
    """`json.dumps(default=...)` for the values bench writes besides JSON's own: paths and numpy."""
    if isinstance(o, Path):
        return str(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def replace_dir(tmp: str | Path, path: str | Path) -> Path:
    """Swap a fully written folder `tmp` in as `path` (the old one, if any, is moved aside first and
    removed after), so readers see the old folder or the new one, never a half-written one."""
    import shutil

    tmp, path = Path(tmp), Path(path)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path
