"""bench.distributed without a launcher: sharding arithmetic, gather order (two gloo processes),
the embedding plan, and the batch size that halves on a (simulated) out-of-memory error."""

from __future__ import annotations

import pytest

from bench.distributed import (AutoBatchSize, Dist, embedding_plan, per_process, shard_bounds, shard_indices,
                               unpad)


@pytest.mark.parametrize("n, ws, granule, bounds, padded", [
    (5, 2, 1, [(0, 3), (3, 5)], [[0, 1, 2], [3, 4, 4]]),
    (1, 2, 1, [(0, 1), (1, 1)], [[0], [0]]),
    (4, 2, 1, [(0, 2), (2, 4)], [[0, 1], [2, 3]]),
    (7, 3, 2, [(0, 4), (4, 7), (7, 7)], [[0, 1, 2, 3], [4, 5, 6, 6], [6, 6, 6, 6]]),
    (100, 2, 16, [(0, 64), (64, 100)], [list(range(64)), list(range(64, 100)) + [99] * 28]),
])
def test_shards_by_hand(n, ws, granule, bounds, padded):
    assert shard_bounds(n, ws, granule) == bounds
    assert [shard_indices(n, ws, r, granule) for r in range(ws)] == padded
    assert per_process(n, ws, granule) == len(padded[0])
    assert unpad(padded, n, ws, granule) == list(range(n))  # in order, none lost, none twice


@pytest.mark.parametrize("n", range(0, 40))
@pytest.mark.parametrize("ws, granule", [(2, 1), (3, 4), (8, 5)])
def test_shards_cover_every_item_once(n, ws, granule):
    blocks = [shard_indices(n, ws, r, granule) for r in range(ws)]
    assert len({len(b) for b in blocks}) == 1  # one common (padded) length
    real = [i for (a, b) in shard_bounds(n, ws, granule) for i in range(a, b)]
    assert real == list(range(n))
    assert unpad(blocks, n, ws, granule) == list(range(n))
    for a, b in shard_bounds(n, ws, granule):  # batch-aligned: the batches a single process makes
        assert b == a or a % granule == 0


def _worker(rank: int, ws: int, store: str, cases: list, out: str) -> None:
    import json

    import torch
    import torch.distributed as td

    from bench import distributed

    td.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=ws)
    dist = Dist(world_size=ws, rank=rank, backend="gloo")
    seen: list = []

    def compute(a: int, b: int):  # row i = (i, 10 i): the gathered rows name their items
        seen.append((a, b))
        return torch.tensor([[float(i), 10.0 * i] for i in range(a, b)])

    got = []
    if dist.is_main:
        for start, stop, granule in cases:
            rows = distributed.lead_range(dist, start, stop, granule, compute)
            assert rows.shape == (stop - start, 2) and rows[:, 1].tolist() == (10 * rows[:, 0]).tolist()
            got.append(rows[:, 0].tolist())
        distributed.lead_done(dist)
    else:
        distributed.follow(dist, compute)
    peaks = distributed.gather_object(dist, {"rank": rank, "seen": seen})
    if dist.is_main:
        with open(out, "w") as f:
            json.dump({"got": got, "peaks": peaks}, f)
    td.destroy_process_group()


def test_gather_in_dataset_order_two_processes(tmp_path):
    import json

    import torch.multiprocessing as mp

    cases = [(0, 5, 1), (0, 1, 1), (10, 17, 2), (3, 4, 16), (0, 100, 16)]
    out = tmp_path / "out.json"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), cases, str(out)), nprocs=2, join=True)
    res = json.loads(out.read_text())
    for (start, stop, _), rows in zip(cases, res["got"]):
        assert rows == [float(i) for i in range(start, stop)]
    # Each process embedded its own contiguous share (the second one the padding item when empty).
    seen = {p["rank"]: [tuple(s) for s in p["seen"]] for p in res["peaks"]}
    assert seen[0] == [(0, 3), (0, 1), (10, 14), (3, 4), (0, 64)]
    assert seen[1] == [(3, 5), (0, 1), (14, 17), (3, 4), (64, 100)]


class _OOM:
    def __init__(self, fits: int, error: type = RuntimeError) -> None:
        self.fits, self.error, self.tried = fits, error, []

    def __call__(self, batch_size: int) -> str:
        self.tried.append(batch_size)
        if batch_size > self.fits:
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total)")
        return f"ran at {batch_size}"


@pytest.mark.parametrize("error", ["RuntimeError", "OutOfMemoryError"])
def test_auto_batch_size_halves_on_oom(error):
    import torch

    oom = _OOM(fits=12, error=RuntimeError if error == "RuntimeError" else torch.OutOfMemoryError)
    auto = AutoBatchSize(64)
    assert auto.run(oom) == "ran at 8"
    assert oom.tried == [64, 32, 16, 8]
    assert auto.record() == {"requested": "auto", "start": 64, "used": 8, "out_of_memory_at": [64, 32, 16]}
    oom.tried.clear()
    assert auto.run(oom) == "ran at 8" and oom.tried == [8]  # the search is paid once


def test_auto_batch_size_other_errors_pass_through():
    def broken(batch_size: int):
        raise RuntimeError("shape mismatch")

    auto = AutoBatchSize(16)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        auto.run(broken)
    assert auto.size == 16 and auto.halvings == []


def test_auto_batch_size_gives_up_at_zero():
    with pytest.raises(RuntimeError, match="reached zero"):
        AutoBatchSize(4).run(_OOM(fits=0))


def test_embedding_plan_of_the_demo_config():
    from bench.config import load_config

    cfg = load_config("configs/demo.yaml")
    assert embedding_plan(cfg.tasks, supports_text=True) == [
        ("shapes_test", "image"), ("shapes_test", "text"), ("shapes_folder_train", "image"),
        ("shapes_folder_test", "image"), ("objects_val", "image"), ("objects_train", "image"),
        ("objects_test", "image")]
    assert embedding_plan(cfg.tasks, supports_text=False) == [
        ("shapes_folder_train", "image"), ("shapes_folder_test", "image"), ("objects_val", "image"),
        ("objects_train", "image"), ("objects_test", "image")]


def test_one_process_dist_without_launcher(monkeypatch):
    from bench import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = distributed.setup("cpu")
    assert (d.world_size, d.rank, d.is_main, d.enabled, d.backend) == (1, 0, True, False, None)


def test_run_with_auto_batch_size_halves_on_simulated_oom(tmp_path, synthetic_dir, tiny_clip_dir,
                                                          monkeypatch):
    """runtime.batch_size: auto on the CPU starts at 16; batches above 4 images 'run out of memory' (the
    CUDA error text accelerate recognizes): the run halves twice, embeds at 4 and says so."""
    import json

    import yaml

    from bench.config import load_config
    from bench.embedders.clip import ClipEmbedder
    from bench.runner import run_benchmark

    real = ClipEmbedder.embed_image_batch
    sizes: list[int] = []

    def tight(self, batch):
        sizes.append(self.batch_size_of(batch))
        if sizes[-1] > 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 1 GiB total)")
        return real(self, batch)

    monkeypatch.setattr(ClipEmbedder, "embed_image_batch", tight)
    cfg = {"name": "auto", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
           "runtime": {"device": "cpu", "batch_size": "auto", "num_workers": 0},
           "datasets": {"f": {"type": "imagefolder", "root": str(synthetic_dir / "imagefolder/test"),
                              "max_images": 10}},
           "embedders": [{"type": "clip", "model": str(tiny_clip_dir)}],
           "tasks": [{"type": "zeroshot", "dataset": "f", "templates": ["a {c}."]},
                     {"type": "speed", "dataset": "f", "num_images": 4, "min_iterations": 1,
                      "min_time_s": 0.0, "warmup_batches": 0}]}
    p = tmp_path / "auto.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out = run_benchmark(load_config(p), p, progress=False)
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["runtime"]["batch_size"] == "auto"
    assert data["details"]["clip"]["batch_size"] == {"requested": "auto", "start": 16, "used": 4,
                                                     "out_of_memory_at": [16, 8]}
    assert sizes[:3] == [10, 8, 4]  # 10 images: a first batch of all 10, then 8, then batches of 4
    assert data["details"]["clip"]["speed/f"]["batch_size"] == 4  # the speed task runs at the found size
    top1 = {m["key"]: m["value"] for m in data["metrics"]}["zeroshot/top1"]
    assert top1 is not None


def test_processes_below_one_is_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "bench", "run", "configs/demo.yaml", "--processes", "0"],
                       capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "bench: error: --processes must be at least 1 (got 0)"
