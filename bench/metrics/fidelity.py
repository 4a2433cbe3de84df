"""Fidelity of a fast mode: how far its vectors and rankings are from float32's on the same inputs.

Plain numpy on two sets of L2-normalized vectors of the same items, one from the fast mode (bfloat16,
float16, torch.compile) and one from the same checkpoint run in float32, eager:
  cosine                 per item, cos(fast_i, float32_i): min and mean;
  rank agreement         per query, the ranking of the candidates by the fast scores against the ranking
                         by the float32 scores (queries and candidates both from the fast mode / both from
                         float32):
    top1_agreement       % of queries whose top-1 candidate is the same;
    top{k}_overlap       mean |top-k fast ∩ top-k float32| / k, in %;
    spearman             mean over queries of Spearman's rank correlation of the two score rows (average
                         ranks at ties), i.e. of the whole ranking.
Directions: i2i (each image against the other images of the sample, itself left out), and, when the
images have captions, i2t (images against the captions) and t2i (captions against the images).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def cosines(fast: Any, ref: Any) -> np.ndarray:
    """cos(fast_i, ref_i) per row (the vectors need not be normalized)."""
    a, b = np.asarray(fast, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"fast and reference vectors differ in shape: {a.shape} vs {b.shape}")
    denom = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.where(denom > 0, denom, 1.0)


def _rank_rows(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) along each row, ties sharing the mean of their ranks."""
    from scipy.stats import rankdata

    return rankdata(x, axis=1)


def rank_agreement(fast_scores: Any, ref_scores: Any, k: int = 5) -> dict[str, float]:
    """Agreement of the per-row rankings of two score matrices [queries, candidates] (see the module
    docstring). Rows with fewer than 2 candidates carry no ranking: an empty matrix gives {}."""
    f, r = np.asarray(fast_scores, dtype=np.float64), np.asarray(ref_scores, dtype=np.float64)
    if f.shape != r.shape:
        raise ValueError(f"score matrices differ in shape: {f.shape} vs {r.shape}")
    if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] < 2:
        return {}
    k = min(k, f.shape[1])
    top1 = float(np.mean(f.argmax(1) == r.argmax(1))) * 100
    # Stable sort on the negated scores: ties keep candidate order on both sides.
    top_f = np.argsort(-f, axis=1, kind="stable")[:, :k]
    top_r = np.argsort(-r, axis=1, kind="stable")[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_f.tolist(), top_r.tolist())]) * 100
    rf, rr = _rank_rows(f), _rank_rows(r)
    rf -= rf.mean(1, keepdims=True)
    rr -= rr.mean(1, keepdims=True)
    denom = np.sqrt((rf * rf).sum(1) * (rr * rr).sum(1))
    # A row whose scores are all equal on one side has no ranking to correlate: counts as agreement
    # only when both sides are constant.
    rho = np.where(denom > 0, (rf * rr).sum(1) / np.where(denom > 0, denom, 1.0),
                   np.where((rf == 0).all(1) & (rr == 0).all(1), 1.0, 0.0))
    return {"top1_agreement": top1, f"top{k}_overlap": float(overlap), "spearman": float(rho.mean())}


def leave_one_out(scores: np.ndarray) -> np.ndarray:
    """[n, n] self-similarity -> [n, n-1]: each row without its own column (the query itself)."""
    n = scores.shape[0]
    keep = ~np.eye(n, dtype=bool)
    return scores[keep].reshape(n, n - 1)


def fidelity(fast_images: Any, ref_images: Any, fast_texts: Any = None, ref_texts: Any = None,
             k: int = 5) -> dict[str, float]:
    """Every figure of the module docstring, keyed e.g. 'image_cosine_min', 'i2t_top1_agreement'."""
    fi, ri = np.asarray(fast_images, dtype=np.float64), np.asarray(ref_images, dtype=np.float64)
    cos = cosines(fi, ri)
    out: dict[str, float] = {"image_cosine_min": float(cos.min()), "image_cosine_mean": float(cos.mean())}
    if len(fi) >= 3:
        for name, v in rank_agreement(leave_one_out(fi @ fi.T), leave_one_out(ri @ ri.T), k).items():
            out[f"i2i_{name}"] = v
    if fast_texts is not None and ref_texts is not None and len(fast_texts):
        ft, rt = np.asarray(fast_texts, dtype=np.float64), np.asarray(ref_texts, dtype=np.float64)
        cos_t = cosines(ft, rt)
        out.update(text_cosine_min=float(cos_t.min()), text_cosine_mean=float(cos_t.mean()))
        for direction, (fs, rs) in {"i2t": (fi @ ft.T, ri @ rt.T), "t2i": (ft @ fi.T, rt @ ri.T)}.items():
            for name, v in rank_agreement(fs, rs, k).items():
                out[f"{direction}_{name}"] = v
    return out
