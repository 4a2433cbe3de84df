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
SIGNIFICANT, TIE = "*", "≈"  # marks on a best value: better than the runner-up / a statistical tie


@dataclass
class Cell:
    text: str
    value: float | None = None
    best: bool = False
    note: int | None = None  # footnote number of the n/a reason
    ci: tuple[float, float] | None = None  # bootstrap interval (quality; bench.significance)
    mark: str = ""  # on a best value: SIGNIFICANT or TIE against the runner-up (paired bootstrap)


@dataclass
class Row:
    key: str
    unit: str
    higher_is_better: bool
    kind: str
    cells: dict[str, Cell]
    chance: float | None = None  # the value of a random ranking / guess (quality rows)


@dataclass
class Section:
    task: str
    dataset: str
    rows: list[Row] = field(default_factory=list)

    @property
    def has_chance(self) -> bool:
        """Quality sections state chance (a column; '—' where it is unknown)."""
        return any(r.kind == "quality" for r in self.rows)

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
    elif unit in ("cos", "ρ"):  # fidelity: near 1, where the digits that matter are
        text = f"{v:.6f}"
    elif abs(v) >= 1000:
        text = f"{v:,.0f}"
    elif abs(v) >= 100:
        text = f"{v:.1f}"
    elif abs(v) >= 1:
        text = f"{v:.2f}"
    else:
        text = f"{v:.3g}"
    return f"{text} {unit}" if with_unit and unit and unit != "%" else text


def format_interval(value: float, low: float, high: float, unit: str = "") -> str:
    """"62.40 ± 3.10" (± half the interval's width) when the interval is about symmetric around the
    value (its two sides within 20% of each other, or both under the display precision), else
    "2.00 [0.00, 5.00]": a percentile interval near 0 or 100 is lopsided, and ± would hide that."""
    fmt = lambda x: format_value(x, unit, with_unit=False)  # noqa: E731
    below, above = value - low, high - value
    half = (high - low) / 2.0
    if below >= 0 and above >= 0 and (abs(below - above) <= 0.2 * half or fmt(half) == fmt(0.0)):
        return f"{fmt(value)} ± {fmt(half)}"
    return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"


def statistics_legend(results: RunResult) -> str:
    """One sentence on the intervals, chance and marks of the tables ('' when the run has none)."""
    has_ci = any(m.ci_low is not None for m in results.metrics)
    has_chance = any(m.chance is not None for m in results.metrics)
    if not (has_ci or has_chance or results.paired):
        return ""
    st = results.config.get("statistics") or {}
    level = float(st.get("level", 0.95))
    parts = []
    if has_ci:
        n = st.get("resamples", 1000)
        parts.append(f"Quality values carry their {level:.0%} bootstrap interval ({n} "
                     f"resamples of the test queries, seed {st.get('seed', 0)}): value ± half its width, or "
                     "value [low, high] when it is lopsided")
    if has_chance:
        parts.append("chance: the value of a random ranking or guess")
    if results.paired:
        parts.append(f"{SIGNIFICANT} best value significantly better than the runner-up, {TIE} a tie with "
                     f"it (paired bootstrap of the difference on the same queries: its {level:.0%} "
                     "interval excludes 0, or not)")
    return "; ".join(parts) + "."


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
        if m.value is not None and m.ci_low is not None and m.ci_high is not None:
            cell.ci = (m.ci_low, m.ci_high)
            cell.text = format_interval(m.value, m.ci_low, m.ci_high, m.unit)
        if m.chance is not None and rows[rkey].chance is None:
            rows[rkey].chance = m.chance
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
    for p in results.paired:
        row = rows.get((p.task, p.dataset, p.key))
        if row is not None and p.best in row.cells and row.cells[p.best].best:
            for c in row.cells.values():
                if c.best:
                    c.mark = SIGNIFICANT if p.significant else TIE
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
    seen: dict[tuple[str, str], str] = {}  # (task, protocol) -> title; a task with several measures
    tasks: set[str] = set()               # (retrieval: recall, MRR, ...) lists each protocol
    for m in results.metrics:
        # quality: each measure's own protocol (retrieval recall, MRR, ...); other kinds: the task's first
        if m.protocol and (m.task, m.protocol) not in seen and (m.kind == "quality" or m.task not in tasks):
            title = TASK_TITLES.get(m.task, m.task)
            seen[(m.task, m.protocol)] = title if m.task not in tasks else f"{title} ({_name(m.key)})"
            tasks.add(m.task)
    return [(title, p) for (_, p), title in seen.items()]


def _name(key: str) -> str:
    """'retrieval/t2i_ndcg@10' -> 'ndcg': the measure a protocol line is about."""
    name = key.rsplit("/", 1)[-1].split("@", 1)[0]
    return name.split("_", 1)[1] if name[:4] in ("i2t_", "t2i_") else name
