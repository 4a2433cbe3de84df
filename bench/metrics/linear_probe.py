"""Linear probe: logistic regression on frozen, L2-normalized embeddings (CLIP paper / CLIP_benchmark).

Protocol
- Features are (re-)L2-normalized in float64. scikit-learn LogisticRegression (multinomial for
  single-label; one binary model per class, i.e. one-vs-rest, for multi-label), fitted in float64.
- C (inverse L2 strength) is chosen on a validation split: a coarse log-spaced sweep
  (`COARSE_C`, 10^-2..10^4, or `c_grid`), then a refined sweep at best * 10^{+-0.25, +-0.5}.
  Validation scores are compared rounded to 1e-6 points (top-1 therefore as counts of correct
  items; mAP below float noise); ties go to the smaller C (stronger regularization). Without a
  given validation split a seeded `val_fraction` of train is held out, stratified when every class
  has >= 2 samples.
- Retrain on train+val with the chosen C, score test.
- Speed: C is swept in ascending order with warm starts, and lbfgs stops at gradient tolerance
  `tol * min(1, C)` (tol=1e-5: sklearn's default 1e-4 stops warm-started large-C fits after 0
  iterations; the min(1, C) factor keeps strongly regularized fits as accurate as cold tight ones).
- Deterministic: same inputs and seed give the same numbers (fixed split, fixed sweep order).

Reproducible across CPUs. Measured on the demo (tiny random towers, 100 test images): running the
towers under ATEN_CPU_CAPABILITY=default instead of AVX-512 changes the embeddings by <= 4e-7
(float32 rounding), and numpy's OpenBLAS kernel (OPENBLAS_CORETYPE) changes the probe's own
arithmetic; either alone changed 10 of the 12 probe figures (up to 3 of 100 test items, mAP by
2 points through another chosen C; the chosen C of 1-3 of the 6 probes). The cause is the optimizer, not the features: lbfgs stops at
a gradient tolerance, so its end point carries an error of about tol * C in w, which the arithmetic
noise moves around; at the large C the demo picks that flips predictions and validation scores,
hence the chosen C. Float64 alone did not help (9 of 12 still differed). So a problem small
enough for it (`NEWTON_MAX_WORK` multiply-adds per Newton iteration: the Hessian, n x dof^2, plus
its Cholesky, dof^3 / 3, with dof = (D + 1) x rows) is solved with Newton-Cholesky to a gradient of
`NEWTON_TOL` (quadratic convergence: the unique optimum to about machine precision, a few steps):
with it no probe figure of the demo differed between kernels. BLAS is pinned to one thread there (fast for such sizes, and no thread-count dependent
sums). Larger problems keep lbfgs (a Hessian would not fit or be too slow): both solvers minimize
the same strictly convex objective, so the protocol is the same, only the precision differs;
details["solver"] says which ran, and the regression gate (bench.regression) absorbs a flip or
two. Rounding the embeddings to a grid (1e-4..1e-6) was measured too and not adopted: values near
a grid boundary still round apart (1.6-5.6% of the coordinates at 1e-6, 0.03-0.6% at 1e-5), so
it trades many tiny differences for fewer larger ones and cannot make features equal.
"""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.metrics.zeroshot import mean_average_precision, topk_metrics

__all__ = ["COARSE_C", "NEWTON_MAX_WORK", "REFINE_FACTORS", "ProbeResult", "choose_solver", "linear_probe",
           "mean_average_precision"]

COARSE_C: tuple[float, ...] = tuple(10.0**e for e in range(-2, 5))
REFINE_FACTORS: tuple[float, ...] = (10**-0.5, 10**-0.25, 10**0.25, 10**0.5)
_CONST_SCORE = 1e6  # score of a class that was constant (always / never present) in training
NEWTON_MAX_WORK = 2e9  # multiply-adds per Newton iteration up to which Newton-Cholesky is used
NEWTON_TOL = 1e-10  # Newton's gradient tolerance: two more (quadratic) steps than 1e-5, to the optimum
_SCORE_DECIMALS = 6  # validation scores are compared rounded to this many decimals (points)


@dataclass
class ProbeResult:
    """`metrics`: top1, top5, mean_per_class_recall, best_C (single-label) or mAP, best_C
    (multi-label); `details`: sweep, per-class numbers, split sizes, notes; `test_scores`: the test
    scores [n_test, C] behind the metrics."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    test_scores: np.ndarray | None = None  # [n_test, C] scores the metrics come from (per-query records)


def _features(x: Any, name: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    # float32 first: the embeddings are float32 whatever the caller hands in, so a float64 copy of
    # them gives the same numbers; float64 then for the normalization and the solver.
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def choose_solver(n_samples: int, dim: int, rows: int) -> str:
    """"newton-cholesky" when one Newton iteration (Hessian n x dof^2 + Cholesky dof^3 / 3, dof =
    (dim + 1) x rows) costs at most NEWTON_MAX_WORK multiply-adds, else "lbfgs" (module docstring)."""
    dof = (dim + 1) * rows
    if rows > 1:
        import re

        import sklearn

        major_minor = re.match(r"(\d+)\.(\d+)", sklearn.__version__)
        if major_minor and tuple(map(int, major_minor.groups())) < (1, 6):
            return "lbfgs"  # older newton-cholesky fits multi-class one-vs-rest, not multinomial
    return "newton-cholesky" if n_samples * dof**2 + dof**3 / 3 <= NEWTON_MAX_WORK else "lbfgs"


def _labels(y: Any, n: int, name: str, multilabel: bool) -> np.ndarray:
    y = np.asarray(y)
    if len(y) != n:
        raise ValueError(f"{name} has {len(y)} labels for {n} feature rows")
    if multilabel:
        if y.ndim != 2:
            raise ValueError(f"multi-label {name} must be a 0/1 [N, C] array, got shape {y.shape}")
        if y.size and not np.isin(y, (0, 1)).all():
            raise ValueError(f"multi-label {name} must hold only 0/1")
        return y.astype(np.int8)
    if y.ndim != 1:
        raise ValueError(f"single-label {name} must be 1-D class indices, got shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.number) or not np.all(np.mod(y, 1) == 0) or y.min() < 0):
        raise ValueError(f"{name} must be non-negative integer class indices")
    return y.astype(np.int64)


def _carve(
    y: np.ndarray, multilabel: bool, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, str] | None:
    """Seeded train/val index split of train; None when train is too small to hold anything out."""
    from sklearn.model_selection import train_test_split

    n = len(y)
    if n < 2 or not 0.0 < fraction < 1.0:
        return None
    n_val = min(max(int(round(n * fraction)), 1), n - 1)
    idx = np.arange(n)
    stratify, how = None, "random"
    if not multilabel:
        counts = np.unique(y, return_counts=True)[1]
        if counts.min() >= 2 and len(counts) <= n_val <= n - len(counts):
            stratify, how = y, "stratified"
    fit, val = train_test_split(idx, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(fit), np.sort(val), how


class _Probe:
    """Logistic regression(s) for one C at a time; remembers solutions to warm-start the next C."""

    def __init__(self, multilabel: bool, num_classes: int, seed: int, max_iter: int, tol: float,
                 solver: str = "lbfgs") -> None:
        self.multilabel, self.num_classes = multilabel, num_classes
        self.seed, self.max_iter, self.tol, self.solver = seed, max_iter, tol, solver
        self.saved: dict[float, Any] = {}  # C -> solution (coef, intercept) per model
        self.not_converged: list[float] = []
        self.fell_back: list[float] = []  # C where Newton-Cholesky gave up and sklearn ran lbfgs
        self._threads = None
        if solver == "newton-cholesky":  # small problem: one BLAS thread is fast and order-stable
            from threadpoolctl import ThreadpoolController

            self._threads = ThreadpoolController()

    def _lr(self, c: float, init: tuple[np.ndarray, np.ndarray] | None):
        from sklearn.linear_model import LogisticRegression

        # The error in w is about gtol * C: small C (strong regularization, cheap to solve) gets a
        # proportionally tighter tolerance, else near-tied predictions flip against a tight cold fit.
        tol = NEWTON_TOL if self.solver == "newton-cholesky" else self.tol * min(1.0, c)
        lr = LogisticRegression(C=c, solver=self.solver, max_iter=self.max_iter, tol=tol,
                                random_state=self.seed, warm_start=init is not None)
        if init is not None:
            lr.coef_, lr.intercept_ = init[0].copy(), init[1].copy()
        return lr

    def _fit_one(self, c, x, y, init):
        """Binary or multinomial fit of y (>= 2 distinct values); returns (model, (coef, intercept))."""
        classes = np.unique(y)
        if init is not None:
            n_rows = 1 if len(classes) == 2 else len(classes)
            if init[0].shape != (n_rows, x.shape[1]) or not np.array_equal(init[2], classes):
                init = None
        lr = self._lr(c, None if init is None else init[:2])
        with warnings.catch_warnings(record=True) as caught, \
                (self._threads.limit(limits=1, user_api="blas") if self._threads else nullcontext()):
            warnings.simplefilter("always")  # ConvergenceWarning etc.: recorded in details instead
            lr.fit(x, y)
        if any("resort to lbfgs" in str(w.message) for w in caught):
            self.fell_back.append(c)
        if np.max(lr.n_iter_) >= self.max_iter:
            self.not_converged.append(c)
        return lr, (lr.coef_.copy(), lr.intercept_.copy(), lr.classes_.copy())

    def fit_scores(self, c: float, x: np.ndarray, y: np.ndarray, x_eval: np.ndarray,
                   init_from: float | None, save: bool = True) -> np.ndarray:
        """Fit at C (warm-started from the solution saved for `init_from`), return scores [n_eval, C]."""
        prev = self.saved.get(init_from) if init_from is not None else None
        if self.multilabel:
            out = np.empty((len(x_eval), y.shape[1]), dtype=np.float64)
            sols = []
            for j in range(y.shape[1]):
                col = y[:, j]
                if col.min() == col.max():  # constant in training: sklearn cannot fit it
                    out[:, j] = _CONST_SCORE if col[0] == 1 else -_CONST_SCORE
                    sols.append(None)
                    continue
                init = prev[j] if prev is not None else None
                lr, sol = self._fit_one(c, x, col, init)
                out[:, j] = lr.decision_function(x_eval)
                sols.append(sol)
        else:
            out = np.full((len(x_eval), self.num_classes), -np.inf, dtype=np.float64)
            classes = np.unique(y)
            if len(classes) == 1:  # a single class seen: it is always the answer
                out[:, classes[0]] = 0.0
                sols = None
            else:
                lr, sols = self._fit_one(c, x, y, prev)
                d = lr.decision_function(x_eval)
                if d.ndim == 1:  # binary: one margin for classes_[1]
                    out[:, lr.classes_[0]], out[:, lr.classes_[1]] = -d / 2, d / 2
                else:
                    out[:, lr.classes_] = d
        if save:
            self.saved[c] = sols
        return out


def _val_score(scores: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
    if multilabel:
        return mean_average_precision(y, scores)[0]
    return topk_metrics(scores, y)["top1"]


def linear_probe(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    val_x: Any = None,
    val_y: Any = None,
    *,
    multilabel: bool = False,
    seed: int = 0,
    val_fraction: float = 0.2,
    c_grid: Any = None,
    max_iter: int = 1000,
    num_classes: int | None = None,
    tol: float = 1e-5,
) -> ProbeResult:
    """Sweep C on validation, retrain on train+val, score test (see the module docstring).

    Single-label labels are class indices [N] (`num_classes` defaults to the largest index + 1);
    multi-label labels are 0/1 [N, C]. A class absent from train can never be predicted: its test
    samples count as errors and it is listed in details["classes_missing_from_train"]. Classes
    absent from test get None in per-class lists and are left out of the means. top5 uses
    k = min(5, classes) (details["top5_k"]); ties count against the sample (see `topk_metrics`).
    With a single training class, or too few samples to hold out validation, no sweep is run
    (best_C = NaN or 1.0 respectively, explained in details["c_selection"]).
    `c_grid` replaces the coarse grid; with one value that C is used as is (no validation).
    """
    xtr, xte = _features(train_x, "train_x"), _features(test_x, "test_x")
    ytr = _labels(train_y, len(xtr), "train_y", multilabel)
    yte = _labels(test_y, len(xte), "test_y", multilabel)
    if len(xtr) == 0 or len(xte) == 0:
        raise ValueError(f"linear probe needs train and test samples, got {len(xtr)} train, {len(xte)} test")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train_x has D={xtr.shape[1]} but test_x has D={xte.shape[1]}")
    if (val_x is None) != (val_y is None):
        raise ValueError("give both val_x and val_y, or neither")
    xva = yva = None
    if val_x is not None:
        xva = _features(val_x, "val_x")
        yva = _labels(val_y, len(xva), "val_y", multilabel)
        if xva.shape[1] != xtr.shape[1]:
            raise ValueError(f"train_x has D={xtr.shape[1]} but val_x has D={xva.shape[1]}")
    label_sets = [y for y in (ytr, yva, yte) if y is not None and len(y)]
    if multilabel:
        widths = {y.shape[1] for y in label_sets}
        if len(widths) != 1:
            raise ValueError(f"multi-label train/val/test have different class counts: {sorted(widths)}")
        n_cls = widths.pop()
    else:
        n_cls = int(max(int(y.max()) for y in label_sets)) + 1
        if num_classes is not None:
            if num_classes < n_cls:
                raise ValueError(f"num_classes={num_classes} but labels go up to {n_cls - 1}")
            n_cls = num_classes
    grid = sorted({float(c) for c in (COARSE_C if c_grid is None else c_grid)})
    if not grid or min(grid) <= 0:
        raise ValueError(f"c_grid must hold positive values, got {c_grid}")

    # Validation split: given, carved from train, or none possible.
    details: dict[str, Any] = {}
    if xva is not None and len(xva):
        xfit, yfit, details["val_source"] = xtr, ytr, "given"
        xall, yall = np.concatenate([xtr, xva]), np.concatenate([ytr, yva])
    else:
        carved = _carve(ytr, multilabel, val_fraction, seed)
        xall, yall = xtr, ytr
        if carved is None:
            xfit = yfit = None
            details["val_source"] = "none (fewer than 2 training samples)"
        else:
            fit_idx, val_idx, how = carved
            xfit, yfit, xva, yva = xtr[fit_idx], ytr[fit_idx], xtr[val_idx], ytr[val_idx]
            details["val_source"] = f"{how} {val_fraction:g} of train (seed {seed})"

    rows = 1 if multilabel or len(np.unique(yall)) <= 2 else len(np.unique(yall))
    solver = choose_solver(len(xall), xall.shape[1], rows)
    probe = _Probe(multilabel, n_cls, seed, max_iter, tol, solver)
    sweep: list[list[float]] = []
    single_class = (not multilabel) and len(np.unique(yall)) == 1
    if single_class:
        best = float("nan")
        details["c_selection"] = "none: a single class in training, it is always predicted"
    elif len(grid) == 1:
        best, details["c_selection"] = grid[0], "fixed (c_grid has one value)"
    elif xfit is None:
        best, details["c_selection"] = 1.0, "default C=1 (too few training samples for a validation split)"
    else:
        results: dict[float, float] = {}

        def evaluate(c: float) -> None:
            done = sorted(results)
            # warm start from the nearest C already solved (log scale), else cold
            init = min(done, key=lambda d: abs(math.log(d / c))) if done else None
            s = _val_score(probe.fit_scores(c, xfit, yfit, xva, init), yva, multilabel)
            results[c] = s
            sweep.append([c, s])

        def best_c() -> float | None:
            valid = [c for c in results if not math.isnan(results[c])]
            return max(valid, key=lambda c: (round(results[c], _SCORE_DECIMALS), -c)) if valid else None

        for c in grid:  # ascending: each fit starts from the previous, more regularized solution
            evaluate(c)
        b = best_c()
        if b is None:
            best, details["c_selection"] = 1.0, "default C=1 (validation split has no positive labels)"
        else:
            for c in sorted(b * f for f in REFINE_FACTORS):
                if not any(math.isclose(c, d, rel_tol=1e-9) for d in results):
                    evaluate(c)
            best, details["c_selection"] = best_c(), "validation (coarse then refined sweep)"

    init = best if best in probe.saved else None
    scores = probe.fit_scores(best if not math.isnan(best) else 1.0, xall, yall, xte, init, save=False)

    details.update({
        "c_sweep": sweep,
        "best_C": best,
        "num_train": int(len(xall)),
        "num_fit": int(len(xfit)) if xfit is not None else 0,
        "num_val": int(len(xva)) if xva is not None and xfit is not None else 0,
        "num_test": int(len(xte)),
        "num_classes": int(n_cls),
        "tol": tol,
        "max_iter": max_iter,
        "not_converged_C": sorted(set(probe.not_converged)),
        "solver": solver,
        "newton_fell_back_to_lbfgs_C": sorted(set(probe.fell_back)),
    })
    if multilabel:
        m, per = mean_average_precision(yte, scores)
        details["per_class_ap"] = per
        missing = np.flatnonzero(yall.max(0) == 0) if len(yall) else []
        details["classes_missing_from_train"] = [int(j) for j in missing]
        return ProbeResult({"mAP": m, "best_C": best}, details, scores)
    tk = topk_metrics(scores, yte)
    details["per_class_accuracy"] = tk.pop("per_class_recall")
    details["top5_k"] = min(5, n_cls)
    seen = set(np.unique(yall).tolist())
    details["classes_missing_from_train"] = [j for j in range(n_cls) if j not in seen]
    return ProbeResult({**tk, "best_C": best}, details, scores)
