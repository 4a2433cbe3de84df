"""The perf scripts speak bench's language: their figures (benchmarks._common.report rows) become a
results.json that bench's loader accepts, `bench report` renders and `bench compare` judges. Tiny inputs:
no perf script runs here, only the figures they print (names and targets as the scripts write them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.results import load_results
from benchmarks import _common, perf_results

# (script, name, value, target, ok) as the scripts report them.
FIGURES = [
    ("bench_harness.py", "harness_overhead bench/bare images/s", 0.93, ">= 0.9", True),
    ("bench_cache.py", "cache: demo second run / first run", 0.25, "<= 0.10", False),
    ("bench_metrics.py", "retrieval recall@k 5000x25000x1024 (s, median of 1)", 1.287, "< 3", True),
    ("bench_loading.py", "phi3v loading: peak RSS rise / vision tensors (float32)", 1.2, "<= 1.5", True),
    ("bench_phi3v_lm.py", "phi3v-lm s/image, 32 layers (scaled)", 7.5, "(info)", True),
    ("bench_phi3v_lm.py", "phi3v-lm peak RSS MiB, 32 layers (scaled)", 9000.0, "(info)", True),
    ("bench_stats.py", "per-query record .npz, one retrieval task (KB)", 300.0, "< 1024", True),
]


@pytest.fixture
def rows(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_common, "WORK", tmp_path / "perf")
    monkeypatch.setattr(_common, "RESULTS", tmp_path / "perf" / "results.jsonl")
    monkeypatch.setenv("BENCH_PERF_QUICK", "1")
    for script, name, value, target, ok in FIGURES:
        monkeypatch.setenv("BENCH_PERF_SCRIPT", script)
        _common.report(name, value, target, ok, "detail text")
    assert "[MISSED] cache: demo second run / first run: 0.250 (target <= 0.10)" in capsys.readouterr().out
    return perf_results.read_rows(_common.RESULTS)


def test_facts_of_each_figure():
    got = {name: perf_results.facts(name, target) for _, name, _, target, _ in FIGURES}
    assert [(f["unit"], f["higher_is_better"], f["kind"]) for f in got.values()] == [
        ("x", True, "speed"), ("x", False, "speed"), ("s", False, "speed"), ("x", False, "memory"),
        ("s", False, "speed"), ("MiB", False, "memory"), ("KB", False, "memory")]


def test_results_json_loads_renders_and_compares(rows, tmp_path):
    assert len(rows) == len(FIGURES)
    run = tmp_path / "run"
    assert perf_results.main(["--from", str(_common.RESULTS), "--out", str(run)]) == 0
    data = load_results(run).to_json()
    assert data["benchmark"] == "perf" and data["synthetic"] is True and data["config"]["quick"] is True
    by_key = {m["key"]: m for m in data["metrics"]}
    m = by_key["cache/cache: demo second run / first run (quick)"]
    assert (m["embedder"], m["task"], m["dataset"], m["value"]) == ("perf", "cache", "-", 0.25)
    assert (m["unit"], m["higher_is_better"], m["kind"]) == ("x", False, "speed")
    assert m["protocol"] == "target <= 0.10: MISSED; detail text"
    assert by_key["loading/phi3v loading: peak RSS rise / vision tensors (float32) (quick)"]["kind"] == "memory"
    assert data["details"]["perf"]["harness/-"]["harness_overhead bench/bare images/s"]["target"] == ">= 0.9"
    assert data["environment"]["hardware_fingerprint"]

    out = subprocess.run([sys.executable, "-m", "bench", "report", str(run)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    md = (run / "report.md").read_text()
    assert "harness_overhead bench/bare images/s" in md and "0.25" in md
    csv = (run / "metrics.csv").read_text().splitlines()
    assert len(csv) == 1 + len(FIGURES)

    # Tracked: the same figures compare clean against themselves; a slower harness is a regression.
    same = subprocess.run([sys.executable, "-m", "bench", "compare", str(run), str(run)],
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    slower = tmp_path / "slower"
    slower.mkdir()
    data = json.loads((run / "results.json").read_text())
    for metric in data["metrics"]:
        if metric["task"] == "harness":
            metric["value"] = 0.5
    (slower / "results.json").write_text(json.dumps(data))
    worse = subprocess.run([sys.executable, "-m", "bench", "compare", str(slower), str(run)],
                           capture_output=True, text=True)
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "harness_overhead" in worse.stdout


def test_run_all_lists_its_scripts_as_modules():
    out = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--list"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "harness" in out.stdout and "phi3v_lm" in out.stdout
