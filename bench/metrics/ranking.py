"""Quality measures from per-query ranks, with their protocol strings and chance levels.

Everything here is plain numpy on the per-query records (`retrieval.RetrievalRanks`, `class_ranks`),
so a report or `bench compare` can recompute any measure, its interval and its chance level without
re-embedding. For every measure, `stat(per_query(...))` is the reported number: the bootstrap in
`bench.metrics.stats` resamples exactly those per-query values.

Retrieval keys: `{i2t|t2i}_{measure}` or `{i2t|t2i}_{measure}@{k}`, measure one of `MEASURES`.
Ranks are 0-based (0 = top) and pessimistic: at equal scores the negatives come first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RetrievalRanks:
    """Per-query outcomes of image<->text retrieval; 0-based ranks (0 = top), int32 numpy arrays.

    - `text_to_image` [M]: the image that owns each caption.
    - `i2t_first` [N]: for image query i, the rank of its best-ranked caption; -1 for an image with
      no caption (not a query). Hit recall@k = share of queries with rank < k.
    - `i2t_caption` [M]: for caption j, its rank in the ranking of its own image's query (all
      captions of an image: true recall, nDCG). `i2t_first[i]` is the minimum over i's captions.
    - `t2i` [M]: for caption query j, the rank of its image among all N images.

    Ties are counted against the query (as in `recall_at_k`): at equal scores every negative is
    placed before the positives, so the r-th best positive (0-based) of a query has rank
    r + (number of negatives scoring >= it). Tied positives of one image take consecutive ranks in
    caption-index order (which one gets which rank does not change any measure: relevance is binary).
    """

    text_to_image: Any
    i2t_first: Any
    i2t_caption: Any
    t2i: Any

    @property
    def n_images(self) -> int:
        return int(len(self.i2t_first))

    @property
    def n_captions(self) -> int:
        return int(len(self.t2i))


HIT_RECALL_PROTOCOL = (
    "recall@k, 'hit' definition (CLIP paper, CLIP_benchmark): a query hits at k when a correct item "
    "is in its top k; ties counted against the query; percent of queries")
TRUE_RECALL_PROTOCOL = (
    "true recall@k (mteb's recall_at_k): per query, the fraction of its correct items in its top k "
    "(divided by all its correct items, not capped at k), averaged over queries; ties counted against "
    "the query; percent. Text->image has one correct image, so there it equals hit recall@k")
MRR_PROTOCOL = (
    "MRR: mean over queries of 1 / (1-based rank of the first correct item); ties counted against the "
    "query; percent (x100)")
NDCG_PROTOCOL = (
    "nDCG@k (main score of MIEB/mteb retrieval): binary relevance, every caption of an image relevant "
    "for image->text, its one image for text->image; DCG = sum over correct items in the top k of "
    "1 / log2(1-based rank + 1), divided by the ideal DCG of min(#correct, k) items; ties counted "
    "against the query (trec_eval / pytrec_eval, behind mteb, orders tied scores by document id, "
    "descending, instead: only tie-free scores agree exactly); percent (x100)")
MEDIAN_RANK_PROTOCOL = (
    "median rank (MedR): median over queries of the 1-based rank of the first correct item; ties "
    "counted against the query; lower is better")


@dataclass(frozen=True)
class Measure:
    """A retrieval measure: `stat` ("mean" or "median") of the per-query values gives the number."""

    name: str
    protocol: str
    unit: str
    higher_is_better: bool
    stat: str
    needs_k: bool


MEASURES: dict[str, Measure] = {
    "recall": Measure("recall", HIT_RECALL_PROTOCOL, "%", True, "mean", True),
    "true_recall": Measure("true_recall", TRUE_RECALL_PROTOCOL, "%", True, "mean", True),
    "mrr": Measure("mrr", MRR_PROTOCOL, "%", True, "mean", False),
    "ndcg": Measure("ndcg", NDCG_PROTOCOL, "%", True, "mean", True),
    "median_rank": Measure("median_rank", MEDIAN_RANK_PROTOCOL, "rank", False, "median", False),
}
_KEY = re.compile(r"^(i2t|t2i)_(recall|true_recall|mrr|ndcg|median_rank)(?:@([1-9][0-9]*))?$")


def retrieval_keys(measures: Any = ("recall",), ks: Any = (1, 5, 10), ndcg_k: int = 10) -> list[str]:
    """Metric keys in report order: i2t first, then per measure (k ascending for @k measures);
    nDCG uses its own cutoff `ndcg_k` (10, as mteb/MIEB)."""
    out = []
    for d in ("i2t", "t2i"):
        for m in measures:
            if m not in MEASURES:
                raise ValueError(f"unknown retrieval measure {m!r}; known: {', '.join(MEASURES)}")
            if m == "ndcg":
                out.append(f"{d}_ndcg@{ndcg_k}")
            elif MEASURES[m].needs_k:
                out += [f"{d}_{m}@{k}" for k in sorted(ks)]
            else:
                out.append(f"{d}_{m}")
    return out


def parse_key(key: str) -> tuple[str, Measure, int | None]:
    """'i2t_ndcg@10' -> ('i2t', MEASURES['ndcg'], 10)."""
    m = _KEY.match(key)
    if not m:
        raise ValueError(f"not a retrieval metric key: {key!r} (expected e.g. 'i2t_recall@5', 't2i_mrr')")
    direction, name, k = m.group(1), m.group(2), m.group(3)
    measure = MEASURES[name]
    if measure.needs_k != (k is not None):
        raise ValueError(f"{key!r}: {name} {'needs' if measure.needs_k else 'takes no'} '@k'")
    return direction, measure, (int(k) if k is not None else None)


def _queries(ranks: Any, direction: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(first-correct rank per query, rank of every correct item, its query, #correct per query)."""
    if direction == "t2i":
        r = np.asarray(ranks.t2i, dtype=np.int64)
        return r, r, np.arange(len(r)), np.ones(len(r), dtype=np.int64)
    first = np.asarray(ranks.i2t_first, dtype=np.int64)
    owner = np.asarray(ranks.text_to_image, dtype=np.int64)
    n_pos = np.bincount(owner, minlength=len(first))
    is_query = n_pos > 0  # an image without captions is no query (ranks.i2t_first == -1)
    # Renumber the queries 0..Q-1 so per-query arrays only hold real queries.
    qid = np.cumsum(is_query) - 1
    return first[is_query], np.asarray(ranks.i2t_caption, dtype=np.int64), qid[owner], n_pos[is_query]


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(n, dtype=np.float64) + 2.0)


def per_query(ranks: Any, key: str) -> np.ndarray:
    """Per-query values (float64, one per query, in query order) whose `MEASURES[...].stat` is the
    measure: hit recall 100 * [rank < k]; MRR 100 / (rank + 1); nDCG@k 100 * DCG / IDCG; true
    recall 100 * (correct items in the top k) / (correct items); median rank rank + 1.
    Image->text queries are the images with at least one caption, in image order."""
    direction, measure, k = parse_key(key)
    first, pos_rank, pos_query, n_pos = _queries(ranks, direction)
    if measure.name == "recall":
        return 100.0 * (first < k)
    if measure.name == "mrr":
        return 100.0 / (first + 1.0)
    if measure.name == "median_rank":
        return first + 1.0
    if measure.name == "true_recall":
        found = np.bincount(pos_query, weights=(pos_rank < k).astype(np.float64), minlength=len(n_pos))
        return 100.0 * found / n_pos
    gains = np.where(pos_rank < k, 1.0 / np.log2(pos_rank + 2.0), 0.0)
    dcg = np.bincount(pos_query, weights=gains, minlength=len(n_pos))
    idcg = np.cumsum(_discounts(k))[np.minimum(n_pos, k) - 1]
    return 100.0 * dcg / idcg


def stat_value(values: np.ndarray, stat: str) -> float:
    return float(np.median(values) if stat == "median" else np.mean(values))


def retrieval_scores(ranks: Any, keys: Any) -> dict[str, float]:
    """{key: measure} from the ranks, in the order of `keys` (see `retrieval_keys`)."""
    return {key: stat_value(per_query(ranks, key), parse_key(key)[1].stat) for key in keys}


def _by_direction(keys: Any) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(parse_key(key)[0], []).append(key)
    return groups


def retrieval_intervals(ranks: Any, keys: Any, **bootstrap_kw: Any) -> dict:
    """{key: stats.Interval} for every key; the queries of one direction share their resamples
    (`n_resamples`, `seed`, `level` as in `stats.bootstrap_many`)."""
    from bench.metrics import stats

    out = {}
    for group in _by_direction(keys).values():
        values = {k: per_query(ranks, k) for k in group}
        fns = {k: stats.stat_fn(v, parse_key(k)[1].stat) for k, v in values.items()}
        est = {k: stat_value(v, parse_key(k)[1].stat) for k, v in values.items()}
        out.update(stats.bootstrap_many(len(next(iter(values.values()))), fns, estimates=est, **bootstrap_kw))
    return {k: out[k] for k in keys}


def retrieval_paired(ranks_a: Any, ranks_b: Any, keys: Any, **bootstrap_kw: Any) -> dict:
    """{key: stats.PairedInterval of a - b}: two embedders' ranks on the same images and captions."""
    from bench.metrics import stats

    if not np.array_equal(np.asarray(ranks_a.text_to_image), np.asarray(ranks_b.text_to_image)) or \
            ranks_a.n_images != ranks_b.n_images:
        raise ValueError("paired retrieval needs the same images and captions for both embedders")
    out = {}
    for group in _by_direction(keys).values():
        pairs = {}
        for k in group:
            stat = parse_key(k)[1].stat
            pairs[k] = tuple(stats.stat_fn(per_query(r, k), stat) for r in (ranks_a, ranks_b))
        n = len(per_query(ranks_a, group[0]))
        out.update(stats.paired_many(n, pairs, **bootstrap_kw))
    return {k: out[k] for k in keys}


def _survival(gallery: int, n: int) -> np.ndarray:
    """S[r], r = 0..gallery: probability that none of n correct items (of `gallery`) is in the top r
    of a uniformly random ranking, C(gallery - n, r) / C(gallery, r) (hypergeometric)."""
    t = np.arange(gallery, dtype=np.float64)
    factors = np.clip((gallery - n - t) / (gallery - t), 0.0, None)
    return np.concatenate([[1.0], np.cumprod(factors)])


def retrieval_chance(key: str, text_to_image: Any, n_images: int) -> float:
    """The measure's expected value under a uniformly random ranking (exact, for these captions
    per image), in the measure's unit. Image->text: a gallery of M captions, image i has n_i correct;
    text->image: a gallery of N images, one correct. Hit recall@k: mean over queries of
    1 - C(G - n, k) / C(G, k); true recall@k: k / G; MRR: mean E[1 / first rank]; nDCG@k: each
    position holds a correct item with probability n / G, so E[DCG] = (n / G) * sum of the discounts;
    median rank: the median of the pooled first-rank distribution (the large-sample median rank)."""
    direction, measure, k = parse_key(key)
    owner = np.asarray(text_to_image, dtype=np.int64)
    if direction == "t2i":
        gallery, n_values, weights = int(n_images), np.array([1]), np.array([len(owner)], dtype=np.float64)
    else:
        n_pos = np.bincount(owner, minlength=int(n_images))
        gallery = len(owner)
        n_values, counts = np.unique(n_pos[n_pos > 0], return_counts=True)
        weights = counts.astype(np.float64)
    weights = weights / weights.sum()
    if measure.name == "true_recall":
        return 100.0 * min(k, gallery) / gallery
    if measure.name == "ndcg":
        disc = _discounts(min(k, gallery)).sum()
        per_n = [(n / gallery) * disc / _discounts(min(n, k)).sum() for n in n_values]
        return 100.0 * float(np.dot(weights, per_n))
    surv = [_survival(gallery, int(n)) for n in n_values]
    if measure.name == "recall":
        return 100.0 * float(np.dot(weights, [1.0 - s[min(k, gallery)] for s in surv]))
    if measure.name == "mrr":
        # P(first correct at 0-based rank r) = S[r] - S[r + 1]
        inv = 1.0 / np.arange(1, gallery + 1, dtype=np.float64)
        return 100.0 * float(np.dot(weights, [np.dot(-np.diff(s), inv) for s in surv]))
    cdf = 1.0 - np.dot(weights, np.stack(surv))  # cdf[r] = P(1-based first rank <= r)
    return float(np.argmax(cdf >= 0.5 - 1e-12))


# --- classification ------------------------------------------------------------------------------


def class_ranks(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: the pessimistic 0-based rank of its true class (number of other classes scoring
    >= it, as `zeroshot.topk_metrics`; a NaN true score ranks C) and the predicted class (argmax,
    first on ties; NaN scores never win). int32 arrays [N]. Correct at k <=> rank < k."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 2 or y.ndim != 1 or len(y) != len(s):
        raise ValueError(f"scores must be [N, C] and labels [N]; got {s.shape} and {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= s.shape[1]):
        raise ValueError(f"labels must be integer classes in [0, {s.shape[1]})")
    y = y.astype(np.int64)
    true = s[np.arange(len(y)), y]
    rank = np.where(np.isnan(true), s.shape[1], (s >= true[:, None]).sum(1) - 1)
    pred = np.argmax(np.where(np.isnan(s), -np.inf, s), axis=1)
    return rank.astype(np.int32), pred.astype(np.int32)


def topk_per_query(true_rank: Any, k: int, num_classes: int) -> np.ndarray:
    """100 * [correct within top-k], k capped at the number of classes (as `topk_metrics`)."""
    return 100.0 * (np.asarray(true_rank) < min(k, num_classes))


def expected_ap(n: int, n_pos: int) -> float:
    """Expected average precision (fraction) of one class under a uniformly random ranking of n
    samples with n_pos positives: E[AP] = (H_n + (n - H_n) (n_pos - 1) / (n - 1)) / n, H_n the n-th
    harmonic number (from E[rel_i rel_j] = n_pos (n_pos - 1) / (n (n - 1))). It tends to the
    positive rate n_pos / n from above as n grows (0.0116 for 1% positives at n = 5000,
    0.138 for 10% at n = 100)."""
    if n_pos < 1 or n_pos > n:
        raise ValueError(f"need 1 <= n_pos <= n, got n_pos={n_pos}, n={n}")
    if n == 1:
        return 1.0
    h = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (h + (n - h) * (n_pos - 1) / (n - 1)) / n


def classification_chance(key: str, num_classes: int, labels: Any = None) -> float:
    """Chance level in percent: top-k k / C (k capped at C), mean per-class recall 1 / C, both the
    expected score of guesses that ignore the image; mAP the mean over classes with a positive of the
    exact expected AP of a random ranking (`expected_ap`; about the mean positive rate), which needs
    the multi-label `labels` [N, C]."""
    if key == "mAP":
        if labels is None:
            raise ValueError("mAP chance needs the multi-label labels [N, C]")
        y = np.asarray(labels)
        n_pos = y.sum(0).astype(int)
        return 100.0 * float(np.mean([expected_ap(len(y), int(p)) for p in n_pos if p > 0]))
    m = re.fullmatch(r"top([1-9][0-9]*)", key)
    if m:
        return 100.0 * min(int(m.group(1)), num_classes) / num_classes
    if key == "mean_per_class_recall":
        return 100.0 / num_classes
    raise ValueError(f"no chance level for classification metric {key!r}")


def _classification_fns(true_rank: Any, labels: Any, num_classes: int, keys: Any) -> dict:
    from bench.metrics import stats

    fns = {}
    for key in keys:
        m = re.fullmatch(r"top([1-9][0-9]*)", key)
        if m:
            fns[key] = stats.mean_stat(topk_per_query(true_rank, int(m.group(1)), num_classes))
        elif key == "mean_per_class_recall":
            fns[key] = stats.mean_per_class_stat(topk_per_query(true_rank, 1, num_classes), labels)
        else:
            raise ValueError(f"no per-query values for classification metric {key!r} (mAP: stats.map_stat)")
    return fns


CLASSIFICATION_KEYS = ("top1", "top5", "mean_per_class_recall")


def classification_intervals(true_rank: Any, labels: Any, num_classes: int, keys: Any = CLASSIFICATION_KEYS,
                             **bootstrap_kw: Any) -> dict:
    """{key: stats.Interval} for top-k / mean per-class recall from `class_ranks` (resamples of the
    test images shared by all keys); estimates equal `zeroshot.topk_metrics`."""
    from bench.metrics import stats

    fns = _classification_fns(true_rank, labels, num_classes, keys)
    return stats.bootstrap_many(len(np.asarray(true_rank)), fns, **bootstrap_kw)


def classification_paired(rank_a: Any, rank_b: Any, labels: Any, num_classes: int,
                          keys: Any = CLASSIFICATION_KEYS, **bootstrap_kw: Any) -> dict:
    """{key: stats.PairedInterval of a - b} for two embedders on the same test images."""
    from bench.metrics import stats

    if len(np.asarray(rank_a)) != len(np.asarray(rank_b)):
        raise ValueError("paired classification needs the same test images for both embedders")
    fa = _classification_fns(rank_a, labels, num_classes, keys)
    fb = _classification_fns(rank_b, labels, num_classes, keys)
    return stats.paired_many(len(np.asarray(rank_a)), {k: (fa[k], fb[k]) for k in fa}, **bootstrap_kw)
