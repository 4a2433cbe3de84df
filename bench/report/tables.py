"""Tables built from a results dict, shared by the Markdown and HTML renderers (no torch, no matplotlib).

A table is a list of `Section`s (one per task and dataset); each row is one metric key with one cell
per embedder. Cells carry the formatted text, whether the value is the best of its row, and the
footnote number of an n/a reason, so both renderers mark the same things the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

TASK_TITLES = {"retrieval": "Retrieval", "linear_probe": "Linear probe", "zeroshot": "Zero-shot classification",
               "speed": "Speed and memory", "load": "Loading"}
TASK_ORDER = ("retrieval", "linear_probe", "zeroshot", "speed", "load")
SYNTHETIC_WARNING = ("These weights are random and tiny (generated checkpoints): the numbers below measure the "
                     "harness, not model quality. Do not read them as a comparison of CLIP and Phi-3-vision.")
NOT_MEASURED = "—"  # no record at all for this embedder (unlike n/a, which has a reason)


@dataclass
class Cell:
    text: str
    value: float | None = None
    best: bool = False
    note: int | None = None  # footnote number of the n/a reason


@dataclass
class Row:
    key: str
    unit: str
    higher_is_better: bool
    kind: str
    cells: dict[str, Cell]


@dataclass
class Section:
    task: str
    dataset: str
    rows: list[Row] = field(default_factory=list)

    @property
    def title(self) -> str:
        name = TASK_TITLES.get(self.task, self.task)
        return name if self.dataset in ("", "-") else f"{name}: {self.dataset}"


@dataclass
class Tables:
    embedders: list[str]
    sections: list[Section]
    notes: list[str]  # footnote texts; note n is notes[n - 1]


def format_value(value: float | None, unit: str = "", with_unit: bool = True) -> str:
    """A readable number: percentages with 2 decimals, large rates with fewer, n/a for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    v = float(value)
    if unit == "%":
        text = f"{v:.2f}"
    elif abs(v) >= 1000:
        text = f"{v:,.0f}"
    elif abs(v) >= 100:
        text = f"{v:.1f}"
    elif abs(v) >= 1:
        text = f"{v:.2f}"
    else:
        text = f"{v:.3g}"
    return f"{text} {unit}" if with_unit and unit and unit != "%" else text


def embedder_labels(results: dict[str, Any]) -> list[str]:
    """Embedders in config order, then any that only appear in metrics."""
    labels = list(results.get("embedders", {}))
    for m in results.get("metrics", []):
        if m["embedder"] not in labels:
            labels.append(m["embedder"])
    return labels


def build_tables(results: dict[str, Any]) -> Tables:
    """Group metric records into sections and mark the best value of each row (ties: all best)."""
    labels = embedder_labels(results)
    sections: dict[tuple[str, str], Section] = {}
    rows: dict[tuple[str, str, str], Row] = {}
    notes: list[str] = []
    for m in results.get("metrics", []):
        skey = (m["task"], m["dataset"])
        if skey not in sections:
            sections[skey] = Section(m["task"], m["dataset"])
        rkey = (*skey, m["key"])
        if rkey not in rows:
            rows[rkey] = Row(m["key"], m.get("unit", ""), bool(m.get("higher_is_better", True)),
                             m.get("kind", "quality"), {})
            sections[skey].rows.append(rows[rkey])
        value = m.get("value")
        cell = Cell(format_value(value, m.get("unit", ""), with_unit=False), value)  # unit is in the row
        if value is None:
            reason = m.get("na_reason") or "not computed"
            if reason not in notes:
                notes.append(reason)
            cell.note = notes.index(reason) + 1
        rows[rkey].cells[m["embedder"]] = cell
    for row in rows.values():
        for label in labels:  # a metric an embedder never recorded (e.g. text speed of an image-only model)
            row.cells.setdefault(label, Cell(NOT_MEASURED))
        values = [c.value for c in row.cells.values() if c.value is not None]
        if len(values) < 2:
            continue  # nothing to compare against
        best = max(values) if row.higher_is_better else min(values)
        for c in row.cells.values():
            c.best = c.value is not None and math.isclose(c.value, best, rel_tol=1e-9, abs_tol=1e-12)
    order = {t: i for i, t in enumerate(TASK_ORDER)}
    ordered = sorted(sections.values(), key=lambda s: (order.get(s.task, len(order)), s.dataset))
    return Tables(labels, ordered, notes)


def headline(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The few facts a reader needs first: date, commit, device, dataset sizes."""
    facts = dict(run_facts(results))
    sizes = ", ".join(f"{name} {d.get('num_images', '?')} images"
                      + (f"/{d['num_captions']} captions" if d.get("num_captions") else "")
                      for name, d in (results.get("datasets") or {}).items())
    return [("date (UTC)", facts["date (UTC)"]), ("commit", facts["git commit"]), ("device", facts["device"]),
            ("datasets", sizes or "none")]


def run_facts(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs describing where and how a run was made."""
    env = results.get("environment", {})
    dev = env.get("device", {}) or {}
    device = dev.get("type", "?")
    if dev.get("cuda"):
        device += f" ({dev['cuda'].get('name', '')})"
    elif dev.get("name"):
        device += f" ({dev['name']}, {dev.get('cpu_count', '?')} cores, {dev.get('torch_threads', '?')} threads)"
    git = env.get("git", {}) or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")
    pk = env.get("packages", {}) or {}
    versions = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
    facts = [("benchmark", str(results.get("benchmark", "?"))), ("run", str(results.get("run_id", "?"))),
             ("date (UTC)", str(results.get("created", "?"))), ("git commit", commit), ("device", device),
             ("hardware fingerprint", str(env.get("hardware_fingerprint", "?"))),
             ("python", str(env.get("python", "?"))), ("packages", versions or "?"),
             ("config", str(results.get("config_path", "?")))]
    total = (results.get("timings", {}) or {}).get("_total_s")
    if total is not None:
        facts.append(("wall time", f"{total:.1f} s"))
    return facts


def dataset_rows(results: dict[str, Any]) -> list[list[str]]:
    """name, type, images, captions, classes, fingerprint."""
    out = []
    for name, d in (results.get("datasets") or {}).items():
        classes = d.get("num_classes")
        if classes is not None and d.get("multilabel"):
            classes = f"{classes} (multi-label)"
        out.append([name, str(d.get("type", "")), str(d.get("num_images", "")),
                    str(d.get("num_captions", "") or ""), str(classes or ""), str(d.get("fingerprint", ""))])
    return out


def embedder_rows(results: dict[str, Any]) -> list[list[str]]:
    """label, type, model, settings, weights, fingerprint."""
    out = []
    skip = {"model", "model_dir", "random_weights"}
    for label, e in (results.get("embedders") or {}).items():
        desc = e.get("describe", {}) or {}
        settings = ", ".join(f"{k}={v}" for k, v in desc.items() if k not in skip and not isinstance(v, (dict, list)))
        weights = "random (generated)" if e.get("random_weights") else "checkpoint"
        out.append([label, str(e.get("type", "")), str(desc.get("model", "")), settings, weights,
                    str(e.get("fingerprint", ""))])
    return out


def protocols(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(task, protocol text), one per task that has one."""
    seen: dict[str, str] = {}
    for m in results.get("metrics", []):
        if m.get("protocol") and m["task"] not in seen:
            seen[m["task"]] = m["protocol"]
    return [(TASK_TITLES.get(t, t), p) for t, p in seen.items()]
