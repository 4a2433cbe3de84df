"""Result records and the `results.json` schema. Everything a report or a comparison needs.

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
                        "modalities": ["image", "text"], "random_weights": bool}},
  "metrics": [                              # flat: one row per (embedder, task, dataset, key)
     {"embedder": label, "task": "retrieval", "dataset": name, "key": "retrieval/i2t_recall@5",
      "value": 41.2 | null, "unit": "%", "higher_is_better": true,
      "kind": "quality"|"speed"|"memory", "protocol": "...", "na_reason": null | "why it is n/a",
      "num_items": 100}                     # optional, quality only: one item moves the value by at most
                                            # 100/num_items points (bench.regression uses it; absent
                                            # in results written before it existed)
  ],
  "details": {label: {"<task>/<dataset>": {...}}},   # arrays for plots: per-class accuracy, curves
  "timings": {label: {"<what>": seconds}},            # wall time of each step (embedding, probe, ...)
  "cache": {label: {dataset: "hit"|"miss"}},
  "notes": ["..."],
  "complete": true,                         # false: the run stopped; the tables hold the finished embedders
  "error": "DataError: ..."                 # only when complete is false because the run failed: one line
}
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class Metric:
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

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if d["num_items"] is None:
            del d["num_items"]
        if d["value"] is not None:
            v = float(d["value"])
            # NaN/Infinity are not JSON numbers and would be refused by load_results: record n/a instead.
            if not math.isfinite(v):
                d["value"], d["na_reason"] = None, d["na_reason"] or f"not a finite number ({v})"
            else:
                d["value"] = v
        return d


@dataclass
class RunResult:
    benchmark: str
    run_id: str
    created: str
    config_path: str
    config: dict[str, Any]
    environment: dict[str, Any]
    datasets: dict[str, Any] = field(default_factory=dict)
    embedders: dict[str, Any] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    synthetic: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "benchmark": self.benchmark,
            "run_id": self.run_id,
            "created": self.created,
            "config_path": self.config_path,
            "config": self.config,
            "environment": self.environment,
            "synthetic": self.synthetic,
            "datasets": self.datasets,
            "embedders": self.embedders,
            "metrics": [m.to_json() for m in self.metrics],
            "details": self.details,
            "timings": self.timings,
            "cache": self.cache,
            "notes": self.notes,
        }


_UMASK = os.umask(0)
os.umask(_UMASK)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write text through a temporary file and a rename, so a killed run leaves no half file.

    An OS error (read-only folder, a file in the way, full disk) is an OutputError naming `path`,
    and the temporary file is removed.
    """
    from bench.outputs import output_error

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise output_error(path, e) from None
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results and reports are meant to be shared
        # errors="replace": a stray lone surrogate in some label must not lose a finished run's report.
        _write_all(fd, text.encode("utf-8", errors="replace"))
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise output_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte to `fd` and close it (closed on failure too)."""
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """JSON (indented, numpy values converted) written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def load_results(path: str | Path, *, finished: bool = False) -> dict[str, Any]:
    """Read and check a results.json (or a run folder holding one); BenchError (one line, exit 2) when it is
    unreadable or not a valid results file. `finished=True` (compare, baseline accept) also refuses a run that
    did not finish (`complete: false`): its missing embedders would read as missing metrics."""
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
    problem = check_results(data)
    if problem:
        raise BenchError(f"{p} is not a valid bench results file: {problem}")
    if finished and data.get("complete") is False:
        raise BenchError(f"{p}: the run did not finish (complete: false); use a finished run "
                         f"(rerun it with bench run)")
    data["_path"] = str(p)
    return data


METRIC_KINDS = ("quality", "speed", "memory")
_SECTIONS = ("config", "environment", "datasets", "embedders", "details", "timings", "cache")


def check_results(data: Any) -> str:
    """The first problem of a parsed results.json, or '' when it is usable. Checked after parsing because
    Python's json reads NaN and Infinity literals as floats, and a hand-edited or foreign file can hold
    anything: every field compare and report index into must have the type they expect."""
    if not isinstance(data, dict):
        return f"the top level is a JSON {_jtype(data)}, not an object"
    if "schema_version" not in data or "metrics" not in data:
        return "no schema_version/metrics"
    sv = data["schema_version"]
    if not _is_int(sv) or sv < 1:
        return f"schema_version must be an integer from 1 to {SCHEMA_VERSION}, got {_show(sv)}"
    if sv > SCHEMA_VERSION:
        return f"schema_version {sv}; this bench reads up to {SCHEMA_VERSION}: upgrade bench"
    if not isinstance(data.get("benchmark"), str) or not data["benchmark"]:
        return f"'benchmark' must be a non-empty string, got {_show(data.get('benchmark'))}"
    if "complete" in data and not isinstance(data["complete"], bool):
        return f"'complete' must be true or false, got {_show(data['complete'])}"
    for name in _SECTIONS:
        if name in data and not isinstance(data[name], dict):
            return f"'{name}' must be an object, got a JSON {_jtype(data[name])}"
    for name in ("datasets", "embedders", "details"):  # one object per dataset / embedder
        for label, entry in data.get(name, {}).items():
            if not isinstance(entry, dict):
                return f"{name}[{_show(label)}] must be an object, got a JSON {_jtype(entry)}"
    notes = data.get("notes", [])
    if not (isinstance(notes, list) and all(isinstance(n, str) for n in notes)):
        return "'notes' must be a list of strings"
    config = data.get("config", {})
    for name in ("runtime", "regression"):
        if config.get(name) is not None and not isinstance(config[name], dict):
            return f"config.{name} must be an object, got a JSON {_jtype(config[name])}"
    tasks = config.get("tasks", [])
    if not (isinstance(tasks, list) and all(isinstance(t, dict) for t in tasks)):
        return "config.tasks must be a list of objects"
    for i, t in enumerate(tasks):
        for name in ("type", "dataset", "train", "val", "test"):  # compare matches metrics to tasks by these
            if t.get(name) is not None and not isinstance(t[name], str):
                return f"config.tasks[{i}].{name} must be a string, got {_show(t[name])}"
    metrics = data["metrics"]
    if not isinstance(metrics, list):
        return f"'metrics' must be a list of metric objects, got a JSON {_jtype(metrics)}"
    if not metrics:
        return "'metrics' is empty: the run recorded no metric"
    for i, m in enumerate(metrics):
        problem = _check_metric(m)
        if problem:
            return f"metrics[{i}]{_label(m)}: {problem}"
    return ""


def _check_metric(m: Any) -> str:
    if not isinstance(m, dict):
        return f"a JSON {_jtype(m)}, not an object"
    for name in ("embedder", "task", "dataset", "key"):
        if not isinstance(m.get(name), str) or not m[name]:
            return f"'{name}' must be a non-empty string, got {_show(m.get(name))}"
    if m.get("kind") not in METRIC_KINDS:
        return f"'kind' must be one of {', '.join(METRIC_KINDS)}, got {_show(m.get('kind'))}"
    v = m.get("value")
    if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)):
        return f"'value' must be a finite number or null, got {_show(v)}"
    if "higher_is_better" in m and not isinstance(m["higher_is_better"], bool):
        return f"'higher_is_better' must be true or false, got {_show(m['higher_is_better'])}"
    for name in ("unit", "protocol", "na_reason"):
        if m.get(name) is not None and not isinstance(m[name], str):
            return f"'{name}' must be a string, got {_show(m[name])}"
    return ""


def _label(m: Any) -> str:
    """' (embedder, key)' when the metric names them, for the error message."""
    if isinstance(m, dict) and isinstance(m.get("embedder"), str) and isinstance(m.get("key"), str):
        return f" ({_show(m['embedder'], 10**6)[1:-1][:40]}, {_show(m['key'], 10**6)[1:-1][:60]})"
    return ""


def _show(v: Any, limit: int = 60) -> str:
    """A value as JSON on one line (NaN/Infinity as such), shortened: it goes into a one-line error."""
    text = json.dumps(v, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _jtype(v: Any) -> str:
    """The JSON name of a parsed value's type (a user reads JSON, not Python)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(v), "number")
