"""`make perf`: run every benchmark script, each in its own subprocess, then one summary table of every
figure next to its target (MET / MISSED; INFO for figures given for information), and the figures as a
bench run (results.json, benchmark "perf": `bench report` renders it, `bench compare` tracks it).

Usage: python -m benchmarks.run_all [SCRIPT ...] [--skip SCRIPT ...] [--quick] [--strict] [--markdown FILE]
                                    [--out FOLDER]
  SCRIPT: harness e2e cache metrics phi3v_image loading phi3v_lm finetune flops flops_l14 load_dtype
          (default: all, in that order);
          `--list` names them with their arguments.
  --quick: smaller settings per script (fewer images, rounds, crops): minutes instead of about an hour;
           quick figures are marked "(quick)" and are not the ones the README quotes.
  --strict: exit 1 when a target is MISSED too (by default only a script that fails makes it exit 1).
  --out: the run folder of results.json (default reports/runs/<run id>).
Each script appends its figures to results.jsonl in BENCH_PERF_DIR (default .cache/perf), which this
script empties first. The machine is shared and noisy: every figure is a ratio measured side by side
within one script run; see the README's performance section.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks._common import RESULTS, ROOT, verdict
from benchmarks.perf_results import default_out_dir, read_rows, write_run

HERE = Path(__file__).resolve().parent

# name -> (script, full-run arguments, --quick arguments), in run order.
SCRIPTS: dict[str, tuple[str, list[str], list[str]]] = {
    "harness": ("bench_harness.py", [], ["--images", "64", "--rounds", "1"]),
    "e2e": ("bench_e2e.py", [], ["--images", "64", "--rounds", "1"]),
    "cache": ("bench_cache.py", [], []),
    "metrics": ("bench_metrics.py", [], ["--quick"]),
    "phi3v_image": ("bench_phi3v_image.py", [], ["--num-crops", "16", "--images", "2", "--no-isolate-skip"]),
    "loading": ("bench_loading.py", [], ["--rounds", "1"]),
    "phi3v_lm": ("bench_phi3v_lm.py", [], ["--repeats", "1", "--captions", "4"]),
    "finetune": ("bench_finetune.py", [], ["--part", "demo"]),
    "flops": ("bench_flops.py", [], ["--min-time", "1", "--batches", "2", "--rounds", "1"]),
    "flops_l14": ("bench_flops.py", ["--model", "l14-336", "--batch", "2", "--batches", "2", "--rounds", "2",
                                     "--min-time", "4"],
                  ["--model", "l14-336", "--batch", "2", "--batches", "1", "--rounds", "1", "--min-time", "1"]),
    "load_dtype": ("bench_load_dtype.py", [], ["--only", "clip"]),
}


def _name(arg: str) -> str:
    """'harness', 'bench_harness', 'bench_harness.py' -> 'harness'."""
    stem = arg.removesuffix(".py").removeprefix("bench_")
    if stem not in SCRIPTS:
        raise SystemExit(f"unknown script {arg!r}: choose from {', '.join(SCRIPTS)}")
    return stem


def summary_table(rows: list[dict], markdown: bool = False) -> str:
    """The table: script, figure, value, target, verdict (and the figure's detail in Markdown)."""
    head = ["script", "figure", "value", "target", "verdict"]
    body = []
    for r in rows:
        mark = r.get("verdict") or verdict(str(r["target"]), bool(r["ok"]))
        name = r["name"] + (" (quick)" if r.get("quick") else "")
        body.append([str(r.get("script", "")).removesuffix(".py").removeprefix("bench_"), name,
                     f"{r['value']:.3f}", str(r["target"]), mark, r.get("detail", "")])
    if markdown:
        lines = ["| " + " | ".join([*head, "detail"]) + " |", "|" + "---|" * (len(head) + 1)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{'>' if i == 2 else '<'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row[:5]) for row in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the benchmark scripts, print each figure and its target.")
    ap.add_argument("scripts", nargs="*", help=f"scripts to run (default all): {' '.join(SCRIPTS)}")
    ap.add_argument("--skip", nargs="+", default=[], metavar="SCRIPT", help="scripts to leave out")
    ap.add_argument("--quick", action="store_true",
                    help="smaller settings (a smoke run, not the quoted figures)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--markdown", type=Path, help="also write the summary table as Markdown to this file")
    ap.add_argument("--list", action="store_true", help="print the scripts and their arguments, run nothing")
    ap.add_argument("--out", type=Path, help="run folder of results.json (default reports/runs/<run id>)")
    args = ap.parse_args(argv)

    chosen = [_name(s) for s in args.scripts] or list(SCRIPTS)
    skipped = {_name(s) for s in args.skip}
    chosen = [n for n in SCRIPTS if n in chosen and n not in skipped]
    if args.list:
        for n, (script, full, quick) in SCRIPTS.items():
            print(f"{n:12s} {script:22s} full: {' '.join(full) or '-'}; quick: {' '.join(quick) or '-'}")
        return 0

    RESULTS.unlink(missing_ok=True)
    created = datetime.now(timezone.utc)
    failed: list[str] = []
    durations: dict[str, float] = {}
    for n in chosen:
        script, full, quick = SCRIPTS[n]
        extra = quick if args.quick else full
        print(f"\n== {script} {' '.join(extra)}".rstrip(), flush=True)
        if not (HERE / script).exists():
            print(f"== {script}: missing", flush=True)
            failed.append(n)
            continue
        env = dict(os.environ, BENCH_PERF_SCRIPT=script, BENCH_PERF_QUICK="1" if args.quick else "0",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        start = time.perf_counter()
        module = f"benchmarks.{script.removesuffix('.py')}"
        rc = subprocess.run([sys.executable, "-m", module, *extra], cwd=ROOT, env=env).returncode
        durations[n] = time.perf_counter() - start
        if rc:
            print(f"== {script} failed (exit {rc})", flush=True)
            failed.append(n)

    rows = read_rows(RESULTS)
    print(f"\n== summary ({'quick' if args.quick else 'full'} run; scripts took "
          + ", ".join(f"{n} {s:.0f} s" for n, s in durations.items()) + ")")
    print(summary_table(rows) if rows else "(no figures were written)")
    if args.markdown:
        args.markdown.write_text(summary_table(rows, markdown=True) + "\n")
        print(f"Markdown table written to {args.markdown}")
    marks = [r.get("verdict") or verdict(str(r["target"]), bool(r["ok"])) for r in rows]
    missed = marks.count("MISSED")
    if missed:
        print(f"targets missed: {missed} of {missed + marks.count('MET')}")
    if failed:
        print(f"scripts that failed: {', '.join(failed)}")
    if rows:
        out = write_run(rows, args.out or default_out_dir(created), quick=args.quick, timings=durations,
                        created=created)
        print(f"figures as a bench run: {out} (render: bench report {out.parent}; track: bench compare)")
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
