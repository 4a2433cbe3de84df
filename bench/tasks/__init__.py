"""Tasks: one module per task type (retrieval, linear_probe, zeroshot, speed), each with its
parameter model, its MetricSpecs and `run(inputs, params)`; registered in bench.registry.

A task gets what it needs in a TaskInputs (datasets, embeddings, timings, runtime options), never the
run's global state. A metric an embedder cannot serve (text for an image-only model) is recorded as
n/a with the reason, never as a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bench.tasks.base import MetricSpec, TaskInputs, num_items

__all__ = ["MetricSpec", "TaskInputs", "check_tasks_against_data", "metric_specs", "num_items"]


def metric_specs() -> dict[str, tuple[MetricSpec, ...]]:
    """Task type -> the MetricSpecs its module declares (`METRICS`), for every registered task."""
    import importlib

    from bench import registry

    out = {}
    for name in registry.names("task"):
        module = importlib.import_module(registry.component("task", name).target.split(":")[0])
        out[name] = tuple(getattr(module, "METRICS", ()))
    return out


def check_tasks_against_data(tasks: Sequence[Any], dataset: Callable[[str], Any]) -> None:
    """Load every dataset the tasks use, and let each task check what only the data can tell
    (its params' `check_data`), before any output is written."""
    for i, task in enumerate(tasks):
        for field, ref in task.datasets().items():
            # A type whose entries may hold either (webdataset, kind: auto) is checked on its data.
            got = "captions" if hasattr(dataset(ref), "captions") else "labels"
            if got not in task.needs:
                from bench.errors import ConfigError

                needs = " or ".join(sorted(task.needs))
                raise ConfigError(f"tasks[{i}].{field}: task '{task.type}' needs {needs}, dataset '{ref}' "
                                  f"holds {got}")
        task.check_data(dataset, f"tasks[{i}]")
