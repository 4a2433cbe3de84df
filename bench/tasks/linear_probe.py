"""Linear probe: logistic regression on frozen image embeddings of a labelled dataset."""

from __future__ import annotations

from typing import ClassVar, Literal

from bench.params import Float, Int, TaskParams
from bench.results import Metric
from bench.tasks.base import MetricSpec, TaskInputs, classification_records, num_items

PROBE = MetricSpec(
    "probe/{name}", "%", True, "quality",  # name: top1, top5, mean_per_class_recall (single-label), mAP
    "logistic regression on frozen L2-normalized image embeddings; C swept on the validation split, "
    "retrained on train+val, scored on test")
METRICS = (PROBE,)


class LinearProbeParams(TaskParams):
    type: Literal["linear_probe"]
    train: str
    test: str
    val: str | None = None
    val_fraction: Float(gt=0, lt=1) = 0.2
    max_iter: Int(ge=10) = 1000
    dataset_fields: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    needs: ClassVar[frozenset[str]] = frozenset({"labels"})


def run(inputs: TaskInputs, task: LinearProbeParams) -> list[Metric]:
    from bench.metrics.linear_probe import linear_probe

    train, test = inputs.dataset(task.train), inputs.dataset(task.test)
    if train.class_names != test.class_names:
        from bench.errors import DataError

        raise DataError(f"linear_probe: '{task.train}' and '{task.test}' have different class lists "
                        f"({len(train.class_names)} vs {len(test.class_names)} classes)")
    val_x = val_y = None
    if task.val:
        val = inputs.dataset(task.val)
        val_x, val_y = inputs.image_embeddings(task.val).numpy(), val.labels
    with inputs.timed(f"linear_probe/{task.test}"):
        res = linear_probe(inputs.image_embeddings(task.train).numpy(), train.labels,
                           inputs.image_embeddings(task.test).numpy(), test.labels, val_x, val_y,
                           multilabel=train.multilabel, seed=inputs.runtime.seed,
                           val_fraction=task.val_fraction, max_iter=task.max_iter,
                           num_classes=len(train.class_names))
    inputs.per_query(f"linear_probe/{task.test}",
                     classification_records(res.test_scores, test.labels, len(train.class_names),
                                            test.multilabel))
    details = dict(res.details)
    details["class_names"] = train.class_names
    inputs.detail(f"linear_probe/{task.test}", details)
    return [PROBE.record(inputs.label, "linear_probe", task.test, float(v),
                         num_items=num_items(name, test.labels, test.multilabel), name=name)
            for name, v in res.metrics.items() if name != "best_C"]  # best_C: a setting, kept in details
