"""Zero-shot classification: class names through prompt templates, averaged per class (CLIP protocol).

Also home of the score-matrix metrics shared with the linear probe (`topk_metrics`,
`mean_average_precision`, through scikit-learn's `average_precision_score`).

Precision: the prompt average and the scores are computed in float64. The towers' float32 outputs
differ between CPU kernels in the last bits (ATen's vectorized reductions sum in a different order
under AVX2 / AVX-512 / default); in float64 this step adds no kernel-dependent noise of its own, so
a zero-shot figure changes only when the embeddings themselves put two classes within ~1e-7.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# A short, generic subset of the CLIP ImageNet prompt ensemble; `{c}` is the class name.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a blurry photo of a {c}.",
    "a photo of the large {c}.",
    "a photo of the small {c}.",
    "a drawing of a {c}.",
    "a close-up photo of a {c}.",
    "a bright photo of a {c}.",
    "a photo of many {c}.",
)


def _to_numpy(x: Any, name: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return np.asarray(x)


def class_text_embeddings(
    embed_texts: Callable[[list[str]], Any], class_names: Sequence[str], templates: Sequence[str]
):
    """[C, D] float32 tensor: each class's prompts `template.format(c=name)` embedded (one call for
    all prompts), each prompt vector normalized, averaged over templates, re-normalized (in
    float64, rounded to float32 at the end: see the module docstring)."""
    import torch

    from bench.errors import ConfigError

    class_names, templates = list(class_names), list(templates)
    if not class_names:
        raise ValueError("class_names is empty")
    if not templates:
        raise ConfigError("zero-shot templates list is empty; give at least one, e.g. 'a photo of a {c}.'")
    for t in templates:
        if "{c}" not in t:
            raise ConfigError(f"zero-shot template {t!r} has no '{{c}}' placeholder for the class name")
        try:
            t.format(c="x")
        except (IndexError, KeyError, ValueError) as e:
            raise ConfigError(f"zero-shot template {t!r} is not a valid format string with only '{{c}}': {e}")
    prompts = [t.format(c=name) for name in class_names for t in templates]
    emb = torch.as_tensor(_to_numpy(embed_texts(prompts), "embed_texts output"), dtype=torch.float32).double()
    if emb.ndim != 2 or emb.shape[0] != len(prompts):
        raise ValueError(f"embed_texts returned shape {tuple(emb.shape)} for {len(prompts)} prompts; "
                         f"expected [{len(prompts)}, D]")
    emb = torch.nn.functional.normalize(emb, dim=-1)
    emb = emb.reshape(len(class_names), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1).float()


def class_scores(image_emb: Any, class_emb: Any) -> np.ndarray:
    """Scores [N, C] = image . class embedding in float64: the matrix `zeroshot_classify` scores."""
    img = _to_numpy(image_emb, "image_emb").astype(np.float64)
    cls = _to_numpy(class_emb, "class_emb").astype(np.float64)
    if img.ndim != 2 or cls.ndim != 2 or img.shape[1] != cls.shape[1]:
        raise ValueError(
            f"image_emb [N, D] and class_emb [C, D] must share D; got {img.shape} and {cls.shape}"
        )
    return img @ cls.T


def zeroshot_classify(image_emb: Any, class_emb: Any, labels: Any, multilabel: bool = False) -> dict:
    """Score = image . class embedding, in float64.

    Single-label (`labels` ints [N] in [0, C)): top1, top5, mean_per_class_recall in percent, plus
    `per_class_recall` (list, None for classes absent from the labels). Multi-label (`labels` 0/1
    [N, C]): mAP in percent over classes with >= 1 positive, plus `per_class_ap`. See `topk_metrics`
    for how ties and top5 with fewer than 5 classes are handled.
    """
    scores = class_scores(image_emb, class_emb)
    labels = np.asarray(labels)
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels for {len(scores)} images")
    if multilabel:
        m, per = mean_average_precision(labels, scores)
        return {"mAP": m, "per_class_ap": per}
    return topk_metrics(scores, labels)


def _check_single_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    if labels.ndim != 1:
        raise ValueError(f"single-label labels must be 1-D, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.mod(labels, 1) == 0):
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got min {labels.min()}, max {labels.max()}")
    return labels


def topk_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    """top1 / top5 / mean_per_class_recall (percent) and `per_class_recall` from scores [N, C].

    Ties count against the sample, as in retrieval: a sample is right at k when FEWER than k other
    classes score >= its true class (a constant scorer gets ~0, not the share of class 0).
    top5 uses k = min(5, C): with fewer than 5 classes it is top-C and therefore 100.
    mean_per_class_recall averages top-1 recall over the classes present in `labels`;
    `per_class_recall[j]` is None for a class with no sample.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [N, C], got shape {scores.shape}")
    n, c = scores.shape
    labels = _check_single_labels(np.asarray(labels), c)
    if n == 0:
        raise ValueError("no samples to score")
    true = scores[np.arange(n), labels]
    # -1 removes the true class itself (always >= itself); NaN scores never count as >=.
    rank = (scores >= true[:, None]).sum(1) - 1
    rank = np.where(np.isnan(true), c, rank)
    k5 = min(5, c)
    hit1, hit5 = rank < 1, rank < k5
    per_class: list[float | None] = []
    for j in range(c):
        sel = labels == j
        per_class.append(float(100.0 * hit1[sel].mean()) if sel.any() else None)
    present = [v for v in per_class if v is not None]
    return {
        "top1": float(100.0 * hit1.mean()),
        "top5": float(100.0 * hit5.mean()),
        "mean_per_class_recall": float(np.mean(present)),
        "per_class_recall": per_class,
    }


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """AP of one class (fraction): scikit-learn's `average_precision_score` (the step-wise sum over
    thresholds; samples with equal scores enter together); NaN when the class has no positive."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(y_true).astype(bool)
    if not y.any():
        return float("nan")
    s = np.asarray(score, dtype=np.float64)
    if np.isinf(s).any():  # scikit-learn refuses infinities: their ranks order and tie the same way
        s = np.unique(s, return_inverse=True)[1].astype(np.float64)
    return float(average_precision_score(y, s))


def mean_average_precision(labels: Any, scores: Any) -> tuple[float, list[float | None]]:
    """Macro AP in percent over classes with at least one positive, and per-class AP in percent
    (None for classes without a positive). `labels` 0/1 [N, C], `scores` [N, C]."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(f"multi-label labels {labels.shape} and scores {scores.shape} must both be [N, C]")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("multi-label labels must be 0/1 (or bool)")
    per: list[float | None] = []
    for j in range(labels.shape[1]):
        ap = average_precision(labels[:, j], scores[:, j])
        per.append(None if np.isnan(ap) else 100.0 * ap)
    present = [v for v in per if v is not None]
    return (float(np.mean(present)) if present else float("nan")), per
