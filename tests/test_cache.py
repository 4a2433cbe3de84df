"""The embedding cache: hit on the same key, resume after a kill, no corrupt files."""

from __future__ import annotations

import torch

from bench.cache import EmbeddingCache, cache_key


def test_key_changes_with_every_input():
    fp = {"kind": "clip", "model_hash": "a", "dtype": "float32"}
    k = cache_key(fp, "data1", "image")
    assert k == cache_key(dict(fp), "data1", "image")
    assert k != cache_key({**fp, "model_hash": "b"}, "data1", "image")
    assert k != cache_key({**fp, "dtype": "bfloat16"}, "data1", "image")
    assert k != cache_key(fp, "data2", "image")
    assert k != cache_key(fp, "data1", "text")


def test_hit_and_resume(tmp_path):
    calls = []

    def compute(a, b):
        calls.append((a, b))
        return torch.arange(a, b, dtype=torch.float32)[:, None].repeat(1, 3)

    cache = EmbeddingCache(tmp_path)
    out, status = cache.get_or_compute("k", 10, compute, shard_size=4)
    assert status == "miss" and calls == [(0, 4), (4, 8), (8, 10)]
    assert torch.equal(out[:, 0], torch.arange(10, dtype=torch.float32))
    calls.clear()
    out2, status = cache.get_or_compute("k", 10, compute, shard_size=4)
    assert status == "hit" and calls == [] and torch.equal(out, out2)

    # A run killed after two shards: meta.json and the last shard are missing -> resume.
    (tmp_path / "k" / "meta.json").unlink()
    (tmp_path / "k" / "shard_00002.safetensors").unlink()
    out3, status = cache.get_or_compute("k", 10, compute, shard_size=4)
    assert status == "partial" and calls == [(8, 10)] and torch.equal(out, out3)


def test_corrupt_shard_is_recomputed(tmp_path):
    def compute(a, b):
        return torch.ones(b - a, 2)

    cache = EmbeddingCache(tmp_path)
    cache.get_or_compute("k", 5, compute, shard_size=2)
    (tmp_path / "k" / "meta.json").unlink()
    (tmp_path / "k" / "shard_00001.safetensors").write_bytes(b"garbage")
    out, status = cache.get_or_compute("k", 5, compute, shard_size=2)
    assert out.shape == (5, 2) and torch.equal(out, torch.ones(5, 2))
    assert not list((tmp_path / "k").glob(".tmp-*"))


def test_failure_mid_shard_leaves_no_partial_file(tmp_path):
    def compute(a, b):
        if a >= 2:
            raise RuntimeError("killed")
        return torch.zeros(b - a, 2)

    cache = EmbeddingCache(tmp_path)
    try:
        cache.get_or_compute("k", 5, compute, shard_size=2)
    except RuntimeError:
        pass
    files = sorted(p.name for p in (tmp_path / "k").iterdir())
    assert files == ["shard_00000.safetensors"]
