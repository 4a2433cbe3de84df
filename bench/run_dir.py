"""Run folders: created exclusively (never shared by two runs), and what a failed run leaves there."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from bench.io import write_json_atomic


def allocate_run_dir(output_dir: Path, base: str) -> tuple[str, Path]:
    """Create <output_dir>/<base> exclusively, or <base>-2, -3, ... when taken (two runs of one
    config in the same second); return (run id, folder). Exclusive mkdir: never shared by two runs."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        run_id = base if n == 1 else f"{base}-{n}"
        try:
            (output_dir / run_id).mkdir()
            return run_id, output_dir / run_id
        except FileExistsError:
            n += 1


def record_failure(out_dir: Path, made: bool, finished: int, exc: BaseException,
                   log: Callable[[str], None]) -> None:
    """A run that failed before any embedder finished leaves no folder behind (when it made it and it
    is empty); one that failed later keeps results.json of the finished embedders, complete: false, and
    the error in one line for `bench report` and `bench compare`."""
    if not finished:
        if made:
            with contextlib.suppress(OSError):  # not empty (someone else's files): leave it
                out_dir.rmdir()
        return
    lines = str(exc).strip().splitlines()
    error = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    path = out_dir / "results.json"
    with contextlib.suppress(OSError, ValueError):  # the failure may be the disk itself: the last write stays
        write_json_atomic(path, {**json.loads(path.read_text()), "complete": False, "error": error[:500]})
    log(f"run failed after {finished} embedder(s) finished; their results are kept in {path} "
         "(complete: false)")
