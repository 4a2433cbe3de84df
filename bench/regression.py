"""Compare a result with a baseline: one verdict per metric, and an exit code CI can act on.

Verdicts (per embedder, dataset and metric key):
  improved / unchanged / regressed   the values are comparable; a change inside the tolerance is
                                     `unchanged` (run-to-run noise), beyond it the direction of the
                                     metric decides;
  incomparable                       they measure different things: the embedder fingerprint (model
                                     files, preprocessing, settings), the dataset fingerprint or the
                                     task's settings differ, one side is n/a, or (speed and memory
                                     only) the hardware fingerprints or runtime settings differ.
                                     Never counted as a regression;
  new / missing                      the metric exists on one side only; `missing` also when the result
                                     has no value (n/a) where the baseline had one and the two are
                                     otherwise comparable.

Exit code 1 (`Comparison.exit_code`) when, among the kinds of `fail_on`:
  - a metric regressed;
  - a metric the baseline has a value for is missing from the result: a run that silently stops
    computing a metric must not pass (accept a new baseline when the change is deliberate);
  - a kind has metrics with values but not one of them could be compared (all incomparable, new,
    missing or n/a): a compare that checked nothing must not pass. A kind neither file has is
    skipped, unless no kind of `fail_on` was compared at all.
Bad input (a result of another benchmark, an unfinished run, a tolerance that is not a finite
number >= 0, a malformed results file: see bench.results.check_results) is a BenchError: exit 2.

Tolerances: quality metrics (recall, accuracy, in percentage points) are compared with an
absolute tolerance; speed and memory with a relative one. `per_metric` overrides the tolerance of
the keys matching a glob pattern (e.g. {"speed/batch_latency_p99_ms": 0.5}, {"probe/*": 2.0}).

Test-set resolution: a quality figure measured on N items moves in steps of 100/N points, and a
different CPU (other SIMD kernels, other BLAS) can flip an item that sits on a near-tie. So a
quality tolerance is never below what `quality_items` (k = 2) items can move the metric:
    effective tolerance = max(configured tolerance, 100 * k / num_items)
where `num_items` is recorded with each metric (bench.results.Metric): test images for top-k
accuracy, query images / captions for retrieval, classes x smallest class for mean per-class
recall and for mAP (see bench.tasks for why). A change of one or two items out of 100 is then
`unchanged`, three is judged. The floor needs `num_items` on both sides and uses the larger count
(the tighter tolerance), so one edited file cannot loosen the check; with results written before
`num_items` existed the configured tolerance applies. The verdict's tolerance column says which
rule applied, e.g. "±2 (2 of 100 items)".

Significance-aware rule (issue 15): when both runs carry per-query records (per_query.npz beside
results.json; `x.per_query.npz` beside a baseline `x.json`, written by `bench baseline accept`) of
the same run, model and data (their fingerprints match the results' and the queries are the same),
a quality change is judged by the paired bootstrap of result - baseline on the same queries
(bench.significance, the result's `statistics` settings): `regressed` only when the whole interval
lies below -tolerance (the configured one: the interval already carries the test-set noise the item
floor stands in for), `improved` when it lies above +tolerance, `unchanged` otherwise. The
tolerance column then shows the interval ("±0.5; paired 95% [-6, 0]") and the verdict says
"paired". Metrics without records on both sides keep the rule above.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.results import METRIC_KINDS, Metric, RunResult, as_result

KINDS = METRIC_KINDS
# What fails by default. "fidelity" (a fast mode's agreement with float32: bench.tasks.speed_fidelity) is
# listed with verdicts but fails only when asked (--fail-on ...,fidelity): it prices a trade-off.
DEFAULT_FAIL_ON = ("quality", "speed", "memory")
VERDICTS = ("regressed", "improved", "unchanged", "incomparable", "new", "missing")


@dataclass
class Tolerances:
    quality_abs: float = 1.0
    speed_rel: float = 0.25
    memory_rel: float = 0.20
    per_metric: dict[str, float] = field(default_factory=dict)
    quality_items: int = 2  # a quality change of this many evaluated items is noise (module docstring)

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> Tolerances:
        """From a config's `regression` section (keys quality_abs_tol, speed_rel_tol, memory_rel_tol, per_metric)."""
        s = section or {}
        if not isinstance(s, dict):
            raise BenchError(f"regression section must be a mapping, got {type(s).__name__}")
        per_metric = s.get("per_metric") or {}
        if not isinstance(per_metric, dict) or not all(isinstance(k, str) for k in per_metric):
            raise BenchError("regression.per_metric must map key patterns (strings) to tolerances")
        d = cls()
        return cls(check_tolerance(s.get("quality_abs_tol", d.quality_abs), "regression.quality_abs_tol"),
                   check_tolerance(s.get("speed_rel_tol", d.speed_rel), "regression.speed_rel_tol"),
                   check_tolerance(s.get("memory_rel_tol", d.memory_rel), "regression.memory_rel_tol"),
                   {k: check_tolerance(v, f"regression.per_metric['{k}']") for k, v in per_metric.items()})

    def for_metric(self, key: str, kind: str) -> tuple[float, bool]:
        """(tolerance, relative?) for one metric key."""
        relative = kind in ("speed", "memory")
        for pattern, tol in self.per_metric.items():
            if fnmatch.fnmatchcase(key, pattern):
                return float(tol), relative
        if kind == "speed":
            return self.speed_rel, True
        if kind == "memory":
            return self.memory_rel, True
        return self.quality_abs, False


def check_tolerance(value: Any, what: str) -> float:
    """A tolerance as a float; BenchError naming `what` unless it is a finite number >= 0 (a NaN
    tolerance makes every comparison false, i.e. everything `unchanged`; an infinite one hides all)."""
    try:
        t = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        t = math.nan
    if not math.isfinite(t) or t < 0:
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        raise BenchError(f"{what} must be a finite number >= 0, got '{str(shown)[:40]}'")
    return t


@dataclass
class Verdict:
    embedder: str
    dataset: str
    key: str
    kind: str
    verdict: str
    baseline: float | None = None
    result: float | None = None
    unit: str = ""
    tolerance: str = ""
    delta: str = ""
    reason: str = ""


@dataclass
class Comparison:
    verdicts: list[Verdict]
    fail_on: tuple[str, ...]
    result_id: str = ""
    baseline_id: str = ""
    notes: list[str] = field(default_factory=list)

    def count(self, verdict: str) -> int:
        return sum(v.verdict == verdict for v in self.verdicts)

    @property
    def failing(self) -> list[Verdict]:
        """Rows that fail: regressed, or missing where the baseline has a value, of a `fail_on` kind."""
        return [v for v in self.verdicts if v.kind in self.fail_on and
                (v.verdict == "regressed" or (v.verdict == "missing" and v.baseline is not None))]

    @property
    def unchecked(self) -> list[str]:
        """One reason per `fail_on` kind that has values but of which nothing could be compared."""
        out, compared_any = [], False
        for kind in self.fail_on:
            rows = [v for v in self.verdicts
                    if v.kind == kind and (v.result is not None or v.baseline is not None)]
            if any(v.verdict in ("improved", "unchanged", "regressed") for v in rows):
                compared_any = True
            elif rows:
                why = Counter(v.verdict + (f" ({v.reason})" if v.reason else "") for v in rows)
                out.append(f"no {kind} metric could be compared: "
                           + ", ".join(f"{n} {label}" for label, n in why.most_common()))
        if self.fail_on and not compared_any and not out:
            out.append(f"no {' or '.join(self.fail_on)} metric could be compared: "
                       "neither file has one with a value")
        return out

    @property
    def reasons(self) -> list[str]:
        """Why the exit code is 1, one short sentence per cause; empty when it is 0."""
        out = []
        regressed = [v for v in self.failing if v.verdict == "regressed"]
        if regressed:
            kinds = ", ".join(sorted({v.kind for v in regressed}))
            out.append(f"{len(regressed)} {kinds} metric(s) regressed beyond the tolerance")
        missing = [v for v in self.failing if v.verdict == "missing"]
        if missing:
            names = ", ".join(f"{v.embedder} {v.key} on {v.dataset}" for v in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            out.append(f"{len(missing)} metric(s) with a value in the baseline have none in the result "
                       f"({names}{more}); accept a new baseline if that is deliberate")
        return out + self.unchecked

    @property
    def exit_code(self) -> int:
        return 1 if self.failing or self.unchecked else 0

    def summary(self) -> str:
        parts = [f"{self.count(v)} {v}" for v in VERDICTS if self.count(v)]
        return ", ".join(parts) or "nothing to compare"

    def to_markdown(self, show: str = "changes") -> str:
        """A PR-comment table; `show="changes"` lists every row but the unchanged ones, "all" every row."""
        failing = {id(v) for v in self.failing}
        head = "REGRESSION" if any(v.verdict == "regressed" for v in self.failing) else \
            "FAIL" if self.exit_code else "OK"
        ignored = sorted({v.kind for v in self.verdicts if v.verdict == "regressed" and v.kind not in self.fail_on})
        if ignored and not self.exit_code:
            head += f" (regressions in {', '.join(ignored)} only, which do not fail)"
        lines = [f"**bench compare: {head}** — {self.summary()} "
                 f"(failing on: {', '.join(self.fail_on) or 'nothing'})", "",
                 f"result `{self.result_id}` against baseline `{self.baseline_id}`", ""]
        lines += [f"- **fails:** {r}" for r in self.reasons] + [f"- {n}" for n in self.notes]
        rows = [v for v in self.verdicts if show == "all" or v.verdict != "unchanged"]
        order = {name: i for i, name in enumerate(VERDICTS)}
        rows.sort(key=lambda v: (id(v) not in failing, order[v.verdict], v.embedder, v.dataset, v.key))
        if rows:
            lines += ["", "| metric | embedder | dataset | baseline | result | delta | tolerance | verdict |",
                      "|---|---|---|---|---|---|---|---|"]
            for v in rows:
                mark = f"**{v.verdict}**" if id(v) in failing else v.verdict
                if v.reason:
                    mark += f" ({v.reason})"
                lines.append(f"| {v.key} | {v.embedder} | {v.dataset} | {_fmt(v.baseline, v.unit)} | "
                             f"{_fmt(v.result, v.unit)} | {v.delta} | {v.tolerance} | {mark} |")
        unchanged = self.count("unchanged")
        if show != "all" and unchanged:
            lines += ["", f"{unchanged} metric(s) unchanged within tolerance (not listed)."]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}{'' if unit in ('', '%') else ' ' + unit}{'%' if unit == '%' else ''}"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _task_settings(results: RunResult, task: str, dataset: str) -> str:
    """Fingerprint of the config entries of one task that touch one dataset (ks, templates, C grid...).
    Settings that only choose which metrics are shown (retrieval `measures`) are left out: a metric both
    runs have was computed the same way."""
    entries = [{k: v for k, v in t.items() if k not in _SHOW_ONLY} for t in results.task_entries()
               if t.get("type") == task and dataset in {t.get(k) for k in ("dataset", "train", "val", "test")}]
    return _hash(entries)


_SHOW_ONLY = ("measures",)


def _runtime_settings(results: RunResult) -> str:
    rt = results.runtime()
    return _hash({k: rt.get(k) for k in ("device", "dtype", "batch_size", "num_workers", "threads")})


def _index(results: RunResult) -> dict[tuple[str, str, str], Metric]:
    return {(m.embedder, m.dataset, m.key): m for m in results.metrics}


def _fingerprint(records: dict[str, Any], name: str) -> str | None:
    rec = records.get(name)
    return rec.fingerprint if rec is not None else None


def _why_incomparable(result: RunResult, baseline: RunResult, m: Metric) -> str:
    """Empty when the two values measure the same thing; else the reason they do not."""
    label, ds = m.embedder, m.dataset
    if result.benchmark != baseline.benchmark:
        return f"benchmark {result.benchmark} vs {baseline.benchmark}"
    if _fingerprint(result.embedders, label) != _fingerprint(baseline.embedders, label):
        return "model/preprocessing fingerprint differs"
    if ds not in ("", "-"):
        if _fingerprint(result.datasets, ds) != _fingerprint(baseline.datasets, ds):
            return "data fingerprint differs"
        if _task_settings(result, m.task, ds) != _task_settings(baseline, m.task, ds):
            return "task settings differ"
    if m.kind in ("speed", "memory", "fidelity"):  # fidelity: bf16 kernels differ between processors
        if result.hardware != baseline.hardware:
            return "different hardware"
        if _runtime_settings(result) != _runtime_settings(baseline):
            return "runtime settings differ"
    return ""


def compare(result: RunResult | dict[str, Any], baseline: RunResult | dict[str, Any], tol: Tolerances | None = None,
            fail_on: tuple[str, ...] | list[str] = DEFAULT_FAIL_ON,
            records: tuple[dict, dict] | None = None) -> Comparison:
    """Verdict for every metric of `result` and `baseline` (see the module docstring). Dicts (a parsed
    results.json) are checked and read into RunResults first. `records`: the per-query records of the
    result and of the baseline ({(embedder, task, dataset): PerQuery}, `run_records`) for the paired
    rule; None: the tolerance rule only."""
    result, baseline = as_result(result, "result"), as_result(baseline, "baseline")
    tol = tol or Tolerances.from_config(result.regression())
    bad = [k for k in fail_on if k not in KINDS]
    if bad:
        raise BenchError(f"--fail-on: unknown kind '{bad[0]}'; choose from {', '.join(KINDS)}")
    if result.benchmark != baseline.benchmark:
        # Not a verdict: nothing in the two files measures the same thing; comparing them is a mix-up.
        raise BenchError(f"cannot compare benchmark '{result.benchmark}' "
                         f"({result.path or 'result'}) with benchmark '{baseline.benchmark}' "
                         f"({baseline.path or 'baseline'}): use the baseline of the same benchmark")
    res, base = _index(result), _index(baseline)
    out: list[Verdict] = []
    for key in [*res, *(k for k in base if k not in res)]:
        m = res.get(key) or base[key]
        v = Verdict(*key, kind=m.kind, verdict="", unit=m.unit)
        if key not in base:
            v.verdict, v.result = "new", res[key].value
        elif key not in res:
            v.verdict, v.baseline = "missing", base[key].value
        else:
            v.result, v.baseline = res[key].value, base[key].value
            lost = v.result is None and v.baseline is not None
            if lost and not _why_incomparable(result, baseline, res[key]):
                # Same model, data and settings, and the value is gone: the run stopped computing it.
                na = res[key].na_reason
                v.verdict, v.reason = "missing", f"n/a in the result{': ' + na if na else ''}"
            else:
                _judge(v, result, baseline, res[key], tol, base[key])
                if v.verdict in ("improved", "unchanged", "regressed") and v.kind == "quality" and records:
                    _judge_paired(v, res[key], records, tol, result.config.get("statistics") or {})
        out.append(v)
    notes = []
    if records and any(v.reason.startswith("paired") for v in out):
        notes.append("quality verdicts marked 'paired' come from a paired bootstrap of the change on the "
                     "same queries: regressed only when its whole interval lies below -tolerance")
    if result.synthetic or baseline.synthetic:
        notes.append("synthetic run (random tiny weights): the verdicts check the harness, not model quality")
    if result.hardware != baseline.hardware:
        notes.append(f"hardware differs ({baseline.hardware} vs {result.hardware}): speed and memory are "
                     "incomparable")
    return Comparison(out, tuple(fail_on), result.run_id, baseline.run_id, notes)


def _num_items(*metrics: Metric) -> int | None:
    """The larger `num_items` of the records when every one has a valid one (a positive int), else None."""
    found = [n for n in (m.num_items for m in metrics)
             if isinstance(n, int) and not isinstance(n, bool) and n > 0]
    return max(found) if found and len(found) == len(metrics) else None


def _judge(v: Verdict, result: RunResult, baseline: RunResult, m: Metric, tol: Tolerances,
           mb: Metric | None = None) -> None:
    if v.result is None and v.baseline is None:
        v.verdict, v.reason = "unchanged", "n/a on both sides"
        return
    if v.result is None or v.baseline is None:
        v.verdict, v.reason = "incomparable", "n/a on one side"
        return
    why = _why_incomparable(result, baseline, m)
    if why:
        v.verdict, v.reason = "incomparable", why
        return
    t, relative = tol.for_metric(v.key, v.kind)
    diff = v.result - v.baseline
    if relative:
        change = diff / abs(v.baseline) if v.baseline else (0.0 if diff == 0 else math.copysign(math.inf, diff))
        v.delta, v.tolerance = f"{change * 100:+.1f}%", f"±{t * 100:g}%"
    else:
        change = diff
        v.delta, v.tolerance = f"{diff:+.3g}", f"±{t:g}"
        n = _num_items(m, mb) if mb is not None else None
        k = tol.quality_items
        if n is not None and k > 0 and 100.0 * k / n > t:
            t = 100.0 * k / n
            v.tolerance = f"±{t:.3g} ({k} of {n} items)"
    better = change if m.higher_is_better else -change
    # A tiny epsilon keeps a change of exactly the tolerance (after float noise) unchanged.
    if better < -t - 1e-12:
        v.verdict = "regressed"
    elif better > t + 1e-12:
        v.verdict = "improved"
    else:
        v.verdict = "unchanged"


def _judge_paired(v: Verdict, m: Metric, records: tuple[dict, dict], tol: Tolerances,
                  settings: dict[str, Any]) -> None:
    """The paired rule (module docstring) for a comparable quality verdict, when both sides have the
    record."""
    from bench import significance
    from bench.metrics.stats import significant_regression

    who = (m.embedder, m.task, m.dataset)
    if who not in records[0] or who not in records[1]:
        return
    change = significance.change_interval(records[0][who], records[1][who], m.key, settings)
    if change is None or not all(math.isfinite(x) for x in (change.low, change.high)):
        return
    t, _ = tol.for_metric(v.key, v.kind)  # the configured tolerance, without the item floor
    hib = m.higher_is_better
    if significant_regression(change, t, hib):
        v.verdict = "regressed"
    elif significant_regression(change, t, not hib):  # the whole interval is better by more than t
        v.verdict = "improved"
    else:
        v.verdict = "unchanged"
    v.tolerance = f"±{t:g}; paired {change.level:.0%} [{change.low:+.3g}, {change.high:+.3g}]"
    v.reason = "paired" if v.verdict != "unchanged" or abs(change.diff) <= t else "paired: inside the noise"


def accept_baseline(result_path: str | Path, baseline_path: str | Path) -> str:
    """Copy a result to the baseline path (atomically); return a summary of what changed against the old one."""
    from bench.io import write_json_atomic
    from bench.results import load_results

    result = load_results(result_path, finished=True)
    baseline_path = Path(baseline_path)
    summary = "new baseline"
    if baseline_path.exists():
        try:
            old = load_results(baseline_path)
        except BenchError:
            old, summary = None, "replaced an unreadable baseline"
        if old is not None:
            if old.benchmark != result.benchmark:
                name = result.benchmark
                raise BenchError(f"{baseline_path} is the baseline of benchmark '{old.benchmark}', not "
                                 f"'{name}': pass --to reports/baselines/{name}.json")
            summary = "against the previous baseline: " + compare(result, old, fail_on=()).summary()
    write_json_atomic(baseline_path, result.to_json())
    # Its per-query records go beside it (the paired rule of `bench compare`), or a stale copy goes.
    from bench import significance
    from bench.io import write_bytes_atomic

    source = significance.records_path(result.path or result_path)
    target = significance.records_path(baseline_path)
    if source.is_file():
        write_bytes_atomic(target, source.read_bytes())
        summary += f"; per-query records {target} ({target.stat().st_size / 1024:.0f} KiB)"
    elif target.is_file():
        target.unlink()
    return summary
