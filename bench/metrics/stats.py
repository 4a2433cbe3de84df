"""Bootstrap confidence intervals and paired bootstrap comparisons over per-query outcomes.

Method (percentile bootstrap): the test queries (images or captions, or test images for
classification) are resampled with replacement, n out of n, `n_resamples` times; the statistic is
recomputed on every resample and the interval is the (1 - level) / 2 and (1 + level) / 2 quantiles
of those values (numpy's default linear interpolation). It measures the uncertainty that comes from
the finite test set, with the embeddings held fixed.

- Seeded and deterministic: resample r is the r-th row of n indices drawn by
  `numpy.random.default_rng(seed).integers(0, n)` in one stream, so the numbers depend on (seed, n,
  n_resamples) only, never on the block size used to bound memory, the machine or the thread count.
- Vectorized: resamples are processed in blocks as multiplicity matrices `counts` [b, n] (how often
  each query is drawn); a mean is then `counts @ values / n`, one matrix product per block.
- Paired: two embedders scored on the same queries see the same resamples (same seed, same n), and
  the interval is that of the difference of the two statistics, resample by resample.
- Per-query values (see `bench.metrics.ranking`): retrieval hit@k indicators, reciprocal ranks,
  per-query nDCG, per-query true recall, first-correct ranks (median); top-1/top-5: correct flags;
  mean per-class recall: correct flags + labels (`mean_per_class_stat`); mAP: the test images are
  resampled and AP recomputed per class on every resample (`map_stat`, with each image counted once
  in its own precision: see there), not the 80 class APs: the uncertainty of interest is the finite
  image set, and resampling images keeps the pairing between embedders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED = 0
MAX_BLOCK_ELEMENTS = 1 << 21  # counts entries per block (b * n): ~16 MiB per float64 temporary
BOOTSTRAP_PROTOCOL = ("percentile bootstrap over the test queries (resampled with replacement, seeded); "
                      "paired comparisons resample the same queries for both embedders")

StatFn = Callable[[np.ndarray], np.ndarray]  # counts [b, n] -> statistic of each resample [b]


@dataclass(frozen=True)
class Interval:
    """Point estimate and percentile bootstrap interval [low, high] at `level`."""

    estimate: float
    low: float
    high: float
    level: float
    n_resamples: int
    seed: int

    @property
    def plus_minus(self) -> float:
        """Half the interval width, for "62.4 ± 3.1" (the percentile interval need not be symmetric)."""
        return (self.high - self.low) / 2.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "method": "percentile bootstrap"}


@dataclass(frozen=True)
class PairedInterval:
    """Difference a - b of one statistic of two embedders on the same queries, with its interval."""

    diff: float
    low: float
    high: float
    level: float
    n_resamples: int
    seed: int

    @property
    def excludes_zero(self) -> bool:
        """True when the difference is significant at `level` (two-sided)."""
        return self.low > 0.0 or self.high < 0.0

    def entirely_below(self, tolerance: float = 0.0) -> bool:
        """The whole interval lies below -tolerance: a is worse than b by more than tolerance."""
        return self.high < -abs(tolerance)

    def entirely_above(self, tolerance: float = 0.0) -> bool:
        return self.low > abs(tolerance)

    def verdict(self, higher_is_better: bool = True) -> str:
        """'a' or 'b' (significantly better) or 'tie' (the interval contains 0)."""
        if not self.excludes_zero:
            return "tie"
        return "a" if (self.low > 0.0) == higher_is_better else "b"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "excludes_zero": self.excludes_zero, "method": "paired percentile bootstrap"}


def significant_regression(change: PairedInterval, tolerance: float, higher_is_better: bool = True) -> bool:
    """The regression gate: `change` is current - baseline; a regression only when the whole interval
    of the change is worse than the tolerance (below -tolerance, or above +tolerance when lower is
    better)."""
    return change.entirely_below(tolerance) if higher_is_better else change.entirely_above(tolerance)


def _check(n: int, n_resamples: int, level: float) -> None:
    if n < 1:
        raise ValueError("bootstrap needs at least one per-query value")
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def resample_counts(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                    max_elements: int = MAX_BLOCK_ELEMENTS) -> Iterator[np.ndarray]:
    """Blocks of multiplicities [b, n] (float64 holding integers, rows sum to n: ready for matrix
    products), n_resamples rows in all (see the module docstring for why the result does not depend
    on `max_elements`)."""
    rng = np.random.default_rng(seed)
    block = max(1, min(n_resamples, max_elements // max(n, 1)))
    for start in range(0, n_resamples, block):
        b = min(block, n_resamples - start)
        # one stream, consumed in order: blocks of any size give the same resamples (tested)
        idx = rng.integers(0, n, size=(b, n), dtype=np.int64)
        idx += np.arange(b, dtype=np.int64)[:, None] * n
        yield np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def _values(x: Any, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be one value per query (1-D), got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or inf")
    return v


def mean_stat(values: Any) -> StatFn:
    v = _values(values, "values")
    return lambda counts: counts @ v / len(v)


def median_stat(values: Any) -> StatFn:
    """np.median of each resample (mean of the two middle values when n is even), from the counts."""
    v = _values(values, "values")
    order = np.argsort(v, kind="stable")
    sv, n = v[order], len(v)
    mid = [(n - 1) // 2] if n % 2 else [n // 2 - 1, n // 2]

    def fn(counts: np.ndarray) -> np.ndarray:
        cum = np.cumsum(counts[:, order], axis=1)
        # the p-th (0-based) value of the sorted resample is the first sorted value whose
        # cumulative count exceeds p
        return np.mean([sv[(cum <= p).sum(1)] for p in mid], axis=0)

    return fn


def _callable_stat(values: Any, stat: Callable[[np.ndarray], float]) -> StatFn:
    v = _values(values, "values")
    # Generic statistics see the resample itself (slow: one call per resample).
    return lambda counts: np.array([float(stat(np.repeat(v, c.astype(np.int64)))) for c in counts])


def stat_fn(values: Any, stat: Any = "mean") -> StatFn:
    """`stat`: "mean", "median" (or np.mean / np.median: the vectorized paths) or any
    f(1-D resample) -> float."""
    if stat in ("mean", np.mean):
        return mean_stat(values)
    if stat in ("median", np.median):
        return median_stat(values)
    if callable(stat):
        return _callable_stat(values, stat)
    raise ValueError(f"stat must be 'mean', 'median' or a callable, got {stat!r}")


def _quantiles(dist: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(dist, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def _distribution(n: int, fns: list[StatFn], n_resamples: int, seed: int,
                  max_elements: int) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = [[] for _ in fns]
    for counts in resample_counts(n, n_resamples, seed, max_elements):
        for part, fn in zip(parts, fns):
            part.append(np.asarray(fn(counts), dtype=np.float64))
    return [np.concatenate(p) for p in parts]


def _point(n: int, fn: StatFn) -> float:
    return float(fn(np.ones((1, n)))[0])


def bootstrap(n: int, fn: StatFn, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
              level: float = DEFAULT_LEVEL, estimate: float | None = None,
              max_elements: int = MAX_BLOCK_ELEMENTS) -> Interval:
    """Interval of any statistic of n queries given as `fn(counts)` (e.g. `map_stat`); the estimate
    defaults to fn on the original sample (every count 1)."""
    _check(n, n_resamples, level)
    (dist,) = _distribution(n, [fn], n_resamples, seed, max_elements)
    est = _point(n, fn) if estimate is None else float(estimate)
    return Interval(est, *_quantiles(dist, level), level=level, n_resamples=int(n_resamples), seed=seed)


def paired(n: int, fn_a: StatFn, fn_b: StatFn, *, n_resamples: int = DEFAULT_RESAMPLES,
           seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL,
           max_elements: int = MAX_BLOCK_ELEMENTS) -> PairedInterval:
    """Paired interval of fn_a - fn_b, both evaluated on the same resamples of the same n queries."""
    _check(n, n_resamples, level)
    da, db = _distribution(n, [fn_a, fn_b], n_resamples, seed, max_elements)
    diff = _point(n, fn_a) - _point(n, fn_b)
    return PairedInterval(diff, *_quantiles(da - db, level), level=level, n_resamples=int(n_resamples),
                          seed=seed)


def bootstrap_many(n: int, fns: dict[str, StatFn], *, estimates: dict[str, float] | None = None,
                   n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                   level: float = DEFAULT_LEVEL,
                   max_elements: int = MAX_BLOCK_ELEMENTS) -> dict[str, Interval]:
    """`bootstrap` of several statistics of the same n queries, drawing the resamples once: the
    same numbers as one `bootstrap` call each (same seed, same resamples), in less time."""
    _check(n, n_resamples, level)
    dists = _distribution(n, list(fns.values()), n_resamples, seed, max_elements)
    est = estimates or {}
    return {name: Interval(float(est[name]) if name in est else _point(n, fn), *_quantiles(d, level),
                           level=level, n_resamples=int(n_resamples), seed=seed)
            for (name, fn), d in zip(fns.items(), dists)}


def paired_many(n: int, pairs: dict[str, tuple[StatFn, StatFn]], *, n_resamples: int = DEFAULT_RESAMPLES,
                seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL,
                max_elements: int = MAX_BLOCK_ELEMENTS) -> dict[str, PairedInterval]:
    """`paired` for several statistics of the same n queries, resamples drawn once."""
    _check(n, n_resamples, level)
    flat = [fn for pair in pairs.values() for fn in pair]
    dists = _distribution(n, flat, n_resamples, seed, max_elements)
    out = {}
    for i, (name, (fa, fb)) in enumerate(pairs.items()):
        low, high = _quantiles(dists[2 * i] - dists[2 * i + 1], level)
        out[name] = PairedInterval(_point(n, fa) - _point(n, fb), low, high, level=level,
                                   n_resamples=int(n_resamples), seed=seed)
    return out


def bootstrap_ci(per_query_values: Any, stat: Any = "mean", n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL,
                 max_elements: int = MAX_BLOCK_ELEMENTS) -> Interval:
    """Percentile bootstrap interval of stat(per_query_values); the estimate is stat of the sample."""
    v = _values(per_query_values, "per_query_values")
    _check(len(v), n_resamples, level)
    fn = stat_fn(v, stat)
    est = float(np.median(v) if stat in ("median", np.median) else
                np.mean(v) if stat in ("mean", np.mean) else stat(v))
    return bootstrap(len(v), fn, n_resamples=n_resamples, seed=seed, level=level, estimate=est,
                     max_elements=max_elements)


def paired_bootstrap(a: Any, b: Any, stat: Any = "mean", n_resamples: int = DEFAULT_RESAMPLES,
                     seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL,
                     max_elements: int = MAX_BLOCK_ELEMENTS) -> PairedInterval:
    """Interval of stat(a) - stat(b) for per-query values of two embedders on the SAME queries in the
    same order (a[i] and b[i] belong to query i); significant when it excludes 0."""
    va, vb = _values(a, "a"), _values(b, "b")
    if va.shape != vb.shape:
        raise ValueError(f"paired values need the same queries: {len(va)} vs {len(vb)} values")
    return paired(len(va), stat_fn(va, stat), stat_fn(vb, stat), n_resamples=n_resamples, seed=seed,
                  level=level, max_elements=max_elements)


# --- statistics that need more than one value per query ------------------------------------------


def mean_per_class_stat(values: Any, labels: Any) -> StatFn:
    """Mean over classes of the mean per-query value within the class (mean per-class recall from
    100 * correct flags), over the classes present in the resample; `labels` [n] class indices.
    As `topk_metrics`: classes absent from the test labels never count."""
    v = _values(values, "values")
    y = np.asarray(labels)
    if y.shape != v.shape:
        raise ValueError(f"labels {y.shape} and values {v.shape} must both be [n]")
    order = np.argsort(y, kind="stable")
    starts = np.flatnonzero(np.r_[True, y[order][1:] != y[order][:-1]])  # first sample of each class
    vs = v[order]

    def fn(counts: np.ndarray) -> np.ndarray:
        c = counts[:, order]
        tot = np.add.reduceat(c, starts, axis=1)
        hit = np.add.reduceat(c * vs, starts, axis=1)
        present = tot > 0
        return np.where(present, hit / np.maximum(tot, 1.0), 0.0).sum(1) / present.sum(1)

    return fn


def map_stat(labels: Any, scores: Any) -> StatFn:
    """Macro mAP in percent of a resample of the test images, averaged over the classes with a
    positive in the resample (as `mean_average_precision` over the test set); labels 0/1 [n, C],
    scores [n, C]. On the test set itself (every count 1) it is exactly `mean_average_precision`.

    AP of a resample: the mean, over the drawn copies of positive images, of the precision at that
    copy, where every image counts ONCE in its own precision: with w copies of image i and TP / SEEN
    the drawn positives / images ranked at or above i (its tied-score group included, as in
    `zeroshot.average_precision`), precision = (TP - w + 1) / (SEEN - w + 1). Plain AP of the
    resample would also rank each duplicated positive above its own copies, a pairing no new test
    set has, and is biased upwards: at mAP 9 (1,000 images, 80 classes, 4% positives) its bootstrap
    mean was 1.0 point above the estimate, more than the 0.7 spread, and the 95% interval missed the
    estimate; without those self-pairs the bootstrap mean is within 0.05 of the estimate and the
    spread matches that of fresh test sets from the same distribution (measured, 3 draws)."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must both be [n, C]")
    per_class = []
    for j in range(y.shape[1]):
        if not y[:, j].any():
            continue  # no positive in the test set: in no resample either
        order = np.argsort(-s[:, j], kind="stable")
        ss, ys = s[order, j], y[order, j].astype(bool)
        new_group = np.r_[False, ss[1:] != ss[:-1]]
        group = np.cumsum(new_group)  # tied-score group of each sorted sample
        last = np.flatnonzero(np.r_[new_group[1:], True])  # last sorted index of each group
        pos_idx = np.flatnonzero(ys)
        # for every positive: the end of its group, and the last positive of its group (in pos_idx)
        last_pos_of = np.searchsorted(group[pos_idx], group[pos_idx], side="right") - 1
        per_class.append((order, last[group[pos_idx]], order[pos_idx], last_pos_of))
    if not per_class:
        raise ValueError("mAP needs at least one class with a positive test image")

    def fn(counts: np.ndarray) -> np.ndarray:
        total = np.zeros(len(counts))
        present = np.zeros(len(counts))
        for order, pos_end, pos_samples, last_pos_of in per_class:
            seen = np.cumsum(counts[:, order], axis=1)[:, pos_end]  # [b, positives]
            w = counts[:, pos_samples]
            tp = np.cumsum(w, axis=1)[:, last_pos_of]
            prec = (tp - w + 1.0) / (seen - w + 1.0)
            n_pos = w.sum(1)
            ap = (w * prec).sum(1) / np.maximum(n_pos, 1.0)
            total += np.where(n_pos > 0, ap, 0.0)
            present += n_pos > 0
        return 100.0 * total / np.maximum(present, 1.0)

    return fn
