"""report.html: one self-contained page (inline CSS, plots as data: URIs, no network references)."""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from bench.report.finetune import finetune_html, synthetic_warning
from bench.report.plots import Plot
from bench.results import RunResult, as_result
from bench.report.tables import (NOT_MEASURED, Tables, build_tables, dataset_rows,
                                 embedder_rows, format_value, headline, protocols, run_facts,
                                 statistics_legend)

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
     color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{margin:1.2em 0 .4em;font-size:1.05em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .7em;text-align:right;vertical-align:top}
th{background:#f4f4f4} td.k,th.k{text-align:left;font-family:ui-monospace,Menlo,Consolas,monospace}
td.best{background:#e3f4e1;font-weight:bold} td.na{color:#999}
.warn{background:#fff3cd;border:2px solid #e0a800;padding:.8em 1em;font-weight:bold;margin:1em 0}
.muted{color:#666;font-size:.9em} figure{margin:1em 0} figcaption{color:#555;font-size:.85em}
img{max-width:100%;border:1px solid #eee}
.facts td{text-align:left} .facts td:first-child{font-weight:bold;white-space:nowrap}
"""


def _table(header: list[str], rows: list[list[str]], left_cols: int = 1, cls: str = "") -> str:
    def td(i: int, v: str, tag: str) -> str:
        cls_attr = ' class="k"' if i < left_cols else ""
        return f"<{tag}{cls_attr}>{escape(str(v))}</{tag}>"

    head = "<tr>" + "".join(td(i, h, "th") for i, h in enumerate(header)) + "</tr>" if any(header) else ""
    body = "".join("<tr>" + "".join(td(i, v, "td") for i, v in enumerate(r)) + "</tr>" for r in rows)
    table_attr = f' class="{cls}"' if cls else ""
    return f"<table{table_attr}>{head}{body}</table>"


def metric_tables_html(tables: Tables) -> str:
    parts = []
    for section in tables.sections:
        head = "".join(f"<th>{escape(lb)}</th>" for lb in tables.embedders)
        rows = []
        for row in section.rows:
            arrow = "↑" if row.higher_is_better else "↓"
            unit = f" ({escape(row.unit)})" if row.unit else ""
            cells = []
            for label in tables.embedders:
                c = row.cells[label]
                if c.note is not None:
                    cells.append(f'<td class="na" title="{escape(tables.notes[c.note - 1])}">n/a '
                                 f"<sup>[{c.note}]</sup></td>")
                else:
                    title = f' title="interval [{c.ci[0]:.4g}, {c.ci[1]:.4g}]"' if c.ci else ""
                    text = escape(c.text + c.mark)
                    cls = ' class="best"' if c.best else ""
                    cells.append(f"<td{cls}{title}>{text}</td>")
            if section.has_chance:
                chance = (format_value(row.chance, row.unit, with_unit=False) if row.chance is not None
                          else NOT_MEASURED)
                cells.append(f'<td class="na">{escape(chance)}</td>')
            rows.append(f'<tr><td class="k">{escape(row.key)}{unit} {arrow}</td>{"".join(cells)}</tr>')
        chance_head = "<th>chance</th>" if section.has_chance else ""
        parts.append(f'<h3>{escape(section.title)}</h3><table><tr><th class="k">metric</th>{head}'
                     f"{chance_head}</tr>" + "".join(rows) + "</table>")
    if tables.notes:
        parts.append('<p class="muted">n/a: ' + "; ".join(f"[{i}] {escape(t)}" for i, t in enumerate(tables.notes, 1))
                     + "</p>")
    return "\n".join(parts)


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(plot.alt)}">'
            f"<figcaption>{escape(plot.title)}</figcaption></figure>")


def render_html(results: RunResult | dict[str, Any], plots: list[Plot]) -> str:
    results = as_result(results)
    tables = build_tables(results)
    title = f"bench report: {results.benchmark or '?'}"
    body = [f"<h1>{escape(title)}</h1>",
            '<p class="muted">' + " · ".join(f"<b>{escape(k)}</b>: {escape(v)}" for k, v in
                                             [("run", results.run_id or "?"), *headline(results)]) + "</p>"]
    if results.synthetic:
        body.append(f'<div class="warn">WARNING: {escape(synthetic_warning(results))}</div>')
    if not results.complete:
        error = f" Error: {escape(results.error)}" if results.error else ""
        body.append('<div class="warn">This run did not finish: the tables hold the embedders completed '
                    f'so far.{error}</div>')
    body += ["<h2>Summary</h2>",
             '<p class="muted">One row per metric, one column per embedder; the best value of each row is '
             "highlighted (↑ higher is better, ↓ lower is better; "
             f"{NOT_MEASURED} not measured; n/a: see the footnotes).</p>"]
    legend = statistics_legend(results)
    if legend:
        body.append(f'<p class="muted">{escape(legend)}</p>')
    body.append(metric_tables_html(tables))
    section = finetune_html(results, _table)
    body += [section] if section else []
    if plots:
        body += ["<h2>Plots</h2>", *(_figure(p) for p in plots)]
    body += ["<h2>Run</h2>", _table(["", ""], [[k, v] for k, v in run_facts(results)], 2, "facts"),
             "<h2>Embedders</h2>",
             _table(["embedder", "type", "model", "settings", "weights", "fingerprint"], embedder_rows(results), 4),
             "<h2>Datasets</h2>",
             _table(["dataset", "type", "images", "captions", "classes", "fingerprint"], dataset_rows(results), 2)]
    prot = protocols(results)
    if prot:
        body += ["<h2>Protocols</h2><ul>"] + [f"<li><b>{escape(t)}</b>: {escape(p)}</li>" for t, p in prot] + ["</ul>"]
    notes = results.notes
    if notes:
        body += ["<h2>Notes</h2><ul>"] + [f"<li>{escape(n)}</li>" for n in notes] + ["</ul>"]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def render_history_html(title: str, rows: list[list[str]], header: list[str], plots: list[Plot]) -> str:
    body = [f"<h1>{escape(title)}</h1>", _table(header, rows, 3), *(_figure(p) for p in plots)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
