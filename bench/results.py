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
  "datasets": {name: {"type", "fingerprint", "num_images", "num_captions"?, "num_classes"?, "multilabel"?}},
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
  "notes": ["..."]
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
            d["value"] = None if math.isnan(v) else v
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
    """Write text through a temporary file and a rename, so a killed run leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results and reports are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results.json (or a run folder holding one); BenchError when unreadable or wrong schema."""
    from bench.errors import BenchError

    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise BenchError(f"no results file at {p} (pass a run folder or its results.json)")
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BenchError(f"cannot read results {p}: {e}") from None
    if not isinstance(data, dict) or "schema_version" not in data or "metrics" not in data:
        raise BenchError(f"{p} is not a bench results file (no schema_version/metrics)")
    if data["schema_version"] > SCHEMA_VERSION:
        raise BenchError(f"{p} has schema_version {data['schema_version']}; this bench reads up to "
                         f"{SCHEMA_VERSION}: upgrade bench")
    data["_path"] = str(p)
    return data
