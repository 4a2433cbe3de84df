"""Paths named inside data and checkpoint files stay inside the folder they are relative to.

An annotation file (Karpathy `filename`/`filepath`, COCO `file_name`) or a safetensors index
(`weight_map`) comes from elsewhere and names files relative to a root folder the user chose.
`safe_join` refuses any such name that could leave that root: an absolute path, a `..` component,
an empty name or a NUL byte. Every loader and the checkpoint index go through it.

The check is lexical, on purpose: symlinks *inside* the root are followed. A dataset folder often
links its image sub-folders to another disk, and the Hugging Face cache stores every shard as a link
into `blobs/`; refusing links would break both, and whoever can create a link inside the root already
controls the data. The untrusted part is the file that lists the names, and that is what is checked.
"""

from __future__ import annotations

import posixpath
from pathlib import Path, PurePosixPath, PureWindowsPath

from bench.errors import BenchError, DataError


def check_relative(rel: object, what: str, root: str | Path, error: type[BenchError] = DataError,
                   fix: str = "fix or remove the entry") -> str:
    """Return `rel` as a string when it is a relative path that stays inside `root`; raise `error`
    (one line naming `what`, the value, the root and `fix`) otherwise."""
    text = rel if isinstance(rel, str) else str(rel)
    if not text.strip():
        raise error(f"{what} is empty; it must name a file inside {root} ({fix})")
    if "\0" in text:
        raise error(f"{what} {text!r} contains a NUL byte; it must name a file inside {root} ({fix})")
    # A Windows drive or UNC path ('C:\\x', '\\\\server\\x') is not absolute on POSIX, but it is
    # never a legitimate name inside a dataset either.
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute():
        raise error(f"{what} is the absolute path {text!r}; it must be relative to {root} and stay inside "
                    f"it ({fix})")
    parts = text.replace("\\", "/").split("/")
    if ".." in parts:
        raise error(f"{what} {text!r} climbs out of its folder with '..'; it must stay inside {root} ({fix})")
    return text


def safe_join(root: str | Path, rel: object, what: str, error: type[BenchError] = DataError,
              fix: str = "fix or remove the entry") -> Path:
    """`root / rel` after `check_relative` (see the module docstring for what is refused and why)."""
    return Path(root) / check_relative(rel, what, root, error, fix)


def normalized(rel: str) -> str:
    """A relative name in one canonical spelling ('a//./b.jpg' -> 'a/b.jpg'), for spotting repeats."""
    return posixpath.normpath(rel)
