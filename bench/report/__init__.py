"""Reports rendered from saved results only (never recomputes anything; does not import torch).

`render_run(results, out_dir)` writes report.md, report.html and metrics.csv for one run;
`render_history(results_list, out_dir)` writes history.md and history.html for several runs of one
benchmark (each metric over time and commits).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.io import write_text_atomic as _write_text_atomic
from bench.results import RunResult, as_result

CSV_COLUMNS = ["benchmark", "run_id", "created", "embedder", "task", "dataset", "key", "value", "unit",
               "higher_is_better", "kind", "na_reason", "protocol", "ci_low", "ci_high", "chance"]


def metrics_frame(results: RunResult | dict[str, Any]):
    """Every metric record as one row of a pandas DataFrame (columns: CSV_COLUMNS)."""
    import pandas as pd

    results = as_result(results)
    rows = [{"benchmark": results.benchmark, "run_id": results.run_id, "created": results.created,
             **{k: getattr(m, k) for k in CSV_COLUMNS[3:]}} for m in results.metrics]
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


def render_run(results: RunResult | dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.html and metrics.csv for one run into out_dir; return their paths."""
    results = as_result(results)
    from bench.report.finetune import loss_curves
    from bench.report.html import render_html
    from bench.report.markdown import render_markdown
    from bench.report.plots import all_plots

    out = Path(out_dir)
    paths = {"markdown": _write_text_atomic(out / "report.md", render_markdown(results))}
    paths["csv"] = _write_text_atomic(out / "metrics.csv", metrics_frame(results).to_csv(index=False))
    paths["html"] = _write_text_atomic(out / "report.html", render_html(results, all_plots(results) + loss_curves(results)))
    return paths


def _run_label(results: RunResult) -> str:
    commit = results.git_commit or "-------"
    return f"{(results.created or '?')[:16].replace('T', ' ')} {commit[:7]}"


def render_history(results_list: list[RunResult] | list[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Several runs of one benchmark: every (embedder, dataset, metric) over runs ordered by date."""
    from bench.errors import BenchError
    from bench.report.html import render_history_html
    from bench.report.markdown import _md_table
    from bench.report.plots import history_plots
    from bench.report.tables import format_value

    if not results_list:
        raise BenchError("no runs to draw a history from")
    results_list = [as_result(r) for r in results_list]
    names = sorted({r.benchmark for r in results_list})
    if len(names) > 1:
        raise BenchError(f"a history needs runs of one benchmark; got {', '.join(names)} "
                         f"(pass the run folders of one config)")
    runs = sorted(results_list, key=lambda r: r.created)
    labels = [_run_label(r) for r in runs]
    series: dict[tuple[str, str, str], list[float | None]] = {}
    units: dict[tuple[str, str, str], str] = {}
    for i, r in enumerate(runs):
        for m in r.metrics:
            key = (m.embedder, m.dataset, m.key)
            series.setdefault(key, [None] * len(runs))[i] = m.value
            units[key] = m.unit
    header = ["embedder", "dataset", "metric", *labels]
    rows = [[e, d, k, *(format_value(v, units[(e, d, k)]) for v in vals)] for (e, d, k), vals in series.items()]
    plotted = {f"{e} · {d} · {k}": list(zip(labels, vals)) for (e, d, k), vals in series.items()
               if any(v is not None for v in vals)}
    title = f"bench history: {names[0]} ({len(runs)} runs)"
    out = Path(out_dir)
    md = "\n".join([f"# {title}", "", *_md_table(header, rows), ""])
    return {"markdown": _write_text_atomic(out / "history.md", md),
            "html": _write_text_atomic(out / "history.html",
                                       render_history_html(title, rows, header, history_plots(plotted)))}
