"""The uncertainty of a run's quality metrics, from the per-query records its tasks keep.

A quality task hands its per-query outcomes to the runner (`TaskInputs.per_query`: retrieval ranks,
the true class's rank per test image, multi-label scores; bench.metrics.records). From them, with
the config's `statistics` settings (resamples, level, seed), this module gives

- every quality metric its bootstrap interval and chance level (`annotate`: Metric.ci_low, ci_high,
  chance), the bootstrap of bench.metrics.stats over the test queries;
- every quality row of the report (one task, dataset and key) a paired bootstrap of its best value
  against the runner-up on the same queries (`paired_marks`: RunResult.paired), the "significantly
  better" and "tie" marks of the tables;
- `bench compare` the paired interval of a change between two runs of the same model on the same data
  (`change_interval`, used by bench.regression_paired).

Records are saved in `per_query.npz` beside results.json (`save_records`, one atomic write; its meta
holds the run id, seed, statistics settings and the model and data fingerprints); a baseline JSON
`x.json` keeps its records in `x.per_query.npz` (`records_path`). numpy only: no torch.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

RECORDS_FILE = "per_query.npz"
RecordKey = tuple[str, str, str]  # (embedder, task, dataset)


def records_path(results_path: str | Path) -> Path:
    """Where the per-query records of a results file live: <run>/per_query.npz beside results.json,
    `<name>.per_query.npz` beside any other JSON (a baseline: reports/baselines/demo.per_query.npz)."""
    p = Path(results_path)
    if p.is_dir():
        return p / RECORDS_FILE
    if p.name == "results.json":
        return p.with_name(RECORDS_FILE)
    return p.with_name(f"{p.stem}.{RECORDS_FILE}")


def bootstrap_kw(settings: Any) -> dict[str, Any]:
    """{n_resamples, seed, level} from the config's `statistics` section (a model or a dict)."""
    get = settings.get if isinstance(settings, dict) else lambda k, d=None: getattr(settings, k, d)
    return {"n_resamples": int(get("resamples", 1000)), "seed": int(get("seed", 0)),
            "level": float(get("level", 0.95))}


def enabled(settings: Any) -> bool:
    on = settings.get("enabled", True) if isinstance(settings, dict) else getattr(settings, "enabled", True)
    return bool(on)


def _name(key: str) -> str:
    """'retrieval/i2t_recall@5' -> 'i2t_recall@5' (the per-query measures' own key)."""
    return key.split("/", 1)[1] if "/" in key else key


def stat_of(record: Any, key: str) -> tuple[int, Any] | None:
    """(number of queries, StatFn over resample counts) of metric `key` from its record; None when the
    record cannot give it (an unknown key)."""
    from bench.metrics import ranking, stats
    from bench.metrics.records import ranks_from_record

    name, a = _name(key), record.arrays
    if record.kind == "retrieval":
        try:
            measure = ranking.parse_key(name)[1]
        except ValueError:
            return None
        values = ranking.per_query(ranks_from_record(record), name)
        return len(values), stats.stat_fn(values, measure.stat)
    if record.kind == "classification":
        c, rank = int(record.meta["num_classes"]), a["true_rank"]
        m = re.fullmatch(r"top([1-9][0-9]*)", name)
        if m:
            return len(rank), stats.mean_stat(ranking.topk_per_query(rank, int(m.group(1)), c))
        if name == "mean_per_class_recall":
            return len(rank), stats.mean_per_class_stat(ranking.topk_per_query(rank, 1, c), a["labels"])
        return None
    if name == "mAP":
        return len(a["labels"]), stats.map_stat(a["labels"], a["scores"])
    return None


def chance_of(record: Any, key: str) -> float | None:
    """The metric's value under a random ranking / guess, from what the record knows (ranking.*_chance)."""
    from bench.metrics import ranking

    name, a = _name(key), record.arrays
    try:
        if record.kind == "retrieval":
            return ranking.retrieval_chance(name, a["text_to_image"], len(a["i2t_first"]))
        if record.kind == "classification":
            return ranking.classification_chance(name, int(record.meta["num_classes"]))
        return ranking.classification_chance(name, a["labels"].shape[1], a["labels"])
    except ValueError:
        return None


def annotate(metrics: list[Any], records: dict[RecordKey, Any], settings: Any) -> None:
    """Set ci_low / ci_high / chance on every quality metric with a value and a record (in place).
    The metrics of one record with the same queries share their resamples (stats.bootstrap_many)."""
    from bench.metrics import stats

    kw = bootstrap_kw(settings)
    groups: dict[tuple[RecordKey, int], dict[int, Any]] = {}
    for i, m in enumerate(metrics):
        rec = records.get((m.embedder, m.task, m.dataset))
        if m.kind != "quality" or m.value is None or rec is None:
            continue
        m.chance = chance_of(rec, m.key)
        got = stat_of(rec, m.key) if enabled(settings) else None
        if got is not None:
            groups.setdefault(((m.embedder, m.task, m.dataset), got[0]), {})[i] = got[1]
    for (_, n), fns in groups.items():
        est = {i: float(metrics[i].value) for i in fns}
        for i, ci in stats.bootstrap_many(n, fns, estimates=est, **kw).items():
            metrics[i].ci_low, metrics[i].ci_high = ci.low, ci.high


def same_queries(a: Any, b: Any) -> bool:
    """Whether two records score the same queries in the same order (a paired test needs it)."""
    if a.kind != b.kind:
        return False
    key = {"retrieval": ("text_to_image",), "classification": ("labels",), "multilabel": ("labels",)}[a.kind]
    if a.kind == "retrieval" and len(a.arrays["i2t_first"]) != len(b.arrays["i2t_first"]):
        return False
    if a.kind == "classification" and a.meta.get("num_classes") != b.meta.get("num_classes"):
        return False
    return all(np.array_equal(a.arrays[k], b.arrays[k]) for k in key)


def change_interval(rec_a: Any, rec_b: Any, key: str, settings: Any) -> Any:
    """stats.PairedInterval of metric `key`, a - b, on the same queries; None when the records cannot
    give it (different queries, unknown key)."""
    from bench.metrics import stats

    if not same_queries(rec_a, rec_b):
        return None
    fa, fb = stat_of(rec_a, key), stat_of(rec_b, key)
    if fa is None or fb is None or fa[0] != fb[0]:
        return None
    return stats.paired(fa[0], fa[1], fb[1], **bootstrap_kw(settings))


def paired_marks(metrics: list[Any], records: dict[RecordKey, Any], settings: Any) -> list[Any]:
    """One `results.Paired` per quality row (task, dataset, key) with two or more values backed by
    records: the best value against the runner-up (the next best; ties with the best included)."""
    from bench.results import Paired

    if not enabled(settings):
        return []
    rows: dict[tuple[str, str, str], list[Any]] = {}
    for m in metrics:
        if m.kind == "quality" and m.value is not None and (m.embedder, m.task, m.dataset) in records:
            rows.setdefault((m.task, m.dataset, m.key), []).append(m)
    out = []
    level = bootstrap_kw(settings)["level"]
    for (task, dataset, key), ms in rows.items():
        if len(ms) < 2:
            continue
        sign = 1.0 if ms[0].higher_is_better else -1.0
        best, second = sorted(ms, key=lambda m: -sign * m.value)[:2]  # stable: config order on ties
        ci = change_interval(records[(best.embedder, task, dataset)],
                             records[(second.embedder, task, dataset)], key, settings)
        if ci is None or not all(math.isfinite(x) for x in (ci.diff, ci.low, ci.high)):
            continue
        out.append(Paired(task=task, dataset=dataset, key=key, best=best.embedder, runner_up=second.embedder,
                          diff=ci.diff, low=ci.low, high=ci.high, level=level,
                          significant=ci.verdict(best.higher_is_better) == "a"))
    return out


def save_records(path: str | Path, records: dict[RecordKey, Any], meta: dict[str, Any]) -> int:
    """Write the records to `path` in one atomic step (bench.io.atomic_path); return its size in bytes."""
    from bench.io import atomic_path
    from bench.metrics.records import save_per_query

    named = {"/".join(k): r for k, r in records.items()}
    with atomic_path(path) as tmp:
        return save_per_query(tmp, named, meta)


def load_records(path: str | Path) -> tuple[dict[RecordKey, Any], dict[str, Any]]:
    """(records by (embedder, task, dataset), file meta) from `save_records`' file (DataError, one
    line, when it is unreadable or invalid)."""
    from bench.metrics.records import load_per_query

    named, meta = load_per_query(path)
    out = {}
    for rec in named.values():
        who = tuple(rec.meta.get(k) for k in ("embedder", "task", "dataset"))
        if all(isinstance(x, str) for x in who):
            out[who] = rec
    return out, meta


def run_records(results: Any) -> tuple[dict, str]:
    """The per-query records beside a results file that belong to it ({(embedder, task, dataset):
    PerQuery}, only those whose model and data fingerprints are the results'), and a note when some
    exist but cannot be used ('' otherwise). No records: ({}, '')."""
    from bench.errors import BenchError

    if not results.path:
        return {}, ""
    path = records_path(results.path)
    if not path.is_file():
        return {}, ""
    try:
        records, meta = load_records(path)
    except BenchError as e:
        return {}, f"{path} not used ({e}); tolerance rule"
    if meta.get("run_id") != results.run_id:
        return {}, (f"{path} belongs to run {meta.get('run_id')!r}, not {results.run_id!r}: not used; "
                    "tolerance rule")
    ok = {}
    for (label, task, ds), rec in records.items():
        if (rec.meta.get("embedder_fingerprint") == _fp(results.embedders, label)
                and rec.meta.get("dataset_fingerprint") == _fp(results.datasets, ds)):
            ok[(label, task, ds)] = rec
    return ok, ""


def _fp(records: dict[str, Any], name: str) -> str | None:
    rec = records.get(name)
    return rec.fingerprint if rec is not None else None
