"""`bench report`, `bench compare`, `bench baseline accept`: work on saved results only (no torch import)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from bench.errors import BenchError


def _cmd_report(args: argparse.Namespace) -> int:
    from bench.report import render_history, render_run
    from bench.results import load_results

    runs = [load_results(p) for p in args.runs]
    if len(runs) == 1:
        out = Path(args.out) if args.out else Path(runs[0].path or ".").parent
        paths = render_run(runs[0], out)
        for name in ("markdown", "csv", "html"):
            print(f"{name}: {paths[name]}")
        return 0
    paths = render_history(runs, Path(args.out or "reports/history"))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _kinds(text: str) -> tuple[str, ...]:
    from bench.regression import KINDS

    kinds = tuple(k.strip() for k in text.split(",") if k.strip()) if text != "none" else ()
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise BenchError(f"--fail-on: unknown kind '{bad[0]}'; use a comma-separated subset of "
                         f"{','.join(KINDS)} or 'none'")
    return kinds


def _cmd_compare(args: argparse.Namespace) -> int:
    from bench.io import write_text_atomic
    from bench.regression import Tolerances, check_tolerance, compare
    from bench.results import load_results

    # Arguments first (no file read for a typo); then both files, checked, and finished runs only.
    fail_on = _kinds(args.fail_on)
    overrides = {name: check_tolerance(getattr(args, f"{name}_tol"), f"--{name.replace('_', '-')}-tol")
                 for name in ("quality_abs", "speed_rel", "memory_rel")
                 if getattr(args, f"{name}_tol") is not None}
    result, baseline = load_results(args.result, finished=True), load_results(args.baseline, finished=True)
    tol = Tolerances.from_config(result.regression())
    for name, value in overrides.items():
        setattr(tol, name, value)
    from bench.significance import run_records

    (rec_r, note_r), (rec_b, note_b) = run_records(result), run_records(baseline)
    comparison = compare(result, baseline, tol, fail_on, records=(rec_r, rec_b) if rec_r and rec_b else None)
    comparison.notes += [n for n in (note_r, note_b) if n]
    text = comparison.to_markdown(show=args.show)
    print(text, end="")
    if args.output:
        write_text_atomic(args.output, text)
    if comparison.exit_code:
        # One line for the CI log, whatever --show hid or --output received.
        print(f"bench: compare failed: {'; '.join(comparison.reasons)}", file=sys.stderr)
    return comparison.exit_code


def _cmd_baseline_accept(args: argparse.Namespace) -> int:
    from bench.regression import accept_baseline
    from bench.results import load_results

    target = args.to
    if target is None:
        name = load_results(args.result, finished=True).benchmark
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):  # it becomes a file name: no path in it
            raise BenchError(f"benchmark name '{name[:40]}' cannot name a baseline file: pass --to")
        target = Path("reports/baselines") / f"{name}.json"
    summary = accept_baseline(args.result, target)
    print(f"baseline: {target} ({summary})")
    return 0


def register(sub) -> None:
    """Add the report/compare/baseline subcommands to bench's argparse subparsers."""
    r = sub.add_parser("report", help="re-render reports from saved results (several runs: metric history)")
    r.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) or results.json file(s)")
    r.add_argument("--out", help="output folder (one run: the run folder; several: reports/history)")
    r.set_defaults(func=_cmd_report)

    c = sub.add_parser("compare", help="per-metric verdicts of RESULT against BASELINE; exit 1 on a regression, "
                       "a lost metric or nothing compared, 2 on bad input")
    c.add_argument("result", help="run folder or results.json")
    c.add_argument("baseline", help="run folder or results.json (e.g. reports/baselines/demo.json)")
    c.add_argument("--quality-abs-tol", help="percentage points (default: the config's regression section)")
    c.add_argument("--speed-rel-tol", help="relative, e.g. 0.25 for 25%%")
    c.add_argument("--memory-rel-tol", help="relative, e.g. 0.2 for 20%%")
    c.add_argument("--fail-on", default="quality,speed,memory",
                   help="kinds whose regressions fail (comma-separated: quality,speed,memory,fidelity; or none)")
    c.add_argument("--show", choices=("changes", "all"), default="changes", help="rows to list")
    c.add_argument("--output", help="also write the Markdown to this file (for a PR comment)")
    c.set_defaults(func=_cmd_compare)

    b = sub.add_parser("baseline", help="manage regression baselines")
    bsub = b.add_subparsers(dest="baseline_command", required=True, metavar="ACTION")
    a = bsub.add_parser("accept", help="make RESULT the baseline (deliberately)")
    a.add_argument("result", help="run folder or results.json")
    a.add_argument("--to", type=Path, help="baseline file (default: reports/baselines/<benchmark>.json)")
    a.set_defaults(func=_cmd_baseline_accept)
