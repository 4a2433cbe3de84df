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
    assert not list((tmp_path / "k").glob(".*.tmp"))  # bench.io's temporary files


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


# --- Verification on read (issue 10, item 3): a shard is served only when its checksum and its values hold.

def _data_offset(path) -> int:
    """Where a safetensors file's tensor bytes start: after the 8-byte header length and the JSON header."""
    raw = path.read_bytes()
    return 8 + int.from_bytes(raw[:8], "little")


def _rows(a, b):
    # Distinct, finite, non-trivial values: a served corruption could not go unnoticed by torch.equal.
    return torch.arange(a * 4, b * 4, dtype=torch.float32).reshape(b - a, 4) / 7 + 0.5


def _cache_with_entry(tmp_path):
    calls = []

    def compute(a, b):
        calls.append((a, b))
        return _rows(a, b)

    cache = EmbeddingCache(tmp_path)
    out, status = cache.get_or_compute("k", 10, compute, shard_size=4)
    assert status == "miss"
    calls.clear()
    return cache, compute, calls, out


def test_flipped_tensor_bytes_are_recomputed_not_served(tmp_path, caplog):
    """Bytes flipped inside the tensor data (the header intact, values still finite) would be served by a
    cache that does not verify: this test fails if verification is skipped."""
    from safetensors.torch import load_file

    cache, compute, calls, expected = _cache_with_entry(tmp_path)
    shard = tmp_path / "k" / "shard_00001.safetensors"
    raw = bytearray(shard.read_bytes())
    start = _data_offset(shard)
    for i in (start + 1, start + 21, start + 42):  # mantissa bytes of three values: still finite floats
        raw[i] ^= 0x5A
    shard.write_bytes(bytes(raw))
    damaged = load_file(shard)["embeddings"]  # the header still parses: only the values changed
    assert damaged.shape == (4, 4) and torch.isfinite(damaged).all()
    assert not torch.equal(damaged, expected[4:8])

    out, status = cache.get_or_compute("k", 10, compute, shard_size=4)
    assert calls == [(4, 8)] and status == "partial"
    assert torch.equal(out, expected)
    assert [r.getMessage() for r in caplog.records if "shard_00001" in r.getMessage()] == [
        f"cache: discarding shard {shard} (checksum mismatch); recomputing it"]
    # The rewritten shard is intact again: the next read is a clean hit.
    calls.clear()
    out, status = cache.get_or_compute("k", 10, compute, shard_size=4)
    assert status == "hit" and calls == [] and torch.equal(out, expected)


def test_nan_bytes_in_a_shard_are_recomputed(tmp_path, caplog):
    import struct

    cache, compute, calls, expected = _cache_with_entry(tmp_path)
    shard = tmp_path / "k" / "shard_00000.safetensors"
    raw = bytearray(shard.read_bytes())
    start = _data_offset(shard)
    raw[start + 8:start + 12] = struct.pack("<f", float("nan"))
    shard.write_bytes(bytes(raw))
    out, status = cache.get_or_compute("k", 10, compute, shard_size=4)
    assert calls == [(0, 4)] and torch.equal(out, expected) and torch.isfinite(out).all()
    assert any("shard_00000" in r.getMessage() for r in caplog.records)


def test_nan_with_a_matching_checksum_is_still_refused(tmp_path, caplog):
    """The finite check stands on its own: a NaN/Inf shard whose checksum is right (a writer without the
    check) is discarded all the same."""
    from safetensors.torch import save_file

    from bench.cache import CHECKSUM_KEY, content_checksum

    cache, compute, calls, expected = _cache_with_entry(tmp_path)
    for name, bad in (("shard_00000.safetensors", float("nan")), ("shard_00002.safetensors", float("inf"))):
        t = _rows(0, 4) if name.endswith("0.safetensors") else _rows(8, 10)
        t[1, 2] = bad
        save_file({"embeddings": t}, tmp_path / "k" / name, metadata={CHECKSUM_KEY: content_checksum(t)})
    out, status = cache.get_or_compute("k", 10, compute, shard_size=4)
    assert calls == [(0, 4), (8, 10)] and torch.equal(out, expected)
    assert sum("NaN/Inf" in r.getMessage() for r in caplog.records) == 2


def test_truncated_shard_is_recomputed(tmp_path, caplog):
    cache, compute, calls, expected = _cache_with_entry(tmp_path)
    shard = tmp_path / "k" / "shard_00002.safetensors"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:len(raw) - 5])  # meta.json still lists it: the entry looks complete
    out, status = cache.get_or_compute("k", 10, compute, shard_size=4)
    assert calls == [(8, 10)] and status == "partial" and torch.equal(out, expected)
    warned = [r.getMessage() for r in caplog.records if "shard_00002" in r.getMessage()]
    assert len(warned) == 1 and "unreadable" in warned[0]


def test_shard_without_checksum_is_a_miss(tmp_path, caplog):
    """Rule for entries written before checksums: no checksum, no trust; recomputed, rewritten with one."""
    from safetensors.torch import save_file

    cache, compute, calls, expected = _cache_with_entry(tmp_path)
    save_file({"embeddings": _rows(0, 4) * 0}, tmp_path / "k" / "shard_00000.safetensors")  # old format
    out, status = cache.get_or_compute("k", 10, compute, shard_size=4)
    assert calls == [(0, 4)] and torch.equal(out, expected)
    assert any("without checksums" in r.getMessage() for r in caplog.records)
    calls.clear()
    assert cache.get_or_compute("k", 10, compute, shard_size=4)[1] == "hit" and calls == []


def test_checksum_covers_content_shape_and_dtype():
    from bench.cache import content_checksum

    t = _rows(0, 4)
    assert content_checksum(t) == content_checksum(t.clone())
    u = t.clone()
    u[3, 3] = torch.nextafter(u[3, 3], torch.tensor(10.0))  # one ulp
    assert content_checksum(u) != content_checksum(t)
    assert content_checksum(t.reshape(8, 2)) != content_checksum(t)
    assert content_checksum(t.view(torch.int32)) != content_checksum(t)


def test_all_finite_is_exact_even_when_the_fast_test_overflows():
    from bench.cache import all_finite

    big = torch.full((3, 4), 3e38)  # finite, but their squares overflow float32
    assert all_finite(big) and all_finite(torch.zeros(0, 4))
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = big.clone()
        t[2, 1] = bad
        assert not all_finite(t)
        assert not all_finite(torch.where(torch.arange(12).reshape(3, 4) == 5, bad, 0.0))


def test_non_finite_output_is_not_stored(tmp_path):
    """What a read would refuse is never written: a NaN-producing embedder does not poison the cache."""
    cache = EmbeddingCache(tmp_path)
    out, _ = cache.get_or_compute("k", 3, lambda a, b: torch.full((b - a, 2), float("nan")), shard_size=2)
    assert out.isnan().all()
    assert not list((tmp_path / "k").glob("shard_*"))


def test_corrupted_cache_after_a_run_gives_the_clean_scores(tmp_path, synthetic_dir, tiny_clip_dir,
                                                            monkeypatch, caplog):
    """End to end: image rows of a cached shard permuted in place (header intact, values finite). An
    unverified read changes the retrieval scores; the real read recomputes and gives the clean run's."""
    import json

    import yaml
    from safetensors.torch import load_file

    import bench.cache
    from bench.config import load_config
    from bench.runner import run_benchmark

    d = synthetic_dir
    cfg = {"name": "corrupt", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
           "runtime": {"device": "cpu", "batch_size": 8, "num_workers": 0},
           "datasets": {"caps": {"type": "coco_karpathy", "annotations": str(d / "dataset_coco.json"),
                                 "images": str(d / "images"), "split": "test"}},
           "embedders": [{"type": "clip", "model": str(tiny_clip_dir)}],
           "tasks": [{"type": "retrieval", "dataset": "caps", "ks": [1, 5, 10]}]}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))

    def run(name):
        out = run_benchmark(load_config(p), p, progress=False, render=False, out_dir=tmp_path / name)
        data = json.loads((out / "results.json").read_text())
        scores = {m["key"]: m["value"] for m in data["metrics"] if m["kind"] == "quality"}
        return scores, data["cache"]["clip"]

    clean, status = run("clean")
    assert status == {"images/caps": "miss", "texts/caps": "miss"}
    (entry,) = [m.parent for m in (tmp_path / "cache").glob("*/meta.json")
                if json.loads(m.read_text())["describe"]["modality"] == "image"]
    shard = entry / "shard_00000.safetensors"
    original = load_file(shard)["embeddings"].clone()
    n, row = original.shape[0], original.shape[1] * 4
    raw = bytearray(shard.read_bytes())
    start = _data_offset(shard)
    rows = [raw[start + i * row:start + (i + 1) * row] for i in range(n)]
    raw[start:start + n * row] = b"".join(reversed(rows))  # image i now carries image n-1-i's vector
    shard.write_bytes(bytes(raw))
    assert torch.equal(load_file(shard)["embeddings"], original.flip(0))

    def unverified(path, rows):  # the cache as it was: whatever parses is served
        return (load_file(path)["embeddings"], "") if path.is_file() else (None, "")

    with monkeypatch.context() as m:
        m.setattr(bench.cache, "read_shard", unverified)
        served, _ = run("unverified")
    assert served != clean  # the corruption matters to the scores

    verified, status = run("verified")
    assert status == {"images/caps": "miss", "texts/caps": "hit"}  # the one shard recomputed
    assert verified == clean
    assert any(str(shard) in r.getMessage() and "checksum mismatch" in r.getMessage() for r in caplog.records)
    assert torch.equal(load_file(shard)["embeddings"], original)  # and rewritten intact
