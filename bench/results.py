"""Result records and the `results.json` schema: the one set of types a run writes and a report or a
comparison reads back (`load_results(path) -> RunResult`). Everything a report or a comparison needs.

Writing: tasks build `Metric`s (a pydantic dataclass: positional or keyword arguments, numpy numbers
accepted), the runner a `RunResult`; `RunResult.to_json()` is the file's content. Reading: the raw JSON
is checked first (bench.results_checks: NaN, wrong types, schema version; one-line messages), then
validated into the same types, so an unexpected field type is a one-line error too, never a traceback
later in a report. Free-form parts (config, details, describe) stay dicts; the parts a report draws
from `details` are checked on reading (`RunResult.curves()`, `RunResult.per_class()`).

results.json (schema_version 1):
{
  "schema_version": 1,
  "benchmark": "demo",                     # config `name`
  "run_id": "20261128-174500-demo",
  "created": "2026-11-28T17:45:00+00:00",  # UTC ISO 8601
  "config_path": "configs/demo.yaml",
  "config": {...},                         # the resolved config (paths absolute, defaults filled)
  "environment": {
      "python": "3.11.7", "platform": "...", "packages": {"torch": "2.13.0", ...},
      "git": {"commit": "abc123...", "dirty": false},
      "device": {"type": "cpu"|"cuda", "name": "...", "cpu_count": 2, "torch_threads": 2,
                 "cuda": null | {"name", "capability", "total_mib", "driver"}},
      "hardware_fingerprint": "16 hex"     # speed/memory compare only when these match
  },
  "synthetic": true,                        # true when any embedder's weights are random/tiny
  "datasets": {name: {"type", "fingerprint", "num_images", "num_captions"?, "num_classes"?, "multilabel"?,
                      "skipped_images"?, "skipped_captions"? (on_bad_image: skip), "duplicates_dropped"?}},
  "embedders": {label: {"type", "fingerprint" (16 hex), "fingerprint_detail": {...}, "describe": {...},
                        "modalities": ["image", "text"], "random_weights": bool,
                        "finetune"?: {"base": label, "checkpoint", "fingerprint", "reused": bool, "stage_s",
                                      "history": [{"step", "loss", "lr", "val_loss"?, "logit_scale"?}],
                                      "wall_s", "samples_per_s", "peak_rss_mb", "trainable_params",
                                      "total_params", "num_processes", "num_train_images", "final_loss",
                                      "train", "val", "params", ...}}},   # fine-tuned embedders only
  "metrics": [                              # flat: one row per (embedder, task, dataset, key)
     {"embedder": label, "task": "retrieval", "dataset": name, "key": "retrieval/i2t_recall@5",
      "value": 41.2 | null, "unit": "%", "higher_is_better": true,
      "kind": "quality"|"speed"|"memory"|"fidelity", "protocol": "...", "na_reason": null | "why it is n/a",
      "num_items": 100,                     # optional, quality only: one item moves the value by at most
                                            # 100/num_items points (bench.regression uses it; absent
                                            # in results written before it existed)
      "ci_low": 35.0, "ci_high": 47.0,      # optional, quality: bootstrap interval (config statistics)
      "chance": 4.9}                        # optional, quality: value of a random ranking / guess
  ],
  "paired": [{"task", "dataset", "key", "best", "runner_up", "diff", "low", "high", "level",
              "significant"}],             # optional: best of each quality row against the runner-up
                                            # (paired bootstrap on the same queries; bench.significance)
  "details": {label: {"<task>/<dataset>": {...}}},   # arrays for plots: per-class accuracy, curves
  "timings": {label: {"<what>": seconds}},            # wall time of each step (embedding, probe, ...)
  "cache": {label: {dataset: "hit"|"miss"}},
  "notes": ["..."],
  "complete": true,                         # false: the run stopped; the tables hold the finished embedders
  "error": "DataError: ..."                 # only when complete is false because the run failed: one line
}
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator
from pydantic.dataclasses import dataclass

from bench.io import write_json_atomic, write_text_atomic  # noqa: F401  (re-exported: the one writer)
from bench.results_checks import METRIC_KINDS, SCHEMA_VERSION, check_results

__all__ = ["METRIC_KINDS", "SCHEMA_VERSION", "Metric", "RunResult", "Environment", "DatasetSummary",
           "EmbedderRecord", "TrainingRecord", "TrainingStep", "Paired", "RetrievalCurves", "PerClass",
           "check_results", "load_results", "as_result"]


@dataclass
class Metric:
    """One row of results.json: (embedder, task, dataset, key) and its value, with the facts a reader
    needs to judge it (unit, direction, kind, protocol), declared where the metric is computed."""

    embedder: str
    task: str
    dataset: str
    key: str
    value: float | None
    unit: str = ""
    higher_is_better: bool = True
    kind: str = "quality"  # quality | speed | memory
    protocol: str = ""
    na_reason: str | None = None
    # Quality only: the metric's resolution in evaluated items (test images, queries, ...): one item
    # changes the value by at most 100/num_items points. None: unknown (left out of the JSON).
    num_items: int | None = None
    # Quality only (bench.significance), in the metric's unit: the bootstrap interval [ci_low, ci_high]
    # at the config's statistics.level, and the expected value of a random ranking / guess. None:
    # not computed (left out of the JSON; absent in results written before they existed).
    ci_low: float | None = None
    ci_high: float | None = None
    chance: float | None = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in _OPTIONAL:
            if d[name] is None:
                del d[name]
            elif name != "num_items":
                d[name] = float(d[name])
        if d["value"] is not None:
            v = float(d["value"])
            # NaN/Infinity are not JSON numbers and would be refused by load_results: record n/a instead.
            if not math.isfinite(v):
                d["value"], d["na_reason"] = None, d["na_reason"] or f"not a finite number ({v})"
            else:
                d["value"] = v
        return d


_OPTIONAL = ("num_items", "ci_low", "ci_high", "chance")


class Paired(BaseModel):
    """A paired bootstrap of the best value of a table row against the runner-up on the same queries
    (bench.significance): `diff` = best - runner_up, [low, high] its interval at `level`;
    `significant` when the interval excludes 0 (else the two are a statistical tie)."""

    model_config = ConfigDict(extra="allow")

    task: str
    dataset: str
    key: str
    best: str
    runner_up: str
    diff: float
    low: float
    high: float
    level: float
    significant: bool


class Record(BaseModel):
    """A typed sub-record: known fields typed, unknown ones kept (a newer bench may add some), and
    written back with exactly the keys it was given."""

    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)  # python values: the writer converts numpy and paths


class GitInfo(Record):
    commit: str | None = None
    dirty: bool | None = None


class CudaInfo(Record):
    name: str | None = None
    capability: str | None = None
    total_mib: int | None = None


class DeviceInfo(Record):
    type: str = "?"  # fields in the order bench.environment writes them (a dump follows this order)
    cpu: str | None = None
    cpu_count: int | None = None
    torch_threads: int | None = None
    cuda: CudaInfo | None = None
    name: str | None = None


class Environment(Record):
    python: str | None = None
    platform: str | None = None
    executable: str | None = None
    packages: dict[str, str | None] = Field(default_factory=dict)
    git: GitInfo | None = None
    device: DeviceInfo | None = None
    hardware_fingerprint: str | None = None
    # multi-process runs only (bench.distributed.Dist.describe): world size, backend, launcher
    distributed: dict[str, Any] | None = None


class DatasetSummary(Record):
    type: str = ""
    fingerprint: str | None = None
    num_images: int | None = None
    num_captions: int | None = None
    num_classes: int | None = None
    multilabel: bool | None = None
    skipped_images: int | None = None
    skipped_captions: int | None = None
    duplicates_dropped: int | None = None


class TrainingStep(Record):
    """One logged optimizer step of a fine-tuning (mean training loss over the step's pairs)."""

    step: int
    loss: float | None = None
    lr: float | None = None
    val_loss: float | None = None
    logit_scale: float | None = None


class TrainingRecord(Record):
    """embedders[label].finetune: how a fine-tuned embedder was made (bench.finetune.stage)."""

    base: str  # label of the embedder it was fine-tuned from
    checkpoint: str | None = None
    fingerprint: str | None = None
    reused: bool = False  # true: a checkpoint with the same training fingerprint was reused, not retrained
    stage_s: float | None = None  # this run's time on it: the training, or the reuse check
    history: list[TrainingStep] = Field(default_factory=list)
    wall_s: float | None = None  # training wall time (of the run that trained it)
    samples_per_s: float | None = None
    peak_rss_mb: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    num_processes: int | None = None
    num_train_images: int | None = None
    final_loss: float | None = None


class EmbedderRecord(Record):
    type: str = ""
    fingerprint: str | None = None
    fingerprint_detail: dict[str, Any] = Field(default_factory=dict)
    describe: dict[str, Any] = Field(default_factory=dict)
    modalities: list[str] = Field(default_factory=list)
    random_weights: bool = False
    finetune: TrainingRecord | None = None  # fine-tuned embedders only


class RetrievalCurves(Record):
    """details[label]["retrieval/<dataset>"]: recall@k (%) for each k, both directions."""

    ks: list[float]
    i2t: list[float | None]
    t2i: list[float | None]


class PerClass(Record):
    """details[label]["linear_probe/<dataset>"]: per-class accuracy (or AP, multi-label), percent."""

    class_names: list[str]
    per_class_accuracy: list[float | None] | None = None
    per_class_ap: list[float | None] | None = None


class RunResult(BaseModel):
    """A whole results.json (see the module docstring for the layout)."""

    model_config = ConfigDict(validate_assignment=True, extra="allow")

    schema_version: int = SCHEMA_VERSION
    benchmark: str
    run_id: str = ""
    created: str = ""
    config_path: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    environment: Environment = Field(default_factory=Environment)
    synthetic: bool = False
    datasets: dict[str, DatasetSummary] = Field(default_factory=dict)
    embedders: dict[str, EmbedderRecord] = Field(default_factory=dict)
    metrics: list[Metric] = Field(default_factory=list)
    details: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    timings: dict[str, float | dict[str, float]] = Field(default_factory=dict)
    cache: dict[str, dict[str, str]] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    paired: list[Paired] = Field(default_factory=list)  # absent in older files: no marks
    complete: bool = True  # false: the run stopped; absent in a file: it finished
    error: str | None = None
    _path: str | None = PrivateAttr(default=None)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if not 1 <= v <= SCHEMA_VERSION:
            raise ValueError(f"schema_version {v}; this bench reads 1 to {SCHEMA_VERSION}")
        return v

    @property
    def path(self) -> str | None:
        """The file it was read from (None when built in memory)."""
        return self._path

    def to_json(self) -> dict[str, Any]:
        """The results.json content: the documented keys in their documented order."""
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "benchmark": self.benchmark, "run_id": self.run_id,
            "created": self.created, "config_path": self.config_path, "config": self.config,
            "environment": self.environment.to_json(), "synthetic": self.synthetic,
            "datasets": {k: v.to_json() for k, v in self.datasets.items()},
            "embedders": {k: v.to_json() for k, v in self.embedders.items()},
            "metrics": [m.to_json() for m in self.metrics],
            "details": self.details, "timings": self.timings, "cache": self.cache, "notes": self.notes,
        }
        if self.paired:
            out["paired"] = [p.model_dump() for p in self.paired]
        out.update(self.model_extra or {})  # keys of a newer writer, kept
        out["complete"] = self.complete
        if self.error is not None:
            out["error"] = self.error
        return out

    # Typed views of the config parts that compare relies on.
    def task_entries(self) -> list[dict[str, Any]]:
        """The config's task entries (each a dict; checked by check_results on reading)."""
        return list(self.config.get("tasks") or [])

    def runtime(self) -> dict[str, Any]:
        return dict(self.config.get("runtime") or {})

    def regression(self) -> dict[str, Any] | None:
        return self.config.get("regression")

    @property
    def git_commit(self) -> str | None:
        return self.environment.git.commit if self.environment.git else None

    @property
    def hardware(self) -> str | None:
        return self.environment.hardware_fingerprint

    def embedder_labels(self) -> list[str]:
        """Embedders in config order, then any that only appear in metrics."""
        labels = list(self.embedders)
        for m in self.metrics:
            if m.embedder not in labels:
                labels.append(m.embedder)
        return labels

    def curves(self) -> dict[str, dict[str, RetrievalCurves]]:
        """{dataset: {embedder: recall@k curves}} from details; BenchError (one line) on a malformed entry."""
        return self._details_of("retrieval/", RetrievalCurves)

    def per_class(self) -> dict[str, dict[str, PerClass]]:
        """{dataset: {embedder: per-class probe figures}} from details; BenchError on a malformed entry."""
        return self._details_of("linear_probe/", PerClass)

    def _details_of(self, prefix: str, model: type[Record]) -> dict[str, dict[str, Any]]:
        from bench.errors import BenchError

        out: dict[str, dict[str, Any]] = {}
        for label, det in self.details.items():
            for key, d in det.items():
                if not key.startswith(prefix):
                    continue
                if model is RetrievalCurves and not d.get("ks"):
                    continue
                if model is PerClass and not d.get("class_names"):
                    continue
                where = f"details[{label!r}][{key!r}]"
                try:
                    rec = model.model_validate(d)
                except ValidationError as e:
                    raise BenchError(f"{self._where()}{where}: {_first_error(e)}") from None
                lengths = _lengths(rec)
                if len(set(lengths.values())) > 1:
                    sizes = ", ".join(f"{k} {n}" for k, n in lengths.items())
                    raise BenchError(f"{self._where()}{where}: lists of different lengths ({sizes})")
                out.setdefault(key.split("/", 1)[1], {})[label] = rec
        return out

    def _where(self) -> str:
        return f"{self._path} is not a valid bench results file: " if self._path else ""


def _lengths(rec: Record) -> dict[str, int]:
    if isinstance(rec, RetrievalCurves):
        return {"ks": len(rec.ks), "i2t": len(rec.i2t), "t2i": len(rec.t2i)}
    out = {"class_names": len(getattr(rec, "class_names", []))}
    for name in ("per_class_accuracy", "per_class_ap"):
        if getattr(rec, name) is not None:
            out[name] = len(getattr(rec, name))
    return out


_UNION_TAG = re.compile(r"^(float|int|str|bool|none|(list|dict|function-after)\[.*\])$")


def _first_error(e: ValidationError) -> str:
    """The first problem of a pydantic error as `where: what, got value` on one line (union member tags,
    such as 'float' in timings._total_s.float, left out of the place)."""
    from bench.results_checks import _show

    err = e.errors()[0]
    parts = [p for p in err["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p))]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    what = f"{err['msg']}, got {_show(err.get('input'))}"
    return f"{loc}: {what}" if loc else what


def _readable_metric(m: dict[str, Any]) -> dict[str, Any]:
    """A metric as read: a null unit/protocol/direction means the default, and a `num_items` that is not a
    positive integer means unknown (bench.regression then uses the configured tolerance)."""
    out = {k: v for k, v in m.items() if not (v is None and k in ("unit", "protocol", "higher_is_better"))}
    n = out.get("num_items")
    if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
        del out["num_items"]
    return out


def as_result(data: RunResult | dict[str, Any], where: str = "results") -> RunResult:
    """A RunResult from itself or from a parsed results.json dict (checked; BenchError, one line)."""
    from bench.errors import BenchError

    if isinstance(data, RunResult):
        return data
    problem = check_results(data)
    if problem:
        raise BenchError(f"{where} is not a valid bench results file: {problem}")
    clean = {k: v for k, v in data.items() if not k.startswith("_")}
    clean["metrics"] = [_readable_metric(m) for m in data["metrics"]]
    try:
        result = RunResult.model_validate(clean)
    except ValidationError as e:
        raise BenchError(f"{where} is not a valid bench results file: {_first_error(e)}") from None
    if isinstance(data.get("_path"), str):
        result._path = data["_path"]
    return result


def load_results(path: str | Path, *, finished: bool = False) -> RunResult:
    """Read and check a results.json (or a run folder holding one); BenchError (one line, exit 2) when it is
    unreadable or not a valid results file. `finished=True` (compare, baseline accept) also refuses a run that
    did not finish (`complete: false`): its missing embedders would read as missing metrics."""
    import json

    from bench.errors import BenchError

    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise BenchError(f"no results file at {p} (pass a run folder or its results.json)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BenchError(f"cannot read results {p}: {e}") from None
    result = as_result(data, str(p))
    result._path = str(p)
    if finished and not result.complete:
        raise BenchError(f"{p}: the run did not finish (complete: false); use a finished run "
                         f"(rerun it with bench run)")
    result.curves(), result.per_class()  # what the report draws: checked now, in one line
    return result
