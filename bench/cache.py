"""Embeddings on disk, keyed by fingerprints of the model, the preprocessing and the data.

Layout: <cache_dir>/<key>/shard_00000.safetensors ... + meta.json (written last = complete).
Embedding proceeds in shards of `shard_size` items, each written atomically (temporary file +
rename), so a killed run never leaves a corrupt file and a rerun resumes at the first missing
shard: no finished work is lost.

Every shard carries a checksum of its content (dtype, shape and tensor bytes) in its safetensors
metadata, and every read verifies it and that all values are finite: a shard that fails (flipped
bytes, truncation, NaN/Inf, unreadable) is logged in one warning line, deleted and recomputed, never
served. The checksum is xxh3-64 (xxhash): ~15 GB/s, about a fifth of the cost of reading the shard,
where zlib.crc32 costs as much as the read (benchmarks/bench_cache.py measures both). It guards
against accidents (disk, copy, a stray write), not an attacker who can write the cache folder.
Shards written before checksums existed have none: they are treated as a miss and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.io import atomic_path, write_text_atomic

CACHE_VERSION = 1
CHECKSUM_KEY = "checksum"
CHECKSUM_ALGO = "xxh3_64"

log = logging.getLogger(__name__)


def cache_key(embedder_fp: dict[str, Any], data_fp: str, modality: str) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "embedder": embedder_fp, "data": data_fp, "modality": modality},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def content_checksum(tensor) -> str:
    """"xxh3_64:<hex>" over dtype, shape and the raw bytes of a contiguous CPU tensor."""
    import xxhash

    h = xxhash.xxh3_64(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    if tensor.numel():
        h.update(memoryview(tensor.numpy()).cast("B"))
    return f"{CHECKSUM_ALGO}:{h.hexdigest()}"


def all_finite(tensor) -> bool:
    """True when no value is NaN or +-Inf. A float32 dot product of the values with themselves is
    finite only if every value is (NaN and Inf propagate, squares never cancel) and costs a quarter
    of torch.isfinite().all(); only when it overflows (values beyond ~1e19) is the exact test run."""
    import numpy as np

    a = tensor.numpy().ravel()
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.dot(a, a))) or bool(np.isfinite(a).all())


class EmbeddingCache:
    def __init__(self, root: str | Path, enabled: bool = True) -> None:
        self.root = Path(root)
        self.enabled = enabled

    def _dir(self, key: str) -> Path:
        return self.root / key

    def get_or_compute(self, key: str, n_items: int, compute: Callable[[int, int], Any],
                       shard_size: int = 1024, describe: dict[str, Any] | None = None,
                       on_progress: Callable[[int], None] | None = None):
        """Return ([n_items, dim] float32 tensor, "hit"|"partial"|"miss").

        `compute(start, stop)` embeds items [start, stop) and returns a float32 tensor. Every cached
        shard is verified before use (see the module docstring); one that fails is recomputed.
        """
        import torch

        if not self.enabled:
            return compute(0, n_items), "off"
        d = self._dir(key)
        meta_path = d / "meta.json"
        d.mkdir(parents=True, exist_ok=True)
        shards, parts, loaded, computed, legacy = [], [], 0, 0, 0
        for i, start in enumerate(range(0, n_items, shard_size)):
            stop = min(start + shard_size, n_items)
            name = f"shard_{i:05d}.safetensors"
            path = d / name
            emb, why = read_shard(path, stop - start)
            if why == "legacy":
                legacy += 1
            elif why:
                log.warning("cache: discarding shard %s (%s); recomputing it", path, why)
                path.unlink(missing_ok=True)
            if emb is None:
                emb = compute(start, stop).contiguous().float()
                computed += 1
                if all_finite(emb):  # never store what a read would reject (the caller judges NaN output)
                    _save_atomic(path, emb)
            else:
                loaded += 1
                if on_progress:
                    on_progress(stop - start)
            shards.append(name)
            parts.append(emb)
        if legacy:
            log.warning("cache: %d shard(s) in %s were written without checksums (an older bench): "
                        "recomputed", legacy, d)
        out = torch.cat(parts) if parts else torch.empty(0)
        status = "miss" if not loaded else ("partial" if computed else "hit")
        if computed or not meta_path.is_file():
            meta = {"shards": shards, "n": n_items, "dim": list(out.shape[1:]), "describe": describe or {}}
            write_text_atomic(meta_path, json.dumps(meta, indent=1, default=str), fsync=False,
                              map_errors=False)
        return out, status


def read_shard(path: Path, rows: int):
    """(tensor, "") for a verified shard of `rows` rows; (None, reason) otherwise. The reason is ""
    for a missing shard or one of another shard size (not damage), "legacy" for one without a checksum,
    and a short description of the damage for everything else."""
    import torch
    from safetensors import safe_open

    if not path.is_file():
        return None, ""
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            emb = f.get_tensor("embeddings")
    except Exception as e:  # truncated or garbled file, missing tensor: all the same to the reader
        return None, f"unreadable: {type(e).__name__}"
    stored = meta.get(CHECKSUM_KEY)
    if stored is None:
        return None, "legacy"
    if emb.dtype != torch.float32 or emb.dim() != 2:
        return None, f"unexpected tensor {emb.dtype} {tuple(emb.shape)}"
    if content_checksum(emb) != stored:
        return None, "checksum mismatch"
    if not all_finite(emb):
        return None, "NaN/Inf values"
    if emb.shape[0] != rows:  # intact, written with another shard size
        return None, ""
    return emb, ""


def _save_atomic(path: Path, tensor) -> None:
    """A shard written atomically; no fsync (a damaged shard fails its checksum and is recomputed) and
    OS errors as they are (the CLI's safety net words them)."""
    from safetensors.torch import save_file

    with atomic_path(path, fsync=False, map_errors=False) as tmp:
        save_file({"embeddings": tensor}, tmp, metadata={CHECKSUM_KEY: content_checksum(tensor)})
