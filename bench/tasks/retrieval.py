"""Cross-modal retrieval (image -> text, text -> image): recall@k on a captions dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import field_validator

from bench.params import Int, TaskParams
from bench.results import Metric
from bench.tasks.base import MetricSpec, TaskInputs

RECALL = MetricSpec(
    "retrieval/{direction}_recall@{k}", "%", True, "quality",
    "recall@k, 'hit' definition (CLIP paper, CLIP_benchmark): a query hits at k when a correct item is in "
    "its top k; ties counted against the query")
METRICS = (RECALL,)


class RetrievalParams(TaskParams):
    type: Literal["retrieval"]
    dataset: str
    ks: list[Int(ge=1)] = [1, 5, 10]  # each must also be below the gallery size (check_data)
    chunk_size: Int(ge=1) = 512
    needs: ClassVar[frozenset[str]] = frozenset({"captions"})

    @field_validator("ks")
    @classmethod
    def _ks(cls, v):
        if not v:
            raise ValueError("ks is empty: list at least one k, e.g. [1, 5, 10]")
        dup = sorted({k for k in v if v.count(k) > 1})
        if dup:
            raise ValueError(f"ks lists {dup[0]} twice: each k once")
        return v

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


def run(inputs: TaskInputs, task: RetrievalParams) -> list[Metric]:
    from bench.metrics.retrieval import recall_at_k

    label, emb = inputs.label, inputs.embedder
    if not emb.supports_text:
        reason = f"'{emb.kind}' embeds images only: no text embeddings for cross-modal retrieval"
        return [RECALL.na(label, "retrieval", task.dataset, reason, direction=d, k=k)
                for d in ("i2t", "t2i") for k in task.ks]
    ds = inputs.dataset(task.dataset)
    _, owner = ds.flat_captions()
    img = inputs.image_embeddings(task.dataset)
    txt = inputs.text_embeddings(task.dataset)
    with inputs.timed(f"retrieval/{task.dataset}"):
        scores = recall_at_k(img, txt, owner, ks=tuple(task.ks), chunk_size=task.chunk_size)
    inputs.detail(f"retrieval/{task.dataset}", {"ks": list(task.ks),
                                               "i2t": [scores[f"i2t_recall@{k}"] for k in task.ks],
                                               "t2i": [scores[f"t2i_recall@{k}"] for k in task.ks],
                                               "num_images": len(ds), "num_captions": len(owner)})
    # Queries: image->text counts the images that own a caption, text->image every caption.
    n_queries = {"i2t": len(set(int(i) for i in owner)), "t2i": len(owner)}
    out = []
    for name, v in scores.items():
        direction, k = name.split("_recall@")
        out.append(RECALL.record(label, "retrieval", task.dataset, float(v), num_items=n_queries[direction],
                                 direction=direction, k=k))
    return out
