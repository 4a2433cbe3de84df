"""Metrics against hand-computed cases and independent (naive) routes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.metrics.linear_probe import linear_probe, mean_average_precision
from bench.metrics.memory import PeakMemory
from bench.metrics.retrieval import recall_at_k
from bench.metrics.speed import Latency, measure_loop
from bench.metrics.zeroshot import class_text_embeddings, zeroshot_classify


def _naive_recall(img, txt, owner, ks):
    """Per-query loop written from the definition, ties against the query."""
    s = img @ txt.T
    out = {}
    for k in ks:
        hits = []
        for i in range(len(img)):
            pos = [j for j in range(len(txt)) if owner[j] == i]
            if not pos:
                continue
            best = max(s[i, j] for j in pos)
            neg_ge = sum(1 for j in range(len(txt)) if owner[j] != i and s[i, j] >= best)
            hits.append(neg_ge < k)
        out[f"i2t_recall@{k}"] = 100 * np.mean(hits)
    for k in ks:
        hits = []
        for j in range(len(txt)):
            p = s[owner[j], j]
            neg_ge = sum(1 for i in range(len(img)) if i != owner[j] and s[i, j] >= p - 1e-5)
            hits.append(neg_ge < k)
        out[f"t2i_recall@{k}"] = 100 * np.mean(hits)
    return out


def test_recall_hand_computed_with_variable_captions():
    # 3 images in 2-D; image 0 has 5 captions, image 1 has 7, image 2 has 6.
    img = np.array([[1, 0], [0, 1], [-1, 0]], dtype=np.float32)
    owner = np.array([0] * 5 + [1] * 7 + [2] * 6)
    txt = np.zeros((18, 2), dtype=np.float32)
    txt[owner == 0] = [1, 0]
    txt[owner == 1] = [0, 1]
    txt[owner == 2] = [-1, 0]
    # Spoil one caption of image 2: it points at image 1 instead.
    txt[17] = [0, 1]
    r = recall_at_k(img, txt, owner, ks=(1, 5, 10))
    # i2t: image 0's best positive (1.0) ties with nothing negative -> hit@1. Image 1: 8 texts at
    # [0,1], one of them a negative (caption 17) tying its best positive -> rank 1 -> miss@1, hit@5.
    # Image 2: positives at [-1,0] score 1, no negative >= 1 -> hit@1.
    assert r["i2t_recall@1"] == pytest.approx(200 / 3)
    assert r["i2t_recall@5"] == pytest.approx(100.0)
    # t2i: caption 17 scores 1.0 with image 1 and 0 with its own image 2; image 0 also scores 0
    # (tie with its positive) -> 2 negatives >= -> miss@1, miss@... ranks: hit only at k >= 3.
    assert r["t2i_recall@1"] == pytest.approx(100 * 17 / 18)
    assert r["t2i_recall@5"] == pytest.approx(100.0)


def test_recall_constant_embeddings_are_pessimistic():
    img = np.ones((10, 4), dtype=np.float32) / 2
    txt = np.ones((50, 4), dtype=np.float32) / 2
    owner = np.repeat(np.arange(10), 5)
    r = recall_at_k(img, txt, owner, ks=(1, 5, 10))
    assert r["i2t_recall@10"] == 0.0  # 45 negatives tie with every positive
    assert r["t2i_recall@5"] == 0.0 and r["t2i_recall@10"] == 100.0  # 9 other images tie: rank 9 < 10


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 10_000])
def test_recall_chunked_matches_naive_loop(chunk):
    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(23, 8, generator=g), dim=1)
    counts = [5, 6, 7] * 7 + [5, 5]
    owner = np.repeat(np.arange(23), counts)
    rng = np.random.default_rng(0)
    owner = owner[rng.permutation(len(owner))]  # captions in any order
    txt = torch.nn.functional.normalize(img[owner] + 0.9 * torch.randn(len(owner), 8, generator=g), dim=1)
    got = recall_at_k(img, txt, owner, ks=(1, 2, 5), chunk_size=chunk)
    want = _naive_recall(img.numpy(), txt.numpy(), owner, (1, 2, 5))
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-6), k


def test_recall_image_without_caption_is_excluded_and_shapes_checked():
    img = np.eye(3, dtype=np.float32)
    txt = np.eye(3, dtype=np.float32)[:2]
    r = recall_at_k(img, txt, np.array([0, 1]), ks=(1,))
    assert r["i2t_recall@1"] == 100.0
    with pytest.raises(ValueError):
        recall_at_k(img, txt, np.array([0]), ks=(1,))


def _blobs(n_per, centers, seed, noise=0.3):
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + noise * rng.standard_normal((n_per, len(c))) for c in centers])
    y = np.repeat(np.arange(len(centers)), n_per)
    return x.astype(np.float32), y


def test_probe_separable_and_deterministic():
    centers = np.eye(6, 16) * 3
    xtr, ytr = _blobs(20, centers, 0)
    xte, yte = _blobs(10, centers, 1)
    a = linear_probe(xtr, ytr, xte, yte, seed=0)
    b = linear_probe(xtr, ytr, xte, yte, seed=0)
    assert a.metrics["top1"] == 100.0 and a.metrics["top5"] == 100.0 and a.metrics["mean_per_class_recall"] == 100.0
    assert a.metrics == b.metrics
    assert len(a.details["c_sweep"]) == 7 + 4  # coarse grid then refinement
    assert a.details["per_class_accuracy"] == [100.0] * 6


def test_probe_sweep_picks_best_validation_c_and_refines_around_it():
    centers = np.eye(4, 32) * 1.0
    r = linear_probe(*_blobs(15, centers, 0, noise=2.0), *_blobs(15, centers, 1, noise=2.0), seed=0)
    sweep = r.details["c_sweep"]
    coarse, fine = sweep[:7], sweep[7:]
    best_coarse = max(coarse, key=lambda cs: (cs[1], -cs[0]))[0]
    assert all(best_coarse / 3.2 < c < best_coarse * 3.2 for c, _ in fine)
    top = max(s for _, s in sweep)
    assert dict((c, s) for c, s in sweep)[r.metrics["best_C"]] == top
    assert r.metrics["top1"] < 100.0  # the noisy case is not trivially separable


def test_probe_class_missing_from_test_and_given_val():
    centers = np.eye(3, 8) * 3
    xtr, ytr = _blobs(10, centers, 0)
    xva, yva = _blobs(5, centers, 2)
    xte, yte = _blobs(5, centers[:2], 1)
    r = linear_probe(xtr, ytr, xte, yte, xva, yva)
    assert r.details["per_class_accuracy"][2] is None
    assert r.metrics["top1"] == 100.0 and r.details["num_train"] == 45


def test_map_hand_computed():
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.9]])
    # class 0: ranking 0.9(+), 0.8(-), 0.3(+), 0.1(-) -> AP = (1/1 + 2/3)/2 = 0.8333
    # class 1: ranking 0.9(-), 0.7(+), 0.2(+), 0.1(-) -> AP = (1/2 + 2/3)/2 = 0.5833
    m, per = mean_average_precision(labels, scores)
    assert per == pytest.approx([83.3333, 58.3333], abs=1e-3)
    assert m == pytest.approx(70.8333, abs=1e-3)


def test_probe_multilabel_map():
    rng = np.random.default_rng(0)
    y = (rng.random((80, 3)) < 0.4).astype(np.uint8)
    x = y * 2.0 + 0.1 * rng.standard_normal((80, 3))
    r = linear_probe(x[:60], y[:60], x[60:], y[60:], multilabel=True)
    assert r.metrics["mAP"] > 90.0 and len(r.details["per_class_ap"]) == 3


def test_zeroshot_hand_made():
    class_emb = torch.eye(3)
    img = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0.9, 0.1, 0], [0, 0.2, 1.0], [0.6, 0.8, 0]])
    labels = np.array([0, 1, 2, 2, 1])
    r = zeroshot_classify(img, class_emb, labels)
    # predictions: 0, 1, 0, 2, 1 -> 4/5 right; per class: c0 1/1, c1 2/2, c2 1/2
    assert r["top1"] == pytest.approx(80.0)
    assert r["top5"] == pytest.approx(100.0)  # k = 3 classes
    assert r["mean_per_class_recall"] == pytest.approx((100 + 100 + 50) / 3)


def test_class_text_embeddings_average_templates():
    seen = []

    def embed(texts):
        seen.extend(texts)
        return torch.tensor([[1.0, 0.0] if "cat" in t else [0.0, 1.0] for t in texts]) * torch.tensor(
            [[1.0 if t.startswith("a") else 3.0] for t in texts])

    emb = class_text_embeddings(embed, ["cat", "dog"], ["a {c}", "the {c}"])
    assert seen == ["a cat", "the cat", "a dog", "the dog"]
    assert torch.allclose(emb, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_measure_loop_stops_on_both_conditions():
    t = {"now": 0.0}
    calls = []

    def clock():
        return t["now"]

    def step():
        calls.append(1)
        t["now"] += 0.1

    r = measure_loop(step, warmup=2, min_iterations=3, min_time_s=1.0, clock=clock, items_per_step=8)
    assert r.cold_s == pytest.approx(0.1)
    assert r.iterations == 10  # time-bound: 10 x 0.1 s reaches 1.0 s
    assert r.items_per_s == pytest.approx(80.0)
    r = measure_loop(step, warmup=0, min_iterations=4, min_time_s=0.0, clock=clock)
    assert r.iterations == 4 and r.cold_s is None and r.items_per_s is None


def test_latency_percentiles_match_numpy():
    vals = list(np.random.default_rng(0).random(101))
    lat = Latency.from_values(vals)
    assert lat.p50 == pytest.approx(np.percentile(vals, 50))
    assert lat.p99 == pytest.approx(np.percentile(vals, 99))


def test_peak_memory_sees_a_200_mib_allocation():
    with PeakMemory("cpu") as m:
        a = np.ones(200 * 1024 * 1024 // 8)
        a[::512] = 2.0
        del a
    got = m.metrics()
    assert got["peak_rss_delta_mib"] >= 190, got
    assert "peak_allocated_mib" not in got


def test_peak_memory_cuda_branch_with_mocks(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 300 * 2**20)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: 512 * 2**20)
    with PeakMemory("cuda:0") as m:
        pass
    assert calls[:2] == ["sync", "reset"] and calls[-1] == "sync"
    got = m.metrics()
    assert got["peak_allocated_mib"] == 300 and got["peak_reserved_mib"] == 512
