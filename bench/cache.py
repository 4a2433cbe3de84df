"""Embeddings on disk, keyed by fingerprints of the model, the preprocessing and the data.

Layout: <cache_dir>/<key>/shard_00000.safetensors ... + meta.json (written last = complete).
Embedding proceeds in shards of `shard_size` items, each written atomically (temporary file +
rename), so a killed run never leaves a corrupt file and a rerun resumes at the first missing
shard: no finished work is lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_VERSION = 1


def cache_key(embedder_fp: dict[str, Any], data_fp: str, modality: str) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "embedder": embedder_fp, "data": data_fp, "modality": modality},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


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

        `compute(start, stop)` embeds items [start, stop) and returns a float32 tensor.
        """
        import torch
        from safetensors.torch import load_file

        if not self.enabled:
            return compute(0, n_items), "off"
        d = self._dir(key)
        meta_path = d / "meta.json"
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                parts = [load_file(d / name)["embeddings"] for name in meta["shards"]]
                out = torch.cat(parts) if parts else torch.empty(0)
                if out.shape[0] == n_items:
                    if on_progress:
                        on_progress(n_items)
                    return out, "hit"
            except Exception:  # unreadable entry: fall through and recompute what is missing
                pass
        d.mkdir(parents=True, exist_ok=True)
        shards, parts, status = [], [], "miss"
        for i, start in enumerate(range(0, n_items, shard_size)):
            stop = min(start + shard_size, n_items)
            name = f"shard_{i:05d}.safetensors"
            path = d / name
            emb = None
            if path.is_file():
                try:
                    emb = load_file(path)["embeddings"]
                    if emb.shape[0] != stop - start:
                        emb = None
                    else:
                        status = "partial"
                except Exception:  # unreadable shard (killed writer, disk error): recompute it
                    emb = None
            if emb is None:
                emb = compute(start, stop).contiguous().float()
                _save_atomic(path, emb)
            elif on_progress:
                on_progress(stop - start)
            shards.append(name)
            parts.append(emb)
        out = torch.cat(parts) if parts else torch.empty(0)
        _write_text_atomic(meta_path, json.dumps({"shards": shards, "n": n_items, "dim": list(out.shape[1:]),
                                                  "describe": describe or {}}, indent=1, default=str))
        return out, status


def _save_atomic(path: Path, tensor) -> None:
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file({"embeddings": tensor}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
