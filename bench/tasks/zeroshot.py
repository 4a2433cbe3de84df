"""Zero-shot classification: class names through prompt templates, scored by cosine similarity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import field_validator

from bench.params import TaskParams
from bench.results import Metric
from bench.tasks.base import MetricSpec, TaskInputs, classification_records, num_items

ZEROSHOT = MetricSpec(
    "zeroshot/{name}", "%", True, "quality",  # name: top1, top5, mean_per_class_recall (single-label), mAP
    "class names through prompt templates, averaged per class; cosine similarity")
METRICS = (ZEROSHOT,)


class ZeroShotParams(TaskParams):
    type: Literal["zeroshot"]
    dataset: str
    # A list of prompts ({c} = class name); "dataset": the dataset's own (a webdataset's
    # zeroshot_classification_templates.txt), an error if it has none; "default": the built-in
    # bench.metrics.zeroshot.DEFAULT_TEMPLATES; unset: the dataset's own when it ships them, else "default".
    templates: list[str] | Literal["dataset", "default"] | None = None
    class_names: dict[str, str] | None = None  # optional renaming: folder name -> readable name
    needs: ClassVar[frozenset[str]] = frozenset({"labels"})

    @field_validator("templates")
    @classmethod
    def _has_slot(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("templates must not be empty")
            for t in v:
                if "{c}" not in t:
                    raise ValueError(f"template {t!r} has no '{{c}}' slot for the class name")
        return v

    def check_data(self, dataset: Callable[[str], Any], where: str) -> None:
        if self.templates == "dataset" and not getattr(dataset(self.dataset), "templates", None):
            from bench.errors import ConfigError

            raise ConfigError(f"{where}.templates: 'dataset', but dataset '{self.dataset}' ships no "
                              "zero-shot templates (a webdataset's zeroshot_classification_templates.txt); "
                              "give a list of templates or leave the key out")

    def pick_templates(self, ds: Any) -> tuple[list[str], str]:
        """(templates, where they come from: "task" | "dataset" | "default") for the loaded dataset."""
        from bench.metrics.zeroshot import DEFAULT_TEMPLATES

        if isinstance(self.templates, list):
            return list(self.templates), "task"
        own = getattr(ds, "templates", None)
        if own and self.templates != "default":
            return list(own), "dataset"
        return list(DEFAULT_TEMPLATES), "default"


def run(inputs: TaskInputs, task: ZeroShotParams) -> list[Metric]:
    from bench.embedders.base import check_finite
    from bench.metrics.zeroshot import class_scores, class_text_embeddings, zeroshot_classify

    ds = inputs.dataset(task.dataset)
    emb = inputs.embedder
    if not emb.supports_text:
        names = ["mAP"] if ds.multilabel else ["top1", "top5", "mean_per_class_recall"]
        reason = f"'{emb.kind}' embeds images only: it cannot embed class-name prompts"
        return [ZEROSHOT.na(inputs.label, "zeroshot", task.dataset, reason, name=n) for n in names]
    names = [(task.class_names or {}).get(c, c).replace("_", " ") for c in ds.class_names]
    templates, templates_from = task.pick_templates(ds)

    def embed_prompts(prompts: list[str]):
        return check_finite(emb.embed_texts(prompts), inputs.label, lambda i: f"prompt {prompts[i]!r}",
                            f"the zero-shot prompts of dataset '{task.dataset}'", inputs.runtime.dtype)

    with inputs.timed(f"zeroshot/{task.dataset}"):
        class_emb = class_text_embeddings(embed_prompts, names, templates)
        image_emb = inputs.image_embeddings(task.dataset)
        scores = zeroshot_classify(image_emb, class_emb, ds.labels, multilabel=ds.multilabel)
    inputs.per_query(f"zeroshot/{task.dataset}",
                     classification_records(class_scores(image_emb, class_emb), ds.labels,
                                            len(ds.class_names), ds.multilabel))
    arrays = {k: v for k, v in scores.items() if not isinstance(v, float)}
    inputs.detail(f"zeroshot/{task.dataset}", {"class_names": ds.class_names, "templates": list(templates),
                                               "templates_from": templates_from,
                                               **arrays})
    return [ZEROSHOT.record(inputs.label, "zeroshot", task.dataset, float(v),
                            num_items=num_items(k, ds.labels, ds.multilabel), name=k)
            for k, v in scores.items() if isinstance(v, (int, float))]
