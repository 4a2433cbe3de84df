"""recall_at_k against hand-computed cases and an independent sort-based per-query loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.metrics.retrieval import recall_at_k


def _from_scores(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings whose dot products are exactly the score matrix s [N images, M captions]."""
    s = np.asarray(s, dtype=np.float64)
    return np.eye(s.shape[0]), s.T.copy()


def _naive(img, txt, owner, ks):
    """Per-query loop from the definition, by a different route than the code: sort the candidates
    by score, placing positives AFTER negatives on equal scores (pessimistic), and read the rank of
    the first positive."""
    s = np.asarray(img, dtype=np.float64) @ np.asarray(txt, dtype=np.float64).T
    n, m = s.shape
    i2t_rank, t2i_rank = [], []
    for i in range(n):
        is_pos = [owner[j] == i for j in range(m)]
        if not any(is_pos):
            continue
        order = sorted(range(m), key=lambda j: (-s[i, j], is_pos[j]))
        i2t_rank.append(next(r for r, j in enumerate(order) if is_pos[j]))
    for j in range(m):
        order = sorted(range(n), key=lambda i: (-s[i, j], i == owner[j]))
        t2i_rank.append(order.index(owner[j]))
    out = {}
    for k in ks:
        out[f"i2t_recall@{k}"] = 100.0 * np.mean([r < k for r in i2t_rank])
    for k in ks:
        out[f"t2i_recall@{k}"] = 100.0 * np.mean([r < k for r in t2i_rank])
    return out


def _hand_case():
    # 3 images; image 0 owns captions 0-4 (5), image 1 owns 5-11 (7), image 2 owns 12-17 (6).
    owner = np.array([0] * 5 + [1] * 7 + [2] * 6)
    s = np.zeros((3, 18))
    s[0, 0:5] = [0.5, 0.9, 0.2, 0.1, 0.3]
    s[0, 5], s[0, 6] = 0.95, 0.9  # negatives of image 0: one above, one TIED with its best positive
    s[1, 5:12] = [0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    # image 2: every score 0 -> its positives tie with all 12 negatives
    return s, owner


def test_hand_computed_variable_captions_and_ties():
    s, owner = _hand_case()
    img, txt = _from_scores(s)
    r = recall_at_k(img, txt, owner, ks=(1, 2, 3, 5, 10))
    # i2t ranks (negatives >= best positive): img0: 0.95 and 0.9 >= 0.9 -> 2; img1: 0; img2: 12.
    assert r["i2t_recall@1"] == pytest.approx(100 / 3)
    assert r["i2t_recall@2"] == pytest.approx(100 / 3)
    assert r["i2t_recall@3"] == pytest.approx(200 / 3)
    assert r["i2t_recall@5"] == pytest.approx(200 / 3)
    assert r["i2t_recall@10"] == pytest.approx(200 / 3)
    # t2i ranks: captions 0-4 -> 0; 5 (0.95 > 0.8) and 6 (0.9 > 0.1) -> 1; 7-11 -> 0;
    # 12-17 score 0 with all three images -> 2 (both negatives tie).
    assert r["t2i_recall@1"] == pytest.approx(100 * 10 / 18)
    assert r["t2i_recall@2"] == pytest.approx(100 * 12 / 18)
    assert r["t2i_recall@3"] == pytest.approx(100.0)
    assert r["t2i_recall@10"] == pytest.approx(100.0)
    assert list(r) == [f"{d}_recall@{k}" for d in ("i2t", "t2i") for k in (1, 2, 3, 5, 10)]
    assert r == pytest.approx(_naive(img, txt, owner, (1, 2, 3, 5, 10)))


def test_caption_order_does_not_matter():
    s, owner = _hand_case()
    perm = np.random.default_rng(3).permutation(len(owner))
    img, txt = _from_scores(s[:, perm])
    a = recall_at_k(img, txt, owner[perm], ks=(1, 2, 3))
    b = recall_at_k(*_from_scores(s), owner, ks=(1, 2, 3))
    assert a == b


def test_constant_embedder_scores_zero_not_inflated():
    n, per = 12, 5
    img = np.full((n, 4), 0.5, dtype=np.float32)
    txt = np.full((n * per, 4), 0.5, dtype=np.float32)
    owner = np.repeat(np.arange(n), per)
    r = recall_at_k(img, txt, owner, ks=(1, 5, 10, 11, 12))
    # i2t: 55 negatives tie with every positive. t2i: 11 other images tie -> hit only at k >= 12.
    for k in (1, 5, 10, 11, 12):
        assert r[f"i2t_recall@{k}"] == 0.0
    assert r["t2i_recall@11"] == 0.0 and r["t2i_recall@12"] == 100.0


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 10_000])
def test_chunked_matches_naive_loop_on_random_data(chunk):
    rng = np.random.default_rng(0)
    n, d = 25, 8
    counts = rng.integers(1, 8, size=n)  # 1..7 captions per image
    counts[[4, 17]] = 0  # two images without captions: excluded from i2t, still t2i negatives
    owner = rng.permutation(np.repeat(np.arange(n), counts))
    img = rng.standard_normal((n, d))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = img[owner] + 1.2 * rng.standard_normal((len(owner), d))
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    ks = (1, 2, 5, 10)
    got = recall_at_k(img, txt, owner, ks=ks, chunk_size=chunk)
    want = _naive(img, txt, owner, ks)
    assert got == pytest.approx(want, abs=1e-9)
    assert 0 < got["i2t_recall@1"] < 100 and 0 < got["t2i_recall@1"] < 100  # not a degenerate case


@pytest.mark.parametrize("chunk", [1, 3, 16, 1000])
def test_chunked_matches_naive_loop_with_many_exact_ties(chunk):
    # small-integer vectors: many exactly equal scores, exercised in every direction
    rng = np.random.default_rng(1)
    n = 20
    owner = rng.permutation(np.repeat(np.arange(n), rng.integers(1, 8, size=n)))
    img = rng.integers(-1, 2, size=(n, 3)).astype(np.float64)
    txt = rng.integers(-1, 2, size=(len(owner), 3)).astype(np.float64)
    ks = (1, 3, 5, 10)
    assert recall_at_k(img, txt, owner, ks=ks, chunk_size=chunk) == pytest.approx(_naive(img, txt, owner, ks))


def test_torch_and_numpy_inputs_and_half_precision_agree():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(10, 16, generator=g), dim=1)
    owner = torch.arange(30) // 3
    txt = torch.nn.functional.normalize(img[owner] + torch.randn(30, 16, generator=g), dim=1)
    a = recall_at_k(img, txt, owner)
    b = recall_at_k(img.numpy(), txt.numpy(), owner.numpy().astype(np.int32))
    assert a == b
    c = recall_at_k(img.to(torch.bfloat16), txt.to(torch.bfloat16), owner)
    assert set(c) == set(a)


def test_k_larger_than_gallery_is_always_a_hit():
    img = np.eye(2)
    txt = np.array([[0.0, 1.0], [1.0, 0.0]])  # each caption prefers the other image
    r = recall_at_k(img, txt, np.array([0, 1]), ks=(1, 2, 50))
    assert r["i2t_recall@1"] == 0.0 and r["i2t_recall@2"] == 100.0 and r["i2t_recall@50"] == 100.0
    assert r["t2i_recall@1"] == 0.0 and r["t2i_recall@2"] == 100.0


def test_image_without_captions_excluded_from_i2t_denominator():
    s = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])  # image 2 owns nothing but outscores all
    img, txt = _from_scores(s)
    r = recall_at_k(img, txt, np.array([0, 1]), ks=(1, 2))
    assert r["i2t_recall@1"] == 100.0  # 2 queries (images 0, 1), not 3
    assert r["t2i_recall@1"] == 0.0 and r["t2i_recall@2"] == 100.0  # image 2 ranks above each owner


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(text_emb=np.ones((3, 5))), "dims differ"),
        (dict(text_to_image=np.array([0, 1])), "shape"),
        (dict(text_to_image=np.array([0, 1, 4])), r"\[0, 4\)"),
        (dict(text_to_image=np.array([0, -1, 2])), r"\[0, 4\)"),
        (dict(text_to_image=np.array([0.0, 1.0, 2.0])), "integer"),
        (dict(ks=(0, 5)), "positive"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(image_emb=np.ones(4)), "2-D"),
        (dict(image_emb=np.full((4, 4), np.nan)), "NaN"),
        (dict(image_emb=[[1.0]]), "numpy"),
    ],
)
def test_programmer_errors_are_value_errors(kwargs, match):
    args = dict(image_emb=np.eye(4), text_emb=np.eye(4)[:3], text_to_image=np.array([0, 1, 2]))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        recall_at_k(**args)


# --- per-query ranks (retrieval_ranks) ------------------------------------------------------------

from bench.metrics.retrieval import recall_from_ranks, retrieval_ranks  # noqa: E402


def _naive_ranks(s, owner):
    """From the definition by full sorts: candidates ordered by (-score, positive after negative,
    caption index); i2t: position of each positive caption, t2i: position of the caption's image."""
    n, m = s.shape
    first, cap, t2i = np.full(n, -1), np.full(m, -1), np.full(m, -1)
    for i in range(n):
        is_pos = owner == i
        order = sorted(range(m), key=lambda j: (-s[i, j], bool(is_pos[j]), j))
        for r, j in enumerate(order):
            if is_pos[j]:
                cap[j] = r
                first[i] = r if first[i] < 0 else first[i]
    for j in range(m):
        order = sorted(range(n), key=lambda i: (-s[i, j], i == owner[j]))
        t2i[j] = order.index(owner[j])
    return first, cap, t2i


def test_ranks_hand_computed_with_ties():
    s, owner = _hand_case()
    r = retrieval_ranks(*_from_scores(s), owner)
    assert r.i2t_first.dtype == np.int32 and r.t2i.dtype == np.int32
    assert r.i2t_first.tolist() == [2, 0, 12]
    # image 0: positives 0.9, 0.5, 0.3, 0.2, 0.1 behind the negatives 0.95 and 0.9 (tie: negative first)
    assert r.i2t_caption[:5].tolist() == [3, 2, 5, 6, 4]
    # image 1: 0.8 first, then six tied 0.1 positives in caption order; image 2: 12 tied negatives first
    assert r.i2t_caption[5:12].tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert r.i2t_caption[12:].tolist() == list(range(12, 18))
    assert r.t2i.tolist() == [0] * 5 + [1, 1] + [0] * 5 + [2] * 6
    assert (r.n_images, r.n_captions) == (3, 18)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_ranks_match_naive_sorts_with_many_ties(chunk):
    rng = np.random.default_rng(1)
    for _ in range(4):
        n = 15
        counts = rng.integers(0, 8, size=n)  # 0..7 captions per image
        owner = rng.permutation(np.repeat(np.arange(n), counts))
        img = rng.integers(-1, 2, size=(n, 3)).astype(np.float64)
        txt = rng.integers(-1, 2, size=(len(owner), 3)).astype(np.float64)
        first, cap, t2i = _naive_ranks(img @ txt.T, owner)
        r = retrieval_ranks(img, txt, owner, chunk_size=chunk)
        assert r.i2t_first.tolist() == first.tolist()
        assert r.t2i.tolist() == t2i.tolist()
        assert r.text_to_image.tolist() == owner.tolist()
        # tied positives of one image may swap ranks (binary relevance): compare per image as sets
        for i in range(n):
            assert sorted(r.i2t_caption[owner == i]) == sorted(cap[owner == i])


@pytest.mark.parametrize("chunk", [1, 4, 16, 10_000])
def test_recall_from_ranks_equals_recall_at_k_exactly(chunk):
    rng = np.random.default_rng(0)
    n, d = 30, 8
    counts = rng.integers(1, 8, size=n)
    counts[[3, 11]] = 0
    owner = rng.permutation(np.repeat(np.arange(n), counts))
    img = rng.standard_normal((n, d)).astype(np.float32)
    txt = (img[owner] + 1.2 * rng.standard_normal((len(owner), d))).astype(np.float32)
    ks = (1, 2, 5, 10, 50)
    r = retrieval_ranks(img, txt, owner, chunk_size=chunk)
    assert recall_from_ranks(r, ks) == recall_at_k(img, txt, owner, ks, chunk_size=chunk)
    ti, tt = rng.integers(-1, 2, size=(n, 3)).astype(np.float32), rng.integers(-1, 2, size=(len(owner), 3))
    r = retrieval_ranks(ti, tt.astype(np.float32), owner, chunk_size=chunk)
    assert recall_from_ranks(r, ks) == recall_at_k(ti, tt.astype(np.float32), owner, ks, chunk_size=chunk)


def test_ranks_constant_embedder_and_image_without_caption():
    n, per = 6, 3
    owner = np.repeat(np.arange(n), per)
    owner = owner[owner != 4]  # image 4 owns nothing: no i2t query, still a t2i negative
    r = retrieval_ranks(np.full((n, 4), 0.5), np.full((len(owner), 4), 0.5), owner)
    m = len(owner)
    assert r.i2t_first.tolist() == [m - per] * 4 + [-1] + [m - per]  # every negative tie ranks first
    assert sorted(r.i2t_caption[owner == 0]) == [m - per, m - per + 1, m - per + 2]
    assert set(r.t2i.tolist()) == {n - 1}


def test_ranks_validate_like_recall_at_k():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        retrieval_ranks(np.eye(2), np.eye(2), np.array([0, 2]))
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_ranks(np.eye(2), np.eye(2), np.array([0, 1]), chunk_size=0)


def test_count_ge_numpy_and_torch_paths_agree():
    from bench.metrics.retrieval import _count_ge

    s = torch.randint(-2, 3, (7, 11)).double()  # ties
    s[0, :3] = float("-inf")
    for dim, thr in ((1, torch.randint(-2, 3, (7,)).double()), (0, torch.randint(-2, 3, (11,)).double())):
        a, t = s.tolist(), thr.tolist()
        want = ([sum(x >= t[i] for x in a[i]) for i in range(7)] if dim == 1 else
                [sum(a[i][j] >= t[j] for i in range(7)) for j in range(11)])
        for use_numpy in (True, False):  # numpy on CPU, torch on accelerators
            assert _count_ge(s, thr, dim, use_numpy).tolist() == want
