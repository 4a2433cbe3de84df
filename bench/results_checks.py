"""The checks of a parsed results.json before it becomes typed records (bench.results.load_results).

Each returns the first problem as a short phrase for a one-line error, or '' when the data is usable.
They run on the raw JSON because Python's json reads NaN and Infinity literals as floats and a
hand-edited or foreign file can hold anything; their wording is what `bench compare` and `bench report`
print (tests/test_compare_input.py pins it). The typed model then checks the rest of the types.
"""

from __future__ import annotations

import json
import math
from typing import Any

SCHEMA_VERSION = 1
METRIC_KINDS = ("quality", "speed", "memory", "fidelity")
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
        return (f"schema_version {sv}; this bench reads up to {SCHEMA_VERSION}: upgrade bench, or read it with "
                "the bench that wrote it")
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
    for name in ("ci_low", "ci_high", "chance"):  # optional (bench.significance)
        x = m.get(name)
        if x is not None and (not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x)):
            return f"'{name}' must be a finite number or null, got {_show(x)}"
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
