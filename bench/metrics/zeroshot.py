"""Zero-shot classification: class names through prompt templates, averaged per class."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_TEMPLATES = (
    "a photo of a {c}.",
    "a picture of a {c}.",
    "a drawing of a {c}.",
    "an image showing a {c}.",
)


def class_text_embeddings(embed_texts: Callable, class_names: Sequence[str], templates: Sequence[str]):
    """[C, D]: each class's prompts embedded in one call, averaged, re-normalized."""
    import torch

    prompts = [t.format(c=name) for name in class_names for t in templates]
    emb = torch.as_tensor(embed_texts(prompts), dtype=torch.float32)
    emb = emb.reshape(len(class_names), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)


def zeroshot_classify(image_emb, class_emb, labels, multilabel: bool = False) -> dict:
    """Single-label: top1, top5, mean_per_class_recall (percent) + per_class_recall list.
    Multi-label: mAP (percent) + per_class_ap. top5 uses k = min(5, classes)."""
    import torch

    img = torch.as_tensor(np.asarray(image_emb) if not isinstance(image_emb, torch.Tensor) else image_emb,
                          dtype=torch.float32)
    cls = torch.as_tensor(class_emb, dtype=torch.float32)
    scores = (img @ cls.T).numpy()
    labels = np.asarray(labels)
    if multilabel:
        from bench.metrics.linear_probe import mean_average_precision

        m, per = mean_average_precision(labels, scores)
        return {"mAP": m, "per_class_ap": per}
    return topk_metrics(scores, labels)


def topk_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    """top1 / top5 / mean per-class recall from a score matrix; ties broken by class index."""
    n, c = scores.shape
    k5 = min(5, c)
    order = np.argsort(-scores, axis=1, kind="stable")
    top1 = order[:, 0] == labels
    top5 = (order[:, :k5] == labels[:, None]).any(1)
    per_class = []
    for j in range(c):
        sel = labels == j
        per_class.append(float(100.0 * top1[sel].mean()) if sel.any() else None)
    present = [v for v in per_class if v is not None]
    return {"top1": float(100.0 * top1.mean()), "top5": float(100.0 * top5.mean()),
            "mean_per_class_recall": float(np.mean(present)) if present else float("nan"),
            "per_class_recall": per_class}
