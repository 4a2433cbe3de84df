"""Zero-shot classification and the shared score metrics, against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.errors import ConfigError
from bench.metrics.zeroshot import (
    DEFAULT_TEMPLATES,
    average_precision,
    class_text_embeddings,
    mean_average_precision,
    topk_metrics,
    zeroshot_classify,
)


def test_hand_made_single_label_six_classes():
    class_emb = torch.eye(6)  # so each image row IS its score vector
    img = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # label 0: rank 0
        [0.5, 0.4, 0.3, 0.2, 0.1, 0.6],  # label 1: 0.5, 0.6 above -> rank 2
        [0.6, 0.5, 0.45, 0.1, 0.2, 0.3],  # label 3: all 5 others above -> rank 5 (top5 miss)
        [0.0, 0.0, 0.0, 0.7, 0.0, 0.0],  # label 3: rank 0
        [0.0, 0.0, 0.0, 0.0, 0.5, 0.5],  # label 4: tie with class 5 -> counted as rank 1
        [0.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # label 1: rank 0
    ])
    labels = np.array([0, 1, 3, 3, 4, 1])
    r = zeroshot_classify(img, class_emb, labels)
    assert r["top1"] == pytest.approx(50.0)
    assert r["top5"] == pytest.approx(500 / 6)
    # per class: c0 1/1, c1 1/2, c3 1/2, c4 0/1; classes 2 and 5 have no image
    assert r["per_class_recall"] == [100.0, 50.0, None, 50.0, 0.0, None]
    assert r["mean_per_class_recall"] == pytest.approx(50.0)
    assert zeroshot_classify(img.numpy(), class_emb.numpy(), list(labels)) == r


def test_constant_scores_are_not_credited():
    r = topk_metrics(np.zeros((8, 3)), np.array([0, 0, 0, 0, 1, 1, 2, 2]))
    # a stable argsort would credit class 0 (50%); ties count against the sample
    assert r["top1"] == 0.0 and r["mean_per_class_recall"] == 0.0
    assert r["top5"] == 100.0  # k = min(5, 3 classes)


def test_top5_with_fewer_classes_uses_all_classes():
    r = topk_metrics(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([0, 0]))
    assert r["top1"] == 50.0 and r["top5"] == 100.0


def test_nan_score_is_a_miss():
    r = topk_metrics(np.array([[np.nan, 0.0, 0.0], [1.0, 0.0, 0.0]]), np.array([0, 0]))
    assert r["top1"] == 50.0 and r["top5"] == 50.0


def test_multilabel_map_hand_computed_with_a_tie_and_an_absent_class():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0]])
    scores = np.array([[0.9, 0.3, 0.0], [0.2, 0.3, 0.1], [0.8, 0.9, 0.2], [0.1, 0.3, 0.3], [0.5, 0.1, 0.4]])
    # class 0: + - + + -  -> (1/1 + 2/3 + 3/4) / 3
    ap0 = (1 + 2 / 3 + 3 / 4) / 3
    # class 1: 0.9(+), then {0.3: -, +, -} enter together: P=2/4 at R=1 -> 0.5*1 + 0.5*0.5
    ap1 = 0.75
    r = zeroshot_classify(torch.tensor(scores, dtype=torch.float32), torch.eye(3), labels, multilabel=True)
    assert r["per_class_ap"][0] == pytest.approx(100 * ap0)
    assert r["per_class_ap"][1] == pytest.approx(100 * ap1)
    assert r["per_class_ap"][2] is None
    assert r["mAP"] == pytest.approx(100 * (ap0 + ap1) / 2)


def _stepwise_ap(y, s) -> float:
    """An independent AP: sort by score, one step per group of equal scores, precision times the
    recall gained (the definition, written out)."""
    y, s = np.asarray(y, bool), np.asarray(s, float)
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tp = np.cumsum(y)[last]
    return float(np.sum(np.diff(np.r_[0.0, tp / y.sum()]) * tp / (last + 1)))


def test_average_precision_by_hand_and_with_ties():
    # ranked 1 (pos), 2 (neg), 3 (pos): AP = (1/1 + 2/3) / 2
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.1]) == pytest.approx((1 + 2 / 3) / 2)
    # a tie between a positive and a negative enters together: precision 1/2 at recall 1
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    # infinite scores (a class never seen in training) rank and tie like any other score
    assert average_precision([0, 1, 1], [-np.inf, 0.5, -np.inf]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert np.isnan(average_precision([0, 0], [0.1, 0.2]))
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.random(40) < 0.3
        y[0] = True
        s = rng.integers(0, 6, 40).astype(float)  # coarse scores: many ties
        assert average_precision(y, s) == pytest.approx(_stepwise_ap(y, s), abs=1e-12)
    labels = (rng.random((30, 4)) < 0.4).astype(int)
    labels[:, 3] = 0
    scores = rng.standard_normal((30, 4))
    m, per = mean_average_precision(labels, scores)
    want = [100 * _stepwise_ap(labels[:, j], scores[:, j]) for j in range(3)]
    assert per[:3] == pytest.approx(want) and per[3] is None
    assert m == pytest.approx(np.mean(want))


def test_class_text_embeddings_normalize_average_renormalize():
    seen: list[str] = []
    table = {"a cat": [3.0, 4.0], "the cat": [1.0, 0.0], "a dog": [0.0, 2.0], "the dog": [0.0, 5.0]}

    def embed(texts):
        seen.extend(texts)
        return np.array([table[t] for t in texts])

    emb = class_text_embeddings(embed, ["cat", "dog"], ["a {c}", "the {c}"])
    assert seen == ["a cat", "the cat", "a dog", "the dog"]  # one call, class-major order
    # cat: mean([0.6, 0.8], [1, 0]) = [0.8, 0.4] -> / sqrt(0.8) ; dog: [0, 1]
    want = torch.tensor([[0.8, 0.4], [0.0, 1.0]]) / torch.tensor([[0.8**0.5], [1.0]])
    assert emb.dtype == torch.float32 and torch.allclose(emb, want, atol=1e-6)


@pytest.mark.parametrize("bad", ["a photo", "a photo of {}", "a {c} of {other}", "a {c"])
def test_bad_template_is_a_config_error_naming_it(bad):
    with pytest.raises(ConfigError, match="template"):
        class_text_embeddings(lambda t: np.ones((len(t), 2)), ["cat"], ["a {c}", bad])


def test_default_templates_have_the_placeholder():
    assert len(DEFAULT_TEMPLATES) >= 3 and all("{c}" in t for t in DEFAULT_TEMPLATES)
    assert DEFAULT_TEMPLATES[0].format(c="dog") == "a photo of a dog."


def test_end_to_end_with_fake_text_embedder():
    # class c's text vector is e_c, the image of class c is near e_c: all correct
    names = ["cat", "dog", "car"]

    def embed(texts):
        return np.array([np.eye(3)[next(i for i, n in enumerate(names) if n in t)] for t in texts])

    cls = class_text_embeddings(embed, names, DEFAULT_TEMPLATES)
    img = np.eye(3)[[0, 1, 2, 2]] + 0.1
    r = zeroshot_classify(img, cls, [0, 1, 2, 2])
    assert r["top1"] == 100.0 and r["mean_per_class_recall"] == 100.0


def test_shape_and_label_errors():
    with pytest.raises(ValueError, match="share D"):
        zeroshot_classify(np.ones((2, 3)), np.ones((4, 2)), [0, 1])
    with pytest.raises(ValueError, match="labels"):
        zeroshot_classify(np.ones((2, 3)), np.eye(3), [0])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        zeroshot_classify(np.ones((2, 3)), np.eye(3), [0, 3])
    with pytest.raises(ValueError, match="0/1"):
        zeroshot_classify(np.ones((2, 3)), np.eye(3), np.full((2, 3), 2), multilabel=True)
