"""Reports: self-contained HTML with every table and plot, Markdown, CSV, history, re-rendering without work."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from results_factory import make_results, modified

from bench.report import render_history, render_run
from bench.report.tables import build_tables, format_value

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    results = make_results()
    paths = render_run(results, out)
    return results, paths


def test_best_value_per_row_respects_direction_and_ties():
    results = modified(make_results(), {("phi3v-lm", "probe/mean_per_class_recall"): 83.0})
    tables = build_tables(results)
    rows = {(s.dataset, r.key): r for s in tables.sections for r in s.rows}
    probe = rows[("labels", "probe/top1")]
    assert [lb for lb, c in probe.cells.items() if c.best] == ["phi3v"]                 # 84 > 82 > 80
    tie = rows[("labels", "probe/mean_per_class_recall")]
    assert sorted(lb for lb, c in tie.cells.items() if c.best) == ["phi3v", "phi3v-lm"]  # 83 == 83
    latency = rows[("caps", "speed/batch_latency_p50_ms")]
    assert [lb for lb, c in latency.cells.items() if c.best] == ["clip"]                 # lower is better
    na = rows[("caps", "retrieval/i2t_recall@1")].cells["phi3v"]
    assert na.text == "n/a" and not na.best and tables.notes[na.note - 1].startswith("'phi3v' embeds images only")
    assert [s.task for s in tables.sections] == ["retrieval", "linear_probe", "zeroshot", "speed"]
    # A metric one embedder never recorded: a dash in every column, never best, no footnote.
    results["metrics"].append({**results["metrics"][0], "key": "speed/texts_per_s", "task": "speed",
                               "value": 5.0, "unit": "text/s"})
    row = next(r for s in build_tables(results).sections for r in s.rows if r.key == "speed/texts_per_s")
    assert [(lb, c.text, c.best, c.note) for lb, c in row.cells.items()] == [
        ("clip", "5.00", False, None), ("phi3v", "—", False, None), ("phi3v-lm", "—", False, None)]


def test_format_value():
    assert format_value(12.3456, "%") == "12.35"
    assert format_value(18765.9, "img/s") == "18,766 img/s"
    assert format_value(0.000123, "s", with_unit=False) == "0.000123"
    assert format_value(None, "%") == "n/a" and format_value(float("nan")) == "n/a"


def test_html_is_self_contained_and_complete(rendered):
    results, paths = rendered
    html = paths["html"].read_text()
    # No network resources: no src/href other than inline data, no @import or url() in the CSS.
    for attr in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html):
        assert attr.startswith("data:"), attr
    assert "@import" not in html and "url(" not in html and "http://" not in html and "https://" not in html
    for m in results["metrics"]:
        assert m["key"] in html
    for label in results["embedders"]:
        assert f"<th>{label}</th>" in html
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)"', html)
    alts = [alt for _, alt in images]
    # recall curves (1 dataset), accuracy bars, speed vs memory, per-class probe
    assert len(images) == 4, alts
    assert any(a.startswith("recall@k curves on caps") for a in alts)
    assert any(a.startswith("bar chart of") for a in alts)
    assert any(a.startswith("scatter of end-to-end images per second") for a in alts)
    assert any(a.startswith("per-class accuracy of the linear probe on labels") for a in alts)
    import base64

    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data, _ in images)
    assert "WARNING" in html and "random and tiny" in html
    for fact in ("2026-11-28T10:00:00+00:00", "a" * 12, "Test CPU", "torch 2.13.0", "hw0000000000000a",
                 "d" * 16):
        assert fact in html, fact
    assert 'class="best"' in html and 'class="na"' in html


def test_markdown_tables_and_warning(rendered):
    results, paths = rendered
    md = paths["markdown"].read_text()
    assert "**WARNING: These weights are random and tiny" in md
    assert "| metric | clip | phi3v | phi3v-lm |" in md
    assert "| probe/top1 (%) ↑ | 80.00 | **84.00** | 82.00 |" in md
    assert "| speed/batch_latency_p50_ms (ms) ↓ | **15.00** | 300.0 | 450.0 |" in md
    assert "n/a [1]" in md and "[1] 'phi3v' embeds images only" in md
    lines = md.splitlines()
    assert lines[2].startswith("> **WARNING")  # the first thing after the title
    facts = next(line for line in lines if line.startswith("**date (UTC)**"))
    assert "2026-11-28T10:00:00+00:00" in facts and "a" * 12 in facts and "Test CPU" in facts
    assert "caps 100 images/500 captions" in facts and "labels_train 120 images" in facts
    real = render_run(make_results(synthetic=False), paths["markdown"].parent / "real")
    assert "WARNING" not in real["markdown"].read_text()


def test_csv_round_trips(rendered):
    results, paths = rendered
    df = pd.read_csv(paths["csv"])
    assert len(df) == len(results["metrics"])
    row = df[(df.embedder == "clip") & (df.key == "probe/top1")].iloc[0]
    assert row.value == 80.0 and row.unit == "%" and bool(row.higher_is_better)
    assert df[(df.embedder == "phi3v") & (df.key == "zeroshot/top1")].value.isna().all()


def test_history_over_three_runs(tmp_path):
    runs = [modified(make_results(created=f"2026-11-2{d}T10:00:00+00:00", commit=c * 40),
                     {("clip", "probe/top1"): v})
            for d, c, v in ((7, "c", 81.0), (5, "a", 79.0), (6, "b", 80.0))]  # given out of order
    paths = render_history(runs, tmp_path)
    md = paths["markdown"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| embedder"))
    assert header.index("aaaaaaa") < header.index("bbbbbbb") < header.index("ccccccc")  # ordered by date
    assert "| clip | labels | probe/top1 | 79.00 | 80.00 | 81.00 |" in md
    html = paths["html"].read_text()
    assert html.count('<img src="data:image/png;base64,') >= 1
    other = make_results()
    other["benchmark"] = "coco"
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="one benchmark"):
        render_history([runs[0], other], tmp_path)


def test_bench_report_rerenders_without_embedding_work(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(make_results()))
    code = ("import sys; from bench.cli import main; rc = main(['report', sys.argv[1]]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH'); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, str(run)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("NO_TORCH")
    assert f"html: {run / 'report.html'}" in out.stdout
    for name in ("report.md", "report.html", "metrics.csv"):
        assert (run / name).is_file()
    history = subprocess.run([sys.executable, "-m", "bench", "report", str(run), str(run / "results.json"),
                              "--out", str(tmp_path / "hist")], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert history.returncode == 0, history.stderr
    assert (tmp_path / "hist" / "history.html").is_file()
