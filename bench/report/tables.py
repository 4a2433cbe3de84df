"""Tables built from a RunResult, shared by the Markdown and HTML renderers (no torch, no matplotlib).

A table is a list of `Section`s (one per task and dataset); each row is one metric key with one cell
per embedder. Cells carry the formatted text, whether the value is the best of its row, and the
footnote number of an n/a reason, so both renderers mark the same things the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bench.results import RunResult, as_result

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


def embedder_labels(results: RunResult | dict[str, Any]) -> list[str]:
    """Embedders in config order, then any that only appear in metrics."""
    return as_result(results).embedder_labels()


def build_tables(results: RunResult | dict[str, Any]) -> Tables:
    """Group metric records into sections and mark the best value of each row (ties: all best)."""
    results = as_result(results)
    labels = results.embedder_labels()
    sections: dict[tuple[str, str], Section] = {}
    rows: dict[tuple[str, str, str], Row] = {}
    notes: list[str] = []
    for m in results.metrics:
        skey = (m.task, m.dataset)
        if skey not in sections:
            sections[skey] = Section(m.task, m.dataset)
        rkey = (*skey, m.key)
        if rkey not in rows:  # the metric's facts, as its record declares them
            rows[rkey] = Row(m.key, m.unit, m.higher_is_better, m.kind, {})
            sections[skey].rows.append(rows[rkey])
        cell = Cell(format_value(m.value, m.unit, with_unit=False), m.value)  # unit is in the row
        if m.value is None:
            reason = m.na_reason or "not computed"
            if reason not in notes:
                notes.append(reason)
            cell.note = notes.index(reason) + 1
        rows[rkey].cells[m.embedder] = cell
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


def headline(results: RunResult) -> list[tuple[str, str]]:
    """The few facts a reader needs first: date, commit, device, dataset sizes."""
    facts = dict(run_facts(results))
    sizes = ", ".join(f"{name} {_or(d.num_images, '?')} images"
                      + (f"/{d.num_captions} captions" if d.num_captions else "")
                      for name, d in results.datasets.items())
    return [("date (UTC)", facts["date (UTC)"]), ("commit", facts["git commit"]), ("device", facts["device"]),
            ("datasets", sizes or "none")]


def _or(value: Any, default: str) -> str:
    return default if value is None else str(value)


def run_facts(results: RunResult) -> list[tuple[str, str]]:
    """(label, value) pairs describing where and how a run was made."""
    env = results.environment
    dev = env.device
    device = dev.type if dev else "?"
    if dev and dev.cuda:
        device += f" ({dev.cuda.name or ''})"
    elif dev and dev.name:
        device += f" ({dev.name}, {_or(dev.cpu_count, '?')} cores, {_or(dev.torch_threads, '?')} threads)"
    git = env.git
    commit = ((git.commit if git else None) or "unknown")[:12] + (" (dirty)" if git and git.dirty else "")
    versions = ", ".join(f"{k} {v}" for k, v in env.packages.items() if v)
    facts = [("benchmark", results.benchmark or "?"), ("run", results.run_id or "?"),
             ("date (UTC)", results.created or "?"), ("git commit", commit), ("device", device),
             ("hardware fingerprint", _or(env.hardware_fingerprint, "?")),
             ("python", _or(env.python, "?")), ("packages", versions or "?"),
             ("config", results.config_path or "?")]
    total = results.timings.get("_total_s")
    if isinstance(total, (int, float)):
        facts.append(("wall time", f"{total:.1f} s"))
    return facts


def dataset_rows(results: RunResult) -> list[list[str]]:
    """name, type, images, captions, classes, fingerprint."""
    out = []
    for name, d in results.datasets.items():
        classes: Any = d.num_classes
        if classes is not None and d.multilabel:
            classes = f"{classes} (multi-label)"
        out.append([name, d.type, _or(d.num_images, ""), str(d.num_captions or ""), str(classes or ""),
                    _or(d.fingerprint, "")])
    return out


def embedder_rows(results: RunResult) -> list[list[str]]:
    """label, type, model, settings, weights, fingerprint."""
    out = []
    skip = {"model", "model_dir", "random_weights"}
    for label, e in results.embedders.items():
        desc = e.describe
        settings = ", ".join(f"{k}={v}" for k, v in desc.items() if k not in skip and not isinstance(v, (dict, list)))
        weights = "random (generated)" if e.random_weights else "checkpoint"
        out.append([label, e.type, str(desc.get("model", "")), settings, weights, _or(e.fingerprint, "")])
    return out


def protocols(results: RunResult) -> list[tuple[str, str]]:
    """(task, protocol text), one per task that has one."""
    seen: dict[str, str] = {}
    for m in results.metrics:
        if m.protocol and m.task not in seen:
            seen[m.task] = m.protocol
    return [(TASK_TITLES.get(t, t), p) for t, p in seen.items()]
