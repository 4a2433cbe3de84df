"""Cross-modal retrieval (image -> text, text -> image) on a captions dataset: hit recall@k by default;
true recall@k, MRR, nDCG@10 and median rank on request (`measures`), each defined by name in
bench.metrics.ranking. The per-query ranks are kept (`inputs.per_query`) for intervals and paired tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import field_validator

from bench.metrics.ranking import MEASURES
from bench.params import Int, TaskParams
from bench.results import Metric
from bench.tasks.base import MetricSpec, TaskInputs

RECALL = MetricSpec(
    "retrieval/{direction}_recall@{k}", "%", True, "quality",
    "recall@k, 'hit' definition (CLIP paper, CLIP_benchmark): a query hits at k when a correct item is in "
    "its top k; ties counted against the query")
TRUE_RECALL = MetricSpec("retrieval/{direction}_true_recall@{k}", "%", True, "quality",
                         MEASURES["true_recall"].protocol)
MRR = MetricSpec("retrieval/{direction}_mrr", "%", True, "quality", MEASURES["mrr"].protocol)
NDCG = MetricSpec("retrieval/{direction}_ndcg@{k}", "%", True, "quality", MEASURES["ndcg"].protocol)
MEDIAN_RANK = MetricSpec("retrieval/{direction}_median_rank", "rank", False, "quality",
                         MEASURES["median_rank"].protocol)
METRICS = (RECALL, TRUE_RECALL, MRR, NDCG, MEDIAN_RANK)
SPECS = {"recall": RECALL, "true_recall": TRUE_RECALL, "mrr": MRR, "ndcg": NDCG, "median_rank": MEDIAN_RANK}
NDCG_K = 10  # nDCG@10: the main score of MIEB/mteb retrieval tasks
Measure = Literal["recall", "true_recall", "mrr", "ndcg", "median_rank"]



def _each_once(v: list, field: str, item: str, example: str) -> list:
    """A non-empty list naming each item once (ks, measures)."""
    if not v:
        raise ValueError(f"{field} is empty: list at least one {item}, e.g. {example}")
    dup = sorted({x for x in v if v.count(x) > 1})
    if dup:
        raise ValueError(f"{field} lists {dup[0]} twice: each {item} once")
    return v

class RetrievalParams(TaskParams):
    type: Literal["retrieval"]
    dataset: str
    ks: list[Int(ge=1)] = [1, 5, 10]  # each must also be below the gallery size (check_data)
    chunk_size: Int(ge=1) = 512
    # Which measures to report (bench.metrics.ranking.MEASURES); recall and true_recall at every k of
    # `ks`, nDCG at 10. The default is the CLIP "hit" recall@k alone.
    measures: list[Measure] = ["recall"]
    needs: ClassVar[frozenset[str]] = frozenset({"captions"})

    @field_validator("ks")
    @classmethod
    def _ks(cls, v):
        return _each_once(v, "ks", "k", "[1, 5, 10]")

    @field_validator("measures")
    @classmethod
    def _measures(cls, v):
        return _each_once(v, "measures", "measure", "[recall]")

    def keys(self) -> list[str]:
        """Metric keys without the 'retrieval/' prefix, in report order (ranking.retrieval_keys)."""
        from bench.metrics.ranking import retrieval_keys

        return retrieval_keys(self.measures, self.ks, NDCG_K)

    def check_data(self, dataset: Callable[[str], Any], where: str) -> None:
        """Every k must be below the number of images. At k >= N, t2i recall@k is 100% whatever the
        model (the whole gallery is in the top k), so a typo like ks [1, 5, 1000] on a 100-image set
        would report a perfect score; it is refused instead (exit 2, naming the task and the k)."""
        from bench.errors import ConfigError

        n = len(dataset(self.dataset))
        too_big = [k for k in self.ks if k >= n]
        if too_big:
            k = too_big[0]
            raise ConfigError(f"{where}.ks: k={k} is not below the {n} images of dataset '{self.dataset}', "
                              f"so recall@{k} would be 100% whatever the model; use ks below {n}")


def _spec_fields(key: str) -> tuple[MetricSpec, dict[str, str]]:
    from bench.metrics.ranking import parse_key

    direction, measure, k = parse_key(key)
    fields = {"direction": direction} if k is None else {"direction": direction, "k": str(k)}
    return SPECS[measure.name], fields


def run(inputs: TaskInputs, task: RetrievalParams) -> list[Metric]:
    from bench.metrics.ranking import retrieval_scores
    from bench.metrics.records import retrieval_record
    from bench.metrics.retrieval import recall_from_ranks, retrieval_ranks

    label, emb = inputs.label, inputs.embedder
    keys = task.keys()
    if not emb.supports_text:
        reason = f"'{emb.kind}' embeds images only: no text embeddings for cross-modal retrieval"
        out = []
        for key in keys:
            spec, fields = _spec_fields(key)
            out.append(spec.na(label, "retrieval", task.dataset, reason, **fields))
        return out
    ds = inputs.dataset(task.dataset)
    _, owner = ds.flat_captions()
    img = inputs.image_embeddings(task.dataset)
    txt = inputs.text_embeddings(task.dataset)
    with inputs.timed(f"retrieval/{task.dataset}"):
        # Same chunked score products as recall_at_k: recall_from_ranks gives its numbers exactly.
        ranks = retrieval_ranks(img, txt, owner, chunk_size=task.chunk_size)
        scores = recall_from_ranks(ranks, task.ks)
        scores.update(retrieval_scores(ranks, [k for k in keys if k not in scores]))
    inputs.per_query(f"retrieval/{task.dataset}", retrieval_record(ranks))
    curves = recall_from_ranks(ranks, task.ks)
    inputs.detail(f"retrieval/{task.dataset}", {"ks": list(task.ks),
                                               "i2t": [curves[f"i2t_recall@{k}"] for k in task.ks],
                                               "t2i": [curves[f"t2i_recall@{k}"] for k in task.ks],
                                               "num_images": len(ds), "num_captions": len(owner)})
    # Queries: image->text counts the images that own a caption, text->image every caption.
    n_queries = {"i2t": len(set(int(i) for i in owner)), "t2i": len(owner)}
    out = []
    for key in keys:
        spec, fields = _spec_fields(key)
        # The item floor of bench.regression is in points of a percentage: not for a rank.
        n = n_queries[fields["direction"]] if spec.unit == "%" else None
        out.append(spec.record(label, "retrieval", task.dataset, float(scores[key]), num_items=n, **fields))
    return out
