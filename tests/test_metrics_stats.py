"""Measures from ranks (MRR, nDCG@10, true recall, median rank) against naive and sklearn
implementations; chance levels against simulation; bootstrap intervals (coverage, shrinkage,
paired significance, determinism) and the per-query record files."""

from __future__ import annotations

import numpy as np
import pytest

from bench.errors import DataError
from bench.metrics import ranking, records, stats
from bench.metrics.ranking import (class_ranks, classification_chance, expected_ap, per_query,
                                   retrieval_chance, retrieval_keys, retrieval_scores)
from bench.metrics.retrieval import RetrievalRanks, recall_at_k, retrieval_ranks
from bench.metrics.zeroshot import mean_average_precision, topk_metrics

ALL = ("recall", "true_recall", "mrr", "ndcg", "median_rank")


def _data(seed, n=14, d=6, ties=False, empty=True):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 7, size=n)
    if empty:
        counts[2] = 0  # an image without captions: no i2t query, still a t2i negative
    owner = rng.permutation(np.repeat(np.arange(n), counts))
    if ties:  # small integers: many exactly equal scores
        img, txt = rng.integers(-1, 2, (n, 3)), rng.integers(-1, 2, (len(owner), 3))
        return img.astype(float), txt.astype(float), owner
    img = rng.standard_normal((n, d))
    return img, img[owner] + 1.5 * rng.standard_normal((len(owner), d)), owner


def _naive_measures(s, owner, ks, ndcg_k=10):
    """Each query on its own: candidates sorted by (-score, positives after negatives at equal
    score); every measure read off that list by its textbook definition."""
    n, m = s.shape
    out = {}
    for d, queries in (("i2t", range(n)), ("t2i", range(m))):
        rows = []
        for q in queries:
            if d == "i2t":
                rel = [owner[j] == q for j in range(m)]
                if not any(rel):
                    continue
                sc = s[q]
            else:
                rel = [i == owner[q] for i in range(n)]
                sc = s[:, q]
            order = sorted(range(len(rel)), key=lambda c: (-sc[c], rel[c]))
            hits = [rel[c] for c in order]  # relevance by position, 1-based position p = index + 1
            first = hits.index(True) + 1
            dcg = sum(1 / np.log2(p + 1) for p, h in enumerate(hits[:ndcg_k], 1) if h)
            idcg = sum(1 / np.log2(p + 1) for p in range(1, min(sum(hits), ndcg_k) + 1))
            row = {"mrr": 100 / first, f"ndcg@{ndcg_k}": 100 * dcg / idcg, "median_rank": first}
            for k in ks:
                row[f"recall@{k}"] = 100.0 * (first <= k)
                row[f"true_recall@{k}"] = 100.0 * sum(hits[:k]) / sum(hits)
            rows.append(row)
        for key in rows[0]:
            vals = [r[key] for r in rows]
            out[f"{d}_{key}"] = float(np.median(vals) if key == "median_rank" else np.mean(vals))
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_all_measures_equal_naive_per_query_sorts(ties):
    ks = (1, 3, 10)
    for seed in range(3):
        img, txt, owner = _data(seed, ties=ties)
        got = retrieval_scores(retrieval_ranks(img, txt, owner), retrieval_keys(ALL, ks))
        want = _naive_measures(img @ txt.T, owner, ks)
        assert set(got) == set(want)
        assert got == pytest.approx(want, rel=1e-12)


def test_ndcg_and_true_recall_equal_sklearn_on_tie_free_scores():
    from sklearn.metrics import ndcg_score

    for seed in range(3):
        img, txt, owner = _data(seed, n=20, empty=False)
        s = img @ txt.T
        rel_i2t = (owner[None, :] == np.arange(len(img))[:, None]).astype(float)  # [N, M]
        r = retrieval_ranks(img, txt, owner)
        got = retrieval_scores(r, ["i2t_ndcg@10", "t2i_ndcg@10", "i2t_ndcg@3"])
        assert got["i2t_ndcg@10"] == pytest.approx(100 * ndcg_score(rel_i2t, s, k=10))
        assert got["i2t_ndcg@3"] == pytest.approx(100 * ndcg_score(rel_i2t, s, k=3))
        assert got["t2i_ndcg@10"] == pytest.approx(100 * ndcg_score(rel_i2t.T, s.T, k=10))
        # hit recall on the same ranks is still recall_at_k's number
        hit = retrieval_scores(r, retrieval_keys(("recall",), (1, 5)))
        assert hit == recall_at_k(img, txt, owner, (1, 5))


def test_hand_computed_measures():
    # first-correct ranks (0-based) 2, 0, 12 -> 1-based 3, 1, 13
    owner = np.array([0, 0, 1, 2])
    r = RetrievalRanks(owner, np.array([2, 0, 12]), np.array([2, 5, 0, 12]), np.array([0, 1, 0, 3]))
    got = retrieval_scores(r, ["i2t_mrr", "i2t_median_rank", "i2t_true_recall@5", "i2t_ndcg@10",
                               "t2i_mrr", "t2i_median_rank"])
    assert got["i2t_mrr"] == pytest.approx(100 * (1 / 3 + 1 + 1 / 13) / 3)
    assert got["i2t_median_rank"] == 3.0
    assert got["i2t_true_recall@5"] == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    # image 0: correct at 1-based 3 and 6 of 2 relevant; image 1 perfect; image 2 nothing in the top 10
    idcg2 = 1 + 1 / np.log2(3)
    assert got["i2t_ndcg@10"] == pytest.approx(100 * ((1 / np.log2(4) + 1 / np.log2(7)) / idcg2 + 1) / 3)
    assert got["t2i_mrr"] == pytest.approx(100 * (1 + 0.5 + 1 + 0.25) / 4)
    assert got["t2i_median_rank"] == 1.5


def test_keys_and_measure_table():
    assert retrieval_keys() == list(recall_at_k(np.eye(2), np.eye(2), np.array([0, 1])))
    assert retrieval_keys(("mrr", "ndcg"), ndcg_k=10) == ["i2t_mrr", "i2t_ndcg@10", "t2i_mrr", "t2i_ndcg@10"]
    assert ranking.parse_key("t2i_true_recall@5")[1].name == "true_recall"
    assert not ranking.MEASURES["median_rank"].higher_is_better
    for m in ranking.MEASURES.values():
        assert m.protocol and m.stat in ("mean", "median")
    for bad in ("i2t_mrr@5", "i2t_recall", "x2y_recall@1", "i2t_recall@0"):
        with pytest.raises(ValueError):
            ranking.parse_key(bad)
    with pytest.raises(ValueError, match="unknown retrieval measure"):
        retrieval_keys(("map",))


# --- chance levels --------------------------------------------------------------------------------


def test_retrieval_chance_matches_simulated_random_rankings():
    rng = np.random.default_rng(0)
    counts = np.array([1, 2, 5, 3, 0, 7, 4, 1])  # M = 23 captions, one image without captions
    owner = np.repeat(np.arange(len(counts)), counts)
    n, m, sims = len(counts), len(owner), 6000
    # sims independent copies of the gallery, each query ranking every candidate uniformly at random
    pos = np.argsort(np.argsort(rng.random((sims, n, m)), axis=2), axis=2)  # [sim, image, caption]
    cap = pos[:, owner, np.arange(m)].ravel()
    big_owner = (np.arange(sims)[:, None] * n + owner[None, :]).ravel()
    first = np.full(sims * n, m)
    np.minimum.at(first, big_owner, cap)
    first[np.bincount(big_owner, minlength=sims * n) == 0] = -1
    r = RetrievalRanks(big_owner, first, cap, rng.integers(0, n, size=sims * m))
    for key in retrieval_keys(ALL, (1, 3, 5)):
        v = per_query(r, key)
        exact = retrieval_chance(key, owner, n)
        if key.endswith("median_rank"):
            assert abs(np.median(v) - exact) <= 1.0, key
        else:
            se = v.std() / np.sqrt(len(v))
            assert abs(v.mean() - exact) < 5 * se + 1e-9, (key, v.mean(), exact)
    # text->image: one correct image among 8; true recall: k of the 23 captions
    assert retrieval_chance("t2i_recall@5", owner, n) == pytest.approx(100 * 5 / 8)
    assert retrieval_chance("i2t_true_recall@5", owner, n) == pytest.approx(100 * 5 / 23)


def test_expected_ap_matches_simulation():
    rng = np.random.default_rng(1)
    for n, n_pos in [(20, 1), (20, 4), (30, 15), (7, 7)]:
        sims = 20000
        ranks = np.sort(np.argsort(rng.random((sims, n)), axis=1)[:, :n_pos], axis=1) + 1  # positions
        ap = (np.arange(1, n_pos + 1) / ranks).mean(1)  # precision at each positive, averaged
        assert abs(ap.mean() - expected_ap(n, n_pos)) < 5 * ap.std() / np.sqrt(sims) + 1e-12
    assert expected_ap(1, 1) == 1.0 and expected_ap(5000, 50) == pytest.approx(0.0116, abs=5e-5)
    labels = np.zeros((20, 3), dtype=int)
    labels[:4, 0], labels[:15, 1] = 1, 1  # class 2 has no positive: left out
    want = 50 * (expected_ap(20, 4) + expected_ap(20, 15))
    assert classification_chance("mAP", 3, labels) == pytest.approx(want)


def test_classification_intervals_estimates_and_pairing():
    rng = np.random.default_rng(14)
    labels = rng.integers(0, 6, 300)
    good = rng.standard_normal((300, 6)) + 2.0 * np.eye(6)[labels]
    bad = rng.standard_normal((300, 6)) + 0.5 * np.eye(6)[labels]
    ra, rb = class_ranks(good, labels)[0], class_ranks(bad, labels)[0]
    ci = ranking.classification_intervals(ra, labels, 6, n_resamples=300)
    ref = topk_metrics(good, labels)
    for k in ranking.CLASSIFICATION_KEYS:
        assert ci[k].estimate == pytest.approx(ref[k]) and ci[k].low < ci[k].estimate < ci[k].high
    p = ranking.classification_paired(ra, rb, labels, 6, n_resamples=300)
    assert p["top1"].diff == pytest.approx(ref["top1"] - topk_metrics(bad, labels)["top1"])
    assert p["top1"].verdict() == "a" and p["mean_per_class_recall"].verdict() == "a"
    same = ranking.classification_paired(ra, ra, labels, 6, n_resamples=50)
    assert not any(v.excludes_zero for v in same.values())
    with pytest.raises(ValueError, match="mAP"):
        ranking.classification_intervals(ra, labels, 6, keys=("mAP",))


def test_class_ranks_agree_with_topk_metrics_and_chance():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 3, size=(400, 10)).astype(float)  # many ties
    labels = rng.integers(0, 10, size=400)
    rank, pred = class_ranks(scores, labels)
    ref = topk_metrics(scores, labels)
    assert ranking.topk_per_query(rank, 1, 10).mean() == pytest.approx(ref["top1"])
    assert ranking.topk_per_query(rank, 5, 10).mean() == pytest.approx(ref["top5"])
    assert (pred == scores.argmax(1)).all() and rank.dtype == np.int32
    # random continuous scores: top-1 / top-5 hover at the chance levels 1/C and 5/C
    rank, _ = class_ranks(rng.random((20000, 10)), rng.integers(0, 10, 20000))
    assert (rank < 1).mean() * 100 == pytest.approx(classification_chance("top1", 10), abs=1.0)
    assert (rank < 5).mean() * 100 == pytest.approx(classification_chance("top5", 10), abs=1.5)
    assert classification_chance("top5", 3) == 100.0
    assert classification_chance("mean_per_class_recall", 4) == 25.0


# --- bootstrap ------------------------------------------------------------------------------------


@pytest.mark.parametrize("draw", ["bernoulli", "exponential"])
def test_interval_coverage_close_to_level(draw):
    rng = np.random.default_rng(3)
    covered = 0
    for i in range(200):
        if draw == "bernoulli":
            v, true = 100.0 * (rng.random(300) < 0.3), 30.0
        else:
            v, true = rng.exponential(2.0, 300), 2.0
        ci = stats.bootstrap_ci(v, n_resamples=1000, seed=i)
        covered += ci.low <= true <= ci.high
    assert 0.90 <= covered / 200 <= 0.99


def test_paired_interval_coverage_of_a_known_difference():
    rng = np.random.default_rng(4)
    covered = 0
    for i in range(200):
        a = rng.random(400) < 0.6
        b = np.where(rng.random(400) < 0.8, a, rng.random(400) < 0.5)  # correlated with a
        # E[a - b] = 0.2 * (0.6 - 0.5) = 0.02, i.e. 2 points
        covered += (p := stats.paired_bootstrap(100.0 * a, 100.0 * b, seed=i)).low <= 2.0 <= p.high
    assert 0.90 <= covered / 200 <= 0.99


def test_intervals_shrink_as_n_grows():
    rng = np.random.default_rng(5)
    widths = []
    for n in (100, 400, 1600, 6400):
        ci = stats.bootstrap_ci(100.0 * (rng.random(n) < 0.4))
        widths.append(ci.high - ci.low)
    ratios = np.array(widths[1:]) / np.array(widths[:-1])
    assert np.all((ratios > 0.35) & (ratios < 0.65)), widths  # ~1/sqrt(4) per 4x more queries
    # the width is 2 * 1.96 standard errors
    assert widths[-1] == pytest.approx(2 * 1.96 * 100 * np.sqrt(0.24 / 6400), rel=0.1)


def test_self_comparison_never_significant_and_clear_difference_is():
    rng = np.random.default_rng(6)
    false_alarms = 0
    for i in range(100):
        a = 100.0 * (rng.random(300) < 0.5)
        same = stats.paired_bootstrap(a, a, seed=i)
        assert (same.low, same.high, same.diff) == (0.0, 0.0, 0.0) and not same.excludes_zero
        assert same.verdict() == "tie" and not stats.significant_regression(same, 0.0)
        # an independent embedder of equal quality: significant only at about the 5% false alarm rate
        false_alarms += stats.paired_bootstrap(a, 100.0 * (rng.random(300) < 0.5), seed=i).excludes_zero
    assert false_alarms <= 12
    good, bad = 100.0 * (rng.random(500) < 0.7), 100.0 * (rng.random(500) < 0.4)
    p = stats.paired_bootstrap(good, bad)
    assert p.excludes_zero and p.low > 20 and p.verdict() == "a" and p.verdict(higher_is_better=False) == "b"
    change = stats.paired_bootstrap(bad, good)  # current (bad) - baseline (good)
    assert stats.significant_regression(change, tolerance=0.5)
    assert not stats.significant_regression(change, tolerance=40.0)  # inside the tolerance
    ranks_bad, ranks_good = 100.0 - bad, 100.0 - good  # lower is better
    rank_change = stats.paired_bootstrap(ranks_bad, ranks_good)
    assert stats.significant_regression(rank_change, 0.5, higher_is_better=False)


def test_pairing_uses_the_same_resamples():
    # b = a with 4% of the hits lost: a small difference, invisible to two separate intervals but
    # certain when both embedders are resampled on the same queries
    rng = np.random.default_rng(7)
    a = rng.random(1000) < 0.5
    b = a & (rng.random(1000) > 0.08)
    ca, cb = stats.bootstrap_ci(100.0 * a), stats.bootstrap_ci(100.0 * b)
    assert cb.high > ca.low  # the separate intervals overlap
    p = stats.paired_bootstrap(100.0 * b, 100.0 * a)
    assert p.high < 0 and p.diff == pytest.approx(100.0 * (b.mean() - a.mean()))


def test_bootstrap_is_seeded_and_independent_of_block_size():
    v = np.random.default_rng(8).exponential(1.0, 777)
    a = stats.bootstrap_ci(v, seed=3)
    assert a == stats.bootstrap_ci(v, seed=3)
    assert a != stats.bootstrap_ci(v, seed=4)
    for block in (777, 777 * 13, 10**9):  # 1, 13, all resamples per block
        b = stats.bootstrap_ci(v, seed=3, max_elements=block)
        assert (b.low, b.high) == pytest.approx((a.low, a.high), rel=1e-12)
    # the resamples are the rows of default_rng(seed).integers(0, n), drawn in one stream
    idx = np.random.default_rng(3).integers(0, 777, size=(5, 777))
    blocks = np.concatenate(list(stats.resample_counts(777, 5, seed=3, max_elements=2 * 777)))
    assert [len(c) for c in stats.resample_counts(777, 5, seed=3, max_elements=2 * 777)] == [2, 2, 1]
    assert (blocks == [np.bincount(i, minlength=777) for i in idx]).all()
    assert a.estimate == v.mean() and a.level == 0.95 and a.n_resamples == 1000
    assert a.as_dict()["method"] == "percentile bootstrap" and a.plus_minus == (a.high - a.low) / 2


def _naive_resample_map(y, s, idx):
    """mAP of a resample by loops: each drawn copy of a positive image scores the precision among
    the drawn copies ranked at or above it (equal scores included), its own image counted once."""
    aps = []
    for j in range(y.shape[1]):
        precs = []
        for c in (c for c in idx if y[c, j]):
            above = [d for d in idx if s[d, j] >= s[c, j] and d != c]
            precs.append((sum(y[d, j] for d in above) + 1) / (len(above) + 1))
        if precs:
            aps.append(np.mean(precs))
    return 100 * np.mean(aps)


def test_vectorized_statistics_equal_explicit_resamples():
    rng = np.random.default_rng(9)
    n = 41
    v = rng.integers(0, 6, n).astype(float)  # ties, as ranks have
    labels = rng.integers(0, 4, n)
    y = (rng.random((n, 5)) < 0.3).astype(np.uint8)
    y[:, 4] = 0  # a class with no positive: left out, as in mean_average_precision
    s = np.round(rng.standard_normal((n, 5)), 1)  # tied scores
    counts = next(stats.resample_counts(n, 6, seed=1))
    med = stats.median_stat(v)(counts)
    mpc = stats.mean_per_class_stat(v, labels)(counts)
    mp = stats.map_stat(y, s)(counts)
    for r, c in enumerate(counts):
        idx = np.repeat(np.arange(n), c.astype(int))
        assert med[r] == np.median(v[idx])
        vi, li = v[idx], labels[idx]
        assert mpc[r] == pytest.approx(np.mean([vi[li == k].mean() for k in np.unique(li)]))
        assert mp[r] == pytest.approx(_naive_resample_map(y, s, idx))
    assert stats.bootstrap(n, stats.map_stat(y, s)).estimate == pytest.approx(mean_average_precision(y, s)[0])
    # a resample without duplicates (a subset): plain AP of that subset, ties included
    sub = np.zeros((1, n))
    sub[0, ::3] = 1
    assert stats.map_stat(y, s)(sub)[0] == pytest.approx(mean_average_precision(y[::3], s[::3])[0])
    median_ci = stats.bootstrap_ci(v, stat="median")
    assert median_ci.estimate == np.median(v) and median_ci.low <= median_ci.high
    trimmed = stats.bootstrap_ci(v[:20], stat=lambda x: float(np.max(x)), n_resamples=50)
    assert trimmed.high == v[:20].max()


def test_map_bootstrap_is_centred_on_the_estimate():
    # plain AP of resamples with duplicates is biased upwards (see map_stat); this one is not
    rng = np.random.default_rng(12)
    y = (rng.random((600, 20)) < 0.05).astype(np.uint8)
    s = y + 1.5 * rng.standard_normal(y.shape)
    fn = stats.map_stat(y, s)
    dist = np.concatenate([fn(c) for c in stats.resample_counts(600, 300, seed=0)])
    est = mean_average_precision(y, s)[0]
    assert abs(dist.mean() - est) < 0.25 * dist.std(), (est, dist.mean(), dist.std())
    ci = stats.bootstrap(600, fn)
    assert ci.low < est < ci.high


def test_retrieval_intervals_equal_one_bootstrap_per_metric():
    img, txt, owner = _data(13, n=25)
    ra = retrieval_ranks(img, txt, owner)
    rb = retrieval_ranks(img + 0.5 * np.random.default_rng(0).standard_normal(img.shape), txt, owner)
    keys = retrieval_keys(ALL, (1, 5))
    many = ranking.retrieval_intervals(ra, keys, n_resamples=300, seed=2)
    pairs = ranking.retrieval_paired(ra, rb, keys, n_resamples=300, seed=2)
    assert list(many) == keys and list(pairs) == keys
    for k in keys:
        stat = ranking.parse_key(k)[1].stat
        one = stats.bootstrap_ci(per_query(ra, k), stat=stat, n_resamples=300, seed=2)
        assert (many[k].estimate, many[k].low, many[k].high) == pytest.approx(
            (one.estimate, one.low, one.high))
        assert many[k].estimate == retrieval_scores(ra, [k])[k]
        p = stats.paired_bootstrap(per_query(ra, k), per_query(rb, k), stat=stat, n_resamples=300, seed=2)
        assert (pairs[k].diff, pairs[k].low, pairs[k].high) == pytest.approx((p.diff, p.low, p.high))
    with pytest.raises(ValueError, match="same images"):
        ranking.retrieval_paired(ra, retrieval_ranks(img, txt[:-1], owner[:-1]), keys)


def test_bootstrap_input_errors():
    with pytest.raises(ValueError, match="NaN"):
        stats.bootstrap_ci([1.0, np.nan])
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="n_resamples"):
        stats.bootstrap_ci([1.0, 2.0], n_resamples=0)
    with pytest.raises(ValueError, match="same queries"):
        stats.paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        stats.bootstrap_ci([])
    c = stats.bootstrap_ci([7.0] * 5)
    assert (c.estimate, c.low, c.high) == (7.0, 7.0, 7.0)


# --- per-query record files -----------------------------------------------------------------------


def test_records_round_trip(tmp_path):
    img, txt, owner = _data(10)
    r = retrieval_ranks(img, txt, owner)
    rank, pred = class_ranks(np.random.default_rng(0).random((30, 4)), np.arange(30) % 4)
    y = (np.random.default_rng(1).random((30, 3)) < 0.4).astype(bool)
    sc = np.random.default_rng(2).random((30, 3)).astype(np.float32)
    recs = {"retrieval/caps": records.retrieval_record(r, dataset="caps"),
            "zeroshot/cls": records.classification_record(rank, pred, np.arange(30) % 4, 4),
            "zeroshot/objects": records.multilabel_record(y, sc)}
    size = records.save_per_query(tmp_path / "per_query.npz", recs, meta={"seed": 0, "fingerprint": "abc"})
    assert size == (tmp_path / "per_query.npz").stat().st_size
    back, meta = records.load_per_query(tmp_path / "per_query.npz")
    assert meta == {"seed": 0, "fingerprint": "abc"} and set(back) == set(recs)
    r2 = records.ranks_from_record(back["retrieval/caps"])
    keys = retrieval_keys(ALL)
    assert retrieval_scores(r2, keys) == retrieval_scores(r, keys)
    assert back["retrieval/caps"].meta == {"dataset": "caps"}
    cls = back["zeroshot/cls"]
    assert cls.meta["num_classes"] == 4 and cls.arrays["true_rank"].dtype == np.int16
    assert (cls.arrays["true_rank"] == rank).all() and (cls.arrays["predicted"] == pred).all()
    ml = back["zeroshot/objects"]
    assert ml.arrays["scores"].dtype == np.float32 and ml.arrays["labels"].dtype == np.uint8
    assert mean_average_precision(ml.arrays["labels"], ml.arrays["scores"]) == mean_average_precision(y, sc)


def test_records_invalid_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        records.load_per_query(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="unreadable"):
        records.load_per_query(tmp_path / "junk.npz")
    np.savez(tmp_path / "old.npz", __schema__=np.array("bench.per_query/0"), __meta__=np.array("{}"))
    with pytest.raises(DataError, match="schema"):
        records.load_per_query(tmp_path / "old.npz")
    r = retrieval_ranks(*_data(11)[:2], _data(11)[2])
    good = records.retrieval_record(r)
    records.save_per_query(tmp_path / "ok.npz", {"r": good})
    with np.load(tmp_path / "ok.npz") as z:
        data = dict(z)
    bad_first = dict(data, **{"r/i2t_first": data["r/i2t_first"] + 1})
    np.savez(tmp_path / "bad.npz", **bad_first)
    with pytest.raises(DataError, match="i2t_first"):
        records.load_per_query(tmp_path / "bad.npz")
    short = dict(data, **{"r/t2i": data["r/t2i"][:-1]})
    np.savez(tmp_path / "short.npz", **short)
    with pytest.raises(DataError, match="t2i has"):
        records.load_per_query(tmp_path / "short.npz")
    with pytest.raises(ValueError, match="labels values"):
        records.save_per_query(tmp_path / "x.npz", {"c": records.classification_record([0], [0], [5], 3)})
