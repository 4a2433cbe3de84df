"""Linear probe: separable data, determinism, the C sweep against independent cold fits, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.metrics.linear_probe import COARSE_C, REFINE_FACTORS, linear_probe, mean_average_precision


def _blobs(n_per, centers, seed, noise):
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + noise * rng.standard_normal((n_per, len(c))) for c in centers])
    return x.astype(np.float32), np.repeat(np.arange(len(centers)), n_per)


def _l2(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_separable_data_is_perfect_and_run_is_deterministic():
    centers = np.eye(7, 16) * 3
    train, test = _blobs(12, centers, 0, 0.3), _blobs(6, centers, 1, 0.3)
    a = linear_probe(*train, *test, seed=0)
    b = linear_probe(*train, *test, seed=0)
    assert a.metrics["top1"] == 100.0 and a.metrics["top5"] == 100.0
    assert a.metrics["mean_per_class_recall"] == 100.0
    assert a.details["per_class_accuracy"] == [100.0] * 7
    assert a.metrics == b.metrics and a.details == b.details
    assert set(a.metrics) == {"top1", "top5", "mean_per_class_recall", "best_C"}
    assert a.details["top5_k"] == 5 and a.details["val_source"].startswith("stratified")


def test_features_are_renormalized():
    centers = np.eye(4, 8) * 1.0
    (xtr, ytr), (xte, yte) = _blobs(15, centers, 0, 0.8), _blobs(10, centers, 1, 0.8)
    # powers of two keep the normalized values bit-identical, so the results must be identical
    scale = 2.0 ** np.random.default_rng(5).integers(-6, 7, size=(len(xtr), 1))
    a = linear_probe(xtr, ytr, xte, yte)
    b = linear_probe((xtr * scale).astype(np.float32), ytr, xte * 8, yte)
    assert a.metrics == b.metrics and a.details == b.details


def test_sweep_structure_and_choice():
    centers = np.eye(4, 32) * 1.0
    r = linear_probe(*_blobs(25, centers, 0, 1.0), *_blobs(25, centers, 1, 1.0), seed=0)
    sweep = r.details["c_sweep"]
    assert [c for c, _ in sweep[: len(COARSE_C)]] == pytest.approx(list(COARSE_C))
    coarse = sweep[: len(COARSE_C)]
    best_coarse = max(coarse, key=lambda cs: (cs[1], -cs[0]))[0]
    refined = sorted(c for c, _ in sweep[len(COARSE_C):])
    assert refined == pytest.approx(sorted(best_coarse * f for f in REFINE_FACTORS))
    top = max(s for _, s in sweep)
    assert min(c for c, s in sweep if s == top) == r.metrics["best_C"]  # ties -> smaller C
    assert r.details["c_selection"].startswith("validation")


def test_noisy_data_picks_a_weaker_regularization_than_clean_data():
    centers = np.eye(4, 32) * 1.0
    clean = linear_probe(*_blobs(25, centers, 0, 0.05), *_blobs(25, centers, 1, 0.05), seed=0)
    noisy = linear_probe(*_blobs(25, centers, 0, 1.0), *_blobs(25, centers, 1, 1.0), seed=0)
    # clean: every C is perfect on validation, so the smallest wins; noisy: C matters and is larger
    assert clean.metrics["best_C"] == pytest.approx(min(COARSE_C) * min(REFINE_FACTORS))
    assert noisy.metrics["best_C"] > 10 * clean.metrics["best_C"]
    assert len({s for _, s in noisy.details["c_sweep"]}) > 1


def test_warm_started_sweep_matches_independent_cold_fits():
    from sklearn.linear_model import LogisticRegression

    centers = np.eye(4, 32) * 1.0
    (xtr, ytr), (xva, yva), (xte, yte) = (_blobs(40, centers, s, 1.0) for s in (0, 1, 2))
    r = linear_probe(xtr, ytr, xte, yte, xva, yva, seed=0)
    assert r.details["val_source"] == "given" and r.details["num_train"] == len(xtr) + len(xva)
    for c, score in r.details["c_sweep"]:
        lr = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(_l2(xtr), ytr)
        cold = 100 * float((lr.predict(_l2(xva)) == yva).mean())
        assert abs(score - cold) <= 100 / len(yva) + 1e-9, (c, score, cold)  # at most one sample apart
    lr = LogisticRegression(C=r.metrics["best_C"], tol=1e-10, max_iter=10_000)
    lr.fit(_l2(np.concatenate([xtr, xva])), np.concatenate([ytr, yva]))
    cold = 100 * float((lr.predict(_l2(xte)) == yte).mean())
    assert abs(r.metrics["top1"] - cold) <= 100 / len(yte) + 1e-9


def test_class_missing_from_test_gets_none_and_is_left_out_of_the_mean():
    centers = np.eye(3, 8) * 3
    xte, yte = _blobs(5, centers[:2], 1, 0.3)
    r = linear_probe(*_blobs(10, centers, 0, 0.3), xte, yte, *_blobs(5, centers, 2, 0.3))
    assert r.details["per_class_accuracy"] == [100.0, 100.0, None]
    assert r.metrics["mean_per_class_recall"] == 100.0
    assert r.details["num_train"] == 45 and r.details["num_classes"] == 3


def test_class_missing_from_train_is_never_predicted_and_reported():
    centers = np.eye(3, 8) * 3
    xtr, ytr = _blobs(10, centers[:2], 0, 0.3)  # classes 0, 1 only
    xte, yte = _blobs(4, centers, 1, 0.3)  # 4 samples of class 2 too
    r = linear_probe(xtr, ytr, xte, yte)
    assert r.details["classes_missing_from_train"] == [2]
    assert r.metrics["top1"] == pytest.approx(100 * 8 / 12)
    assert r.details["per_class_accuracy"] == [100.0, 100.0, 0.0]
    assert r.metrics["top5"] == 100.0  # k = min(5, 3 classes) = 3 covers every class, even class 2


def test_num_classes_extends_the_per_class_list():
    centers = np.eye(2, 8) * 3
    r = linear_probe(*_blobs(6, centers, 0, 0.3), *_blobs(3, centers, 1, 0.3), num_classes=4)
    assert r.details["per_class_accuracy"] == [100.0, 100.0, None, None]
    assert r.details["classes_missing_from_train"] == [2, 3] and r.details["top5_k"] == 4
    with pytest.raises(ValueError, match="num_classes"):
        linear_probe(*_blobs(6, centers, 0, 0.3), *_blobs(3, centers, 1, 0.3), num_classes=1)


def test_single_training_class_always_predicts_it():
    x = np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32)
    r = linear_probe(x[:6], np.ones(6, int), x[6:], np.array([1, 0, 1]))
    assert r.metrics["top1"] == pytest.approx(200 / 3)
    assert math.isnan(r.metrics["best_C"]) and r.details["c_sweep"] == []
    assert r.details["classes_missing_from_train"] == [0]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_tiny_training_sets_run(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n + 2, 4)).astype(np.float32)
    y = np.arange(n + 2) % 2
    r = linear_probe(x[:n], y[:n], x[n:], y[n:])
    assert 0.0 <= r.metrics["top1"] <= 100.0
    if n == 1:
        assert r.details["val_source"].startswith("none")


def test_fixed_c_skips_the_sweep():
    centers = np.eye(3, 8) * 3
    r = linear_probe(*_blobs(10, centers, 0, 0.3), *_blobs(5, centers, 1, 0.3), c_grid=[2.5])
    assert r.metrics["best_C"] == 2.5 and r.details["c_sweep"] == []


def test_multilabel_map_and_constant_column():
    rng = np.random.default_rng(0)
    y = (rng.random((120, 4)) < 0.4).astype(np.uint8)
    y[:80, 3] = 0  # class 3 never positive in train: constant score, listed as missing
    y[80:, 3] = 0
    y[[85, 90, 100], 3] = 1
    # a constant feature keeps label-free rows from becoming normalized noise
    x = np.concatenate([y[:, :3] * 2.0, np.ones((120, 1))], 1) + 0.1 * rng.standard_normal((120, 4))
    r = linear_probe(x[:80], y[:80], x[80:], y[80:], multilabel=True, seed=0)
    assert set(r.metrics) == {"mAP", "best_C"}
    assert r.details["per_class_ap"][:3] == pytest.approx([100.0] * 3)
    # constant scores: all 40 test samples tie, so AP = prevalence 3/40
    assert r.details["per_class_ap"][3] == pytest.approx(100 * 3 / 40)
    assert r.metrics["mAP"] == pytest.approx((300 + 100 * 3 / 40) / 4)
    assert r.details["classes_missing_from_train"] == [3]
    assert r.details["c_selection"].startswith("validation")


def test_map_against_hand_computation():
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.9]])
    # class 0: + - + -  -> (1/1 + 2/3) / 2 ; class 1: - + + -  -> (1/2 + 2/3) / 2
    m, per = mean_average_precision(labels, scores)
    assert per == pytest.approx([100 * 5 / 6, 100 * 7 / 12])
    assert m == pytest.approx(100 * (5 / 6 + 7 / 12) / 2)


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.ones((4, 3)), [0, 1, 0], np.ones((2, 3)), [0, 1]), "3 labels for 4"),
        ((np.ones((4, 3)), [0, 1, 0, 1], np.ones((2, 2)), [0, 1]), "D=2"),
        ((np.ones((4, 3)), [0, -1, 0, 1], np.ones((2, 3)), [0, 1]), "non-negative"),
        ((np.ones((4, 3)), [0, 1, 0, 1], np.ones((0, 3)), []), "test"),
        ((np.full((4, 3), np.nan), [0, 1, 0, 1], np.ones((2, 3)), [0, 1]), "NaN"),
    ],
)
def test_bad_inputs_raise_value_errors(args, match):
    with pytest.raises(ValueError, match=match):
        linear_probe(*args)


def test_val_x_without_val_y_is_an_error():
    with pytest.raises(ValueError, match="both"):
        linear_probe(np.ones((4, 3)), [0, 1, 0, 1], np.ones((2, 3)), [0, 1], val_x=np.ones((2, 3)))
