"""Refuse to fine-tune on images that a benchmark task evaluates (same path or same file content)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bench.data.refs import sha256_file
from bench.errors import ConfigError, DataError


def _content_hash(path: Path, cache: dict[Path, str]) -> str:
    key = path.resolve()
    if key not in cache:
        try:
            cache[key] = sha256_file(key)
        except OSError as e:
            raise DataError(f"cannot read image {path} for the leakage check: {e}") from None
    return cache[key]


def check_no_leakage(train_images: Iterable[str | Path], eval_images: Iterable[str | Path],
                     what: str = "fine-tuning") -> None:
    """ConfigError (exit 2) when a training image is also an evaluation image: same resolved path or
    same bytes (a copy under another name counts). Names how many training files overlap and the first."""
    train = [Path(p) for p in train_images]
    evals = [Path(p) for p in eval_images]
    if not train or not evals:
        return
    cache: dict[Path, str] = {}
    eval_paths = {p.resolve() for p in evals}
    # Only files of equal size can have equal content: hash just those (cheap on disjoint sets).
    eval_sizes: dict[int, list[Path]] = {}
    for p in evals:
        try:
            eval_sizes.setdefault(p.stat().st_size, []).append(p)
        except OSError as e:
            raise DataError(f"cannot read evaluation image {p} for the leakage check: {e}") from None
    eval_hashes: dict[str, Path] = {}
    overlap: list[tuple[Path, Path]] = []
    for p in train:
        if p.resolve() in eval_paths:
            overlap.append((p, p))
            continue
        try:
            size = p.stat().st_size
        except OSError as e:
            raise DataError(f"cannot read training image {p} for the leakage check: {e}") from None
        if size not in eval_sizes:
            continue
        for q in eval_sizes.pop(size):
            eval_hashes.setdefault(_content_hash(q, cache), q)
        eval_sizes[size] = []  # hashed: keep the size known
        match = eval_hashes.get(_content_hash(p, cache))
        if match is not None:
            overlap.append((p, match))
    if overlap:
        first, other = overlap[0]
        same = "" if first == other else f" (same content as evaluated image {other})"
        raise ConfigError(f"{what}: {len(overlap)} training image file(s) are also evaluated by the "
                          f"benchmark (leakage); first: {first}{same}. Train on images the tasks do not "
                          f"evaluate")
