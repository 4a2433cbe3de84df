"""What a task receives (TaskInputs) and how it declares its metrics (MetricSpec).

A task is one module in this package: its parameter model (a bench.params.TaskParams), the
MetricSpecs of what it reports, and `run(inputs, params) -> list[Metric]`, registered with one line
in bench.registry. Each metric's facts (key, unit, direction, kind, protocol) are declared once, in
the task's MetricSpec next to the computation; every Metric record is made by its spec, and the
report and `bench compare` read those facts from the records.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.results import Metric

MetricKind = Literal["quality", "speed", "memory"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric (or one family: `key` and `protocol` may hold {fields}, filled per record)."""

    key: str  # e.g. "retrieval/{direction}_recall@{k}"
    unit: str  # "%", "img/s", "ms", "MiB", "s", ...
    higher_is_better: bool
    kind: MetricKind
    protocol: str = ""

    def record(self, label: str, task: str, dataset: str, value: float | None, *,
               num_items: int | None = None, **fields: Any) -> Metric:
        """The Metric record of this spec for one embedder and dataset."""
        return Metric(embedder=label, task=task, dataset=dataset, key=self.key.format(**fields), value=value,
                      unit=self.unit, higher_is_better=self.higher_is_better, kind=self.kind,
                      protocol=self.protocol.format(**fields), num_items=num_items)

    def matches(self, key: str) -> bool:
        """Whether `key` is one of this spec's keys (its {fields} filled in)."""
        import re

        parts = re.split(r"\{\w+\}", self.key)
        return re.fullmatch("[^/]+?".join(re.escape(p) for p in parts), key) is not None

    def na(self, label: str, task: str, dataset: str, reason: str, **fields: Any) -> Metric:
        """The n/a record: the metric exists but this embedder cannot serve it (`reason` says why)."""
        return Metric(embedder=label, task=task, dataset=dataset, key=self.key.format(**fields), value=None,
                      unit=self.unit, higher_is_better=self.higher_is_better, kind=self.kind, protocol="",
                      na_reason=reason)


@dataclass
class TaskInputs:
    """Everything a task may use for one embedder: no global run context behind it.

    `dataset(name)` loads (once) a dataset of the config; `image_embeddings(name)` and
    `text_embeddings(name)` give the embedder's vectors for it (through the cache); `timed(what)` adds
    the wall time of a block to the run's timings; `detail(key, value)` keeps arrays for the report.
    `runtime` is the config's runtime section (batch_size, num_workers, dtype, seed, ...); `device` is
    resolved ("cpu", "cuda", "cuda:N"). `per_query(name, record)` keeps a quality task's per-query
    outcomes (a bench.metrics.records.PerQuery, named "<task>/<dataset>" as its metrics' task and
    dataset): the runner saves them in per_query.npz and derives intervals, chance and paired marks.
    `cache_dir` is the run's cache folder (None with the cache off), for small per-model facts a task
    measures once (e.g. FLOPs per image).
    """

    label: str
    embedder: Any
    device: str
    runtime: Any
    dataset: Callable[[str], Any]
    image_embeddings: Callable[[str], Any]
    text_embeddings: Callable[[str], Any]
    timed: Callable[[str], AbstractContextManager]
    detail: Callable[[str, Any], None]
    per_query: Callable[[str, Any], None] = field(default=lambda name, record: None)
    cache_dir: Any = None


def num_items(key: str, labels: Any, multilabel: bool) -> int | None:
    """Resolution of a classification metric in evaluated items: one item changes it by at most
    100/num_items points (bench.regression's tolerance floor). top-k accuracy: the N test images.
    mean_per_class_recall: classes present x the smallest class's count (one image of the smallest
    class moves its class recall by 100/n_min, the mean by 1/classes of that). mAP: classes with a
    positive x the fewest positives, the same count: AP of a class is the mean over its P
    positives of a precision in [0, 1], so one positive's precision term moves mAP by at most
    100/(classes x P); a near-tie flip of two adjacent items moves it by at most half of that."""
    import numpy as np

    y = np.asarray(labels)
    if len(y) == 0:
        return None
    name = key.rsplit("/", 1)[-1]
    if name in ("top1", "top5"):
        return int(len(y))
    if multilabel and name == "mAP":
        pos = y.sum(0)
        pos = pos[pos > 0]
        return int(len(pos) * pos.min()) if len(pos) else None
    if not multilabel and name == "mean_per_class_recall":
        counts = np.bincount(y.astype(np.int64))
        counts = counts[counts > 0]
        return int(len(counts) * counts.min())
    return None


def classification_records(scores: Any, labels: Any, num_classes: int, multilabel: bool) -> Any:
    """The per-query record of a classification task from its test scores [N, C]: the true class's
    rank and the prediction per test image (single-label), or labels and scores (multi-label, mAP)."""
    from bench.metrics.ranking import class_ranks
    from bench.metrics.records import classification_record, multilabel_record

    if multilabel:
        return multilabel_record(labels, scores)
    true_rank, predicted = class_ranks(scores, labels)
    return classification_record(true_rank, predicted, labels, num_classes)
