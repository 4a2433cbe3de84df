"""Linear probe: logistic regression on frozen, L2-normalized embeddings (CLIP paper protocol).

C (inverse L2 strength) is chosen on a validation split: a coarse log-spaced sweep (10^-2..10^4),
then a refined sweep around the best; the classifier is retrained on train+val with the chosen C
and scored on test. Without a given validation split, a seeded (stratified when possible)
`val_fraction` of train is held out. Multi-label data: one-vs-rest, scored by macro mAP over the
classes present in test. Deterministic for the same inputs and seed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

COARSE = tuple(10.0 ** e for e in range(-2, 5))


@dataclass
class ProbeResult:
    metrics: dict[str, float]
    details: dict = field(default_factory=dict)


def _l2(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _split(x, y, multilabel, fraction, seed):
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(x))
    stratify = None
    if not multilabel:
        _, counts = np.unique(y, return_counts=True)
        n_val = int(round(len(x) * fraction))
        if counts.min() >= 2 and n_val >= len(counts):
            stratify = y
    tr, va = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return x[tr], y[tr], x[va], y[va]


def _make(c: float, multilabel: bool, seed: int, max_iter: int):
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=c, max_iter=max_iter, tol=1e-4, random_state=seed)
    if multilabel:
        from sklearn.multiclass import OneVsRestClassifier

        return OneVsRestClassifier(lr)
    return lr


def _scores(model, x, num_classes: int, multilabel: bool) -> np.ndarray:
    """[N, num_classes] decision scores; classes unseen in training get -inf."""
    if multilabel:
        return np.asarray(model.decision_function(x)).reshape(len(x), -1)
    raw = model.decision_function(x)
    if raw.ndim == 1:  # binary: score of classes_[1]
        raw = np.stack([-raw, raw], 1)
    out = np.full((len(x), num_classes), -np.inf, dtype=np.float64)
    out[:, model.classes_] = raw
    return out


def mean_average_precision(labels: np.ndarray, scores: np.ndarray) -> tuple[float, list]:
    """Macro AP (percent) over classes with at least one positive; per-class AP (None if absent)."""
    from sklearn.metrics import average_precision_score

    per = []
    for j in range(labels.shape[1]):
        if labels[:, j].any():
            s = np.nan_to_num(scores[:, j], neginf=-1e30)
            per.append(float(100.0 * average_precision_score(labels[:, j], s)))
        else:
            per.append(None)
    present = [v for v in per if v is not None]
    return (float(np.mean(present)) if present else float("nan")), per


class _ConstantColumns:
    """One-vs-rest needs both values in every column; constant columns get a constant score."""

    def __init__(self, y: np.ndarray) -> None:
        y = np.asarray(y, dtype=np.int64)
        self.const = np.where(y.min(0) == y.max(0), y[0], -1)
        self.fit_cols = np.flatnonzero(self.const < 0)


def _fit_score(c, xtr, ytr, xev, num_classes, multilabel, seed, max_iter):
    if multilabel:
        cols = _ConstantColumns(ytr)
        scores = np.empty((len(xev), ytr.shape[1]))
        for j in np.flatnonzero(cols.const >= 0):
            scores[:, j] = 1e9 if cols.const[j] == 1 else -1e9
        if len(cols.fit_cols):
            model = _make(c, True, seed, max_iter).fit(xtr, ytr[:, cols.fit_cols])
            scores[:, cols.fit_cols] = np.asarray(model.decision_function(xev)).reshape(len(xev), -1)
        return scores
    if len(np.unique(ytr)) < 2:
        out = np.full((len(xev), num_classes), -np.inf)
        out[:, int(ytr[0])] = 0.0
        return out
    model = _make(c, False, seed, max_iter).fit(xtr, ytr)
    return _scores(model, xev, num_classes, False)


def _score(scores, y, multilabel) -> float:
    if multilabel:
        return mean_average_precision(y, scores)[0]
    return float((scores.argmax(1) == y).mean() * 100.0)


def linear_probe(train_x, train_y, test_x, test_y, val_x=None, val_y=None, *, multilabel: bool = False,
                 seed: int = 0, val_fraction: float = 0.2, c_grid=None, max_iter: int = 1000) -> ProbeResult:
    from bench.metrics.zeroshot import topk_metrics

    xtr, xte = _l2(train_x), _l2(test_x)
    ytr, yte = np.asarray(train_y), np.asarray(test_y)
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError("features and labels differ in length")
    if multilabel:
        num_classes = ytr.shape[1]
    else:
        ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
        num_classes = int(max(ytr.max(initial=0), yte.max(initial=0))) + 1
    if val_x is None:
        xfit, yfit, xva, yva = _split(xtr, ytr, multilabel, val_fraction, seed)
    else:
        xfit, yfit, xva, yva = xtr, ytr, _l2(val_x), np.asarray(val_y)
        if not multilabel:
            yva = yva.astype(np.int64)

    sweep: list[list[float]] = []

    def evaluate(c: float) -> float:
        s = _score(_fit_score(c, xfit, yfit, xva, num_classes, multilabel, seed, max_iter), yva, multilabel)
        sweep.append([c, s])
        return s

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on tiny/degenerate data
        grid = tuple(c_grid) if c_grid is not None else COARSE
        results = {c: evaluate(c) for c in grid}
        best = max(results, key=lambda c: (results[c], -c))  # ties -> stronger regularization
        if c_grid is None:
            for f in (10 ** -0.5, 10 ** -0.25, 10 ** 0.25, 10 ** 0.5):
                results[best * f] = evaluate(best * f)
            best = max(results, key=lambda c: (results[c], -c))
        # retrain on train+val (the carved validation part is already inside train)
        xall, yall = (xtr, ytr) if val_x is None else (np.concatenate([xfit, xva]), np.concatenate([yfit, yva]))
        scores = _fit_score(best, xall, yall, xte, num_classes, multilabel, seed, max_iter)

    details = {"c_sweep": sweep, "best_C": best, "num_train": int(len(xall)), "num_test": int(len(xte))}
    if multilabel:
        m, per = mean_average_precision(yte, scores)
        details["per_class_ap"] = per
        return ProbeResult({"mAP": m, "best_C": best}, details)
    tk = topk_metrics(np.nan_to_num(scores, neginf=-1e30), yte)
    details["per_class_accuracy"] = tk.pop("per_class_recall")
    return ProbeResult({**tk, "best_C": best}, details)
