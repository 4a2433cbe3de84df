"""report.md: the side-by-side tables for pull requests and terminals."""

from __future__ import annotations

from typing import Any

from bench.report.finetune import finetune_md, synthetic_warning
from bench.results import RunResult, as_result
from bench.report.tables import (NOT_MEASURED, Tables, build_tables, dataset_rows,
                                 embedder_rows, format_value, headline, protocols, run_facts,
                                 statistics_legend)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


def metric_tables_md(tables: Tables) -> list[str]:
    """One table per task/dataset section: metric rows, embedder columns, best in bold, n/a footnoted."""
    lines: list[str] = []
    for section in tables.sections:
        lines += [f"### {section.title}", ""]
        body = []
        for row in section.rows:
            arrow = "↑" if row.higher_is_better else "↓"
            unit = f" ({row.unit})" if row.unit else ""
            cells = []
            for label in tables.embedders:
                c = row.cells[label]
                if c.note is not None:
                    cells.append(f"n/a [{c.note}]")
                else:
                    cells.append(f"**{c.text}**{c.mark}" if c.best else c.text)
            chance = [format_value(row.chance, row.unit, with_unit=False) if row.chance is not None
                      else NOT_MEASURED] if section.has_chance else []
            body.append([f"{row.key}{unit} {arrow}", *cells, *chance])
        header = ["metric", *tables.embedders, *(["chance"] if section.has_chance else [])]
        lines += _md_table(header, body) + [""]
    if tables.notes:
        lines += ["n/a:", ""] + [f"[{i}] {text}" for i, text in enumerate(tables.notes, 1)] + [""]
    return lines


def render_markdown(results: RunResult | dict[str, Any]) -> str:
    results = as_result(results)
    tables = build_tables(results)
    lines = [f"# bench report: {results.benchmark or '?'}", ""]
    if results.synthetic:
        lines += [f"> **WARNING: {synthetic_warning(results)}**", ""]
    lines += [" · ".join(f"**{k}**: {v}" for k, v in headline(results)), ""]
    if not results.complete:
        lines += ["> **This run did not finish: the tables hold the embedders completed so far.**"
                  + (f" Error: {results.error}" if results.error else ""), ""]
    lines += [f"Best value per row in **bold** (↑ higher is better, ↓ lower is better; {NOT_MEASURED} not measured).",
              ""]
    legend = statistics_legend(results)
    if legend:
        lines += [legend, ""]
    lines += metric_tables_md(tables)
    lines += finetune_md(results, _md_table)
    lines += ["## Run", ""] + _md_table(["", ""], [[k, v] for k, v in run_facts(results)]) + [""]
    lines += ["## Embedders", ""]
    lines += _md_table(["embedder", "type", "model", "settings", "weights", "fingerprint"], embedder_rows(results))
    lines += ["", "## Datasets", ""]
    lines += _md_table(["dataset", "type", "images", "captions", "classes", "fingerprint"], dataset_rows(results))
    prot = protocols(results)
    if prot:
        lines += ["", "## Protocols", ""] + [f"- **{t}**: {p}" for t, p in prot]
    for note in results.notes:
        lines += ["", f"- {note}"]
    return "\n".join(lines).rstrip() + "\n"
