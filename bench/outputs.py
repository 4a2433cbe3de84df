"""Output folders the user names (output_dir, cache_dir, `bench run --out`, `bench embed --output`):
checked before any expensive work, and OS errors on them turned into one-line OutputErrors.

A run that loads models and embeds for minutes and then cannot write its results has wasted those
minutes; `check_writable_dir` finds a read-only folder, a file where a folder should be, or a full
disk in milliseconds, by writing (and removing) a small probe file where the outputs will go.
Permission bits are not consulted: root ignores them, and a read-only mount or a full disk does
not show in them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path

from bench.errors import OutputError

# What each errno means for a folder or file the user asked bench to write.
_REASONS = {
    errno.EROFS: "is on a read-only file system",
    errno.EACCES: "is not writable (permission denied)",
    errno.EPERM: "is not writable (operation not permitted)",
    errno.ENOSPC: "is on a full disk (no space left on device)",
    errno.EDQUOT: "is over its disk quota",
    errno.ENOTDIR: "is under a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EEXIST: "exists as a file where a folder is needed",
    errno.ENAMETOOLONG: "has a name that is too long",
    errno.EFBIG: "would exceed the file size limit",
}
# Large enough to need a data block (a full disk usually still lets an empty file be created).
_PROBE = b"\0" * 4096
# safetensors reports OS errors inside its own exception type: "... (os error 28) at path "..."".
_SAFETENSORS_OS = re.compile(r"\(os error (\d+)\)(?: at path \"([^\"]*)\")?")


def reason(e: OSError) -> str:
    """A short phrase for an OSError on a user-named path ('is on a read-only file system')."""
    return _REASONS.get(e.errno or 0, f"cannot be written ({e.strerror or e})")


def check_writable_dir(path: str | Path, what: str, fix: str) -> Path:
    """Raise OutputError unless files can be written in folder `path` (created later if missing).

    `what` names the setting ("output_dir", "--out", ...), `fix` says what to do. Looks at the
    nearest existing folder (a missing folder will be created in it), so nothing is created here;
    the probe file is removed again.
    """
    path = Path(path)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file, not a folder" if existing == path else f"cannot be created: {existing} is a file"
        raise OutputError(f"{what} {path} {where}; {fix}")
    failed: OSError | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=existing, prefix=".bench-write-check-")
    except OSError as e:
        failed, tmp = e, None
    if tmp is not None:
        try:
            try:
                os.write(fd, _PROBE)
            finally:
                os.close(fd)
        except OSError as e:
            failed = e
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    if failed is not None:
        where = (reason(failed) if existing == path else
                 f"cannot be written: its nearest existing folder {existing} {reason(failed)}")
        raise OutputError(f"{what} {path} {where}; {fix}")
    return path


def output_error(path: str | Path, e: BaseException) -> OutputError:
    """The OutputError for an OSError (or safetensors' wrapped one) raised while writing `path`."""
    code = _errno_of(e)
    if code in _REASONS:
        why = f"it {_REASONS[code]}"
    else:
        why = (e.strerror if isinstance(e, OSError) else None) or str(e)
    return OutputError(f"cannot write {path}: {why}; {_hint(code)}")


def _hint(code: int | None) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "free some space, or write the outputs to another disk"
    if code == errno.EROFS:
        return "write the outputs to a writable folder"
    return "check the path and its permissions"


def _errno_of(e: BaseException) -> int | None:
    if isinstance(e, OSError):
        return e.errno
    m = _SAFETENSORS_OS.search(str(e)) if type(e).__name__ == "SafetensorError" else None
    return int(m.group(1)) if m else None


def os_error_line(e: BaseException) -> str | None:
    """One line for an OS error that a user's path or disk caused (the CLI's safety net), else None.

    Covers OSError and safetensors' SafetensorError wrapping one ("... (os error 28) at path ...").
    Errors outside the table (a missing internal file, a broken pipe) return None: they are bugs or
    not the user's, and keep their traceback.
    """
    code = _errno_of(e)
    if isinstance(e, OSError):
        filename = e.filename
    else:
        m = _SAFETENSORS_OS.search(str(e))
        filename = m.group(2) if m else None
    if code not in _REASONS:
        return None
    text = os.strerror(code)
    return f"{filename}: {text}; {_hint(code)}" if filename else f"{text}; {_hint(code)}"


def check_run_outputs(output_dir: str | Path, cache_dir: str | Path, out: str | Path | None,
                      use_cache: bool) -> None:
    """`bench run`'s folders, before any work: the run folder's parent (or --out) and the cache."""
    if out is not None:
        check_writable_dir(out, "--out", "pass a folder you can write to")
    else:
        check_writable_dir(output_dir, "output_dir", "set output_dir in the config to a folder you can write to")
    if use_cache:
        check_writable_dir(cache_dir, "cache_dir", "set cache_dir in the config to a folder you can write to, "
                           "or run with --no-cache")
