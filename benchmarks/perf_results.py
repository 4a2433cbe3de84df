"""The perf scripts' figures as a bench run: a results.json (benchmark "perf") of the same typed metric
records a `bench run` writes, so `bench report <folder>` renders it and `bench compare` tracks it.

One figure (a row of results.jsonl, written by benchmarks._common.report) is one metric:
  embedder "perf", task = the script ("harness", "loading", ...), dataset "-" (generated inputs),
  key = "<script>/<figure>" (" (quick)" appended for --quick figures: never compared with full ones),
  unit, higher_is_better and kind (speed | memory) from the row when the script gave them, else read
  from the figure's name and target (see `facts`), protocol = "target <target>: <verdict>; <detail>".
The targets and verdicts are also kept whole under details["perf"]["<script>/-"].
Usage: python -m benchmarks.perf_results [--out FOLDER] [--from results.jsonl]   (run_all calls `write_run`)
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.results import Metric, RunResult, write_json_atomic

BENCHMARK = EMBEDDER = "perf"
DATASET = "-"


def facts(name: str, target: str) -> dict[str, Any]:
    """unit, higher_is_better and kind of a figure: a target '>= x' means higher is better, '<= x', '< x'
    and '(info)' lower (every info figure is a time or a size); 'MiB'/'KB'/'RSS' in the name make it a
    memory figure; '(s' or ' s/' a time in seconds; anything else is a ratio of two measurements."""
    if "MiB" in name:
        unit = "MiB"
    elif "(KB)" in name:
        unit = "KB"
    elif re.search(r"\(s\b|(^|\s)s/", name):
        unit = "s"
    else:
        unit = "x"
    memory = unit in ("MiB", "KB") or "RSS" in name or "memory" in name.lower()
    return {"unit": unit, "higher_is_better": target.strip().startswith(">"),
            "kind": "memory" if memory else "speed"}


def script_name(row: dict[str, Any]) -> str:
    """'bench_harness.py' -> 'harness'."""
    return str(row.get("script") or "unknown").removesuffix(".py").removeprefix("bench_")


def to_metric(row: dict[str, Any]) -> Metric:
    name, target = str(row["name"]), str(row["target"])
    f = {**facts(name, target), **{k: row[k] for k in ("unit", "higher_is_better", "kind") if k in row}}
    script = script_name(row)
    detail = str(row.get("detail") or "")
    return Metric(embedder=EMBEDDER, task=script, dataset=DATASET,
                  key=f"{script}/{name}" + (" (quick)" if row.get("quick") else ""),
                  value=float(row["value"]), unit=f["unit"], higher_is_better=bool(f["higher_is_better"]),
                  kind=f["kind"], protocol=f"target {target}: {row.get('verdict', '')}"
                  + (f"; {detail}" if detail else ""))


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def build_run(rows: list[dict[str, Any]], *, quick: bool, timings: dict[str, float] | None = None,
              device: str = "cpu", created: datetime | None = None) -> RunResult:
    """The typed run of the figures in `rows` (results.jsonl rows)."""
    from bench.environment import capture, git_info
    from benchmarks._common import ROOT

    created = created or datetime.now(timezone.utc)
    details: dict[str, Any] = {}
    for r in rows:
        details.setdefault(f"{script_name(r)}/{DATASET}", {})[str(r["name"])] = {
            k: r.get(k) for k in ("target", "verdict", "ok", "detail", "quick")}
    scripts = sorted({script_name(r) for r in rows})
    notes = ["bench's performance scripts (benchmarks/, `make perf`): random full-size weights and generated "
             "inputs; every figure is shown with its target in its protocol"]
    if quick:
        notes.append("quick run (--quick): smaller settings, not the figures the README quotes")
    return RunResult(
        benchmark=BENCHMARK, run_id=f"{created:%Y%m%d-%H%M%S}-{BENCHMARK}", created=created.isoformat(),
        config_path="benchmarks/run_all.py",
        config={"name": BENCHMARK, "quick": quick, "scripts": scripts, "runtime": {"device": device}},
        environment={**capture(device), "git": git_info(ROOT)}, metrics=[to_metric(r) for r in rows],
        details={EMBEDDER: details} if details else {}, timings={EMBEDDER: dict(timings or {})},
        notes=notes, synthetic=True)


def write_run(rows: list[dict[str, Any]], out_dir: str | Path, **kwargs: Any) -> Path:
    """Write `out_dir`/results.json for the figures in `rows`; return its path (the one place this package
    writes a results file)."""
    result = build_run(rows, **kwargs)
    return write_json_atomic(Path(out_dir) / "results.json", result.to_json())


def default_out_dir(created: datetime) -> Path:
    """reports/runs/<run id>, where `bench run` puts its runs."""
    from benchmarks._common import ROOT

    return ROOT / "reports" / "runs" / f"{created:%Y%m%d-%H%M%S}-{BENCHMARK}"


def main(argv: list[str] | None = None) -> int:
    from benchmarks._common import RESULTS

    ap = argparse.ArgumentParser(description="The perf scripts' results.jsonl as a bench results.json.")
    ap.add_argument("--from", dest="source", type=Path, default=RESULTS, help=f"default {RESULTS}")
    ap.add_argument("--out", type=Path, help="run folder (default reports/runs/<run id>)")
    args = ap.parse_args(argv)
    rows = read_rows(args.source)
    if not rows:
        print(f"no figures in {args.source}: run python -m benchmarks.run_all first")
        return 1
    quick, created = all(r.get("quick") for r in rows), datetime.now(timezone.utc)
    out = args.out or default_out_dir(created)
    print(f"results written to {write_run(rows, out, quick=quick, created=created)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
