"""`bench embed`'s fast path (issue 17): workers started before the model loads with a deep read-ahead,
preprocessing in the model dtype, worker priority following the model's waits, and the per-batch torch
thread count. None of it may reorder, drop or change an image's vector."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def many_images(synthetic_dir):
    return sorted((synthetic_dir / "images" / "train").glob("*.jpg"))[:23]


def test_bench_embed_keeps_every_image_with_its_own_vector(tmp_path, synthetic_dir, many_images, tiny_clip_dir):
    """23 distinct images, batch 2, 2 workers reading ahead, the thread tuner switching counts: each key
    holds exactly the vector of that image embedded alone (a shuffled or dropped batch would not)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in many_images:
        (folder / p.name).symlink_to(p)
    out = tmp_path / "e.safetensors"
    r = subprocess.run([sys.executable, "-m", "bench", "embed", "clip", "--model", str(tiny_clip_dir),
                        "--images", str(folder), "--output", str(out), "--device", "cpu", "--batch-size", "2",
                        "--num-workers", "2"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    got = load_file(out)
    assert sorted(got) == sorted(p.name for p in many_images)

    from bench.data.images import load_image
    from bench.embedders.clip import ClipEmbedder

    emb = ClipEmbedder(model=str(tiny_clip_dir))
    alone = {p.name: emb.embed_image_batch(emb.collate([emb.preprocess(load_image(p))]))[0] for p in many_images}
    distinct = torch.stack(list(alone.values()))
    assert torch.cdist(distinct, distinct).add(torch.eye(len(alone)) * 9).min() > 1e-3  # images differ
    for name, vec in alone.items():
        torch.testing.assert_close(got[name], vec, atol=2e-6, rtol=0)


def test_read_ahead_yields_batches_in_order(many_images):
    """start_image_batches with a large read-ahead: the batches come in path order, all of them, and the
    read-ahead is sized from the first item (every batch fits in the budget here)."""
    from bench.data.images import load_image
    from bench.loader import _ImageFiles, _prefetch_factor, start_image_batches

    def preprocess(image):  # an item that identifies its image: its size and its first pixel
        return torch.tensor([image.width, image.height, *image.getpixel((0, 0))], dtype=torch.float64)

    expected = [preprocess(load_image(p)) for p in many_images]
    got = list(start_image_batches(preprocess, torch.stack, many_images, 3, 2, prefetch_bytes=2**20))
    assert [len(b) for b in got] == [3] * 7 + [2]
    torch.testing.assert_close(torch.cat(got), torch.stack(expected))
    ds = _ImageFiles(many_images, preprocess)
    assert _prefetch_factor(ds, 3, 2, 2**20) == 4  # 8 batches over 2 workers, all within the budget
    assert _prefetch_factor(ds, 3, 2, 0) == 2
    assert _prefetch_factor(ds, 3, 2, 6 * 8 * 3 * 3) == 3  # 3 batches of 3 items of 48 bytes


def test_bf16_preprocess_runs_in_the_worker_and_matches_a_later_conversion(tiny_clip_dir, many_images):
    from bench.data.images import load_image
    from bench.embedders.base import RuntimeOptions
    from bench.embedders.clip import ClipEmbedder

    pre, collate = ClipEmbedder.image_pipeline(ClipEmbedder.Params.embed_model()(type="clip",
                                                                                  model=str(tiny_clip_dir)),
                                               RuntimeOptions(dtype="bfloat16"))
    f32 = ClipEmbedder(model=str(tiny_clip_dir))
    image = load_image(many_images[0])
    item = pre(image)
    assert item.dtype == torch.bfloat16
    assert torch.equal(item, f32.preprocess(image).to(torch.bfloat16))
    assert f32.preprocess(image).dtype == torch.float32
    assert collate([item, item]).shape == (2, *item.shape)


def test_thread_tuner_probes_each_count_then_keeps_the_faster(monkeypatch):
    import bench.threads as threads

    clock = {"t": 0.0}
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock["t"])

    def run(cost: dict[int, float]) -> list[int]:
        tuner = threads.ThreadTuner(max_threads=2, probe_every=4)
        try:
            for _ in range(9):
                tuner.before()
                clock["t"] += cost[tuner.current] * 4  # seconds per image x 4 images
                tuner.after(4)
        finally:
            tuner.restore()
        assert torch.get_num_threads() == 2
        return tuner.history

    # warm-up on 1 (not timed), measure 1, measure 2, then the faster except a probe of the other at 4 and 8
    assert run({2: 1.0, 1: 0.5}) == [1, 1, 2, 1, 2, 1, 1, 1, 2]  # a busy machine: 1 thread is faster
    assert run({2: 0.5, 1: 1.0}) == [1, 1, 2, 2, 1, 2, 2, 2, 1]  # a quiet one


def test_thread_count_does_not_change_the_vectors(tiny_clip_dir, many_images):
    from bench.data.images import load_image
    from bench.embedders.clip import ClipEmbedder

    emb = ClipEmbedder(model=str(tiny_clip_dir))
    batch = emb.collate([emb.preprocess(load_image(p)) for p in many_images[:8]])
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(emb.embed_image_batch(batch))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_worker_priority_follows_the_models_waits():
    from bench.loader import STARVED_S, _Priority

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        prio = _Priority([child.pid])
        prio.after_wait(0.0)  # batch was ready: decode only in the gaps
        if not prio.ok:
            pytest.skip("this system does not let a process come back from SCHED_IDLE")
        assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE
        prio.after_wait(STARVED_S * 10)  # the model waited: the worker gets normal priority
        assert os.sched_getscheduler(child.pid) == os.SCHED_OTHER
    finally:
        child.kill()
        child.wait()
