"""bench compare: verdicts, tolerances, fingerprints, exit codes, baseline acceptance."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from results_factory import make_results, modified

from bench.errors import BenchError
from bench.regression import Tolerances, accept_baseline, compare

ROOT = Path(__file__).resolve().parents[1]


def verdict(comparison, embedder, key, dataset=None):
    found = [v for v in comparison.verdicts if v.embedder == embedder and v.key == key
             and (dataset is None or v.dataset == dataset)]
    assert len(found) == 1, found
    return found[0]


def test_identical_results_are_unchanged_and_exit_0():
    base = make_results()
    c = compare(copy.deepcopy(base), base)
    assert {v.verdict for v in c.verdicts} == {"unchanged"}
    assert c.exit_code == 0
    assert c.count("unchanged") == len(base["metrics"])


def test_quality_noise_inside_tolerance_is_unchanged_beyond_is_judged():
    base = make_results()  # quality_abs_tol 0.5 from the config section
    res = modified(base, {("clip", "probe/top1"): 80.4, ("phi3v", "probe/top1"): 83.6,
                          ("phi3v-lm", "probe/top1"): 82.7, ("clip", "retrieval/i2t_recall@1"): 29.0})
    c = compare(res, base)
    assert verdict(c, "clip", "probe/top1").verdict == "unchanged"       # +0.4 pp
    assert verdict(c, "phi3v", "probe/top1").verdict == "unchanged"      # -0.4 pp
    assert verdict(c, "phi3v-lm", "probe/top1").verdict == "improved"    # +0.7 pp
    v = verdict(c, "clip", "retrieval/i2t_recall@1")
    assert v.verdict == "regressed" and v.delta == "-1"
    assert c.exit_code == 1
    assert c.failing == [v]


def test_exactly_the_tolerance_is_unchanged():
    base = make_results()
    c = compare(modified(base, {("clip", "probe/top1"): 79.5}), base)
    assert verdict(c, "clip", "probe/top1").verdict == "unchanged"


def test_lower_is_better_metrics_and_relative_tolerance():
    base = make_results()  # speed_rel_tol 0.25, memory_rel_tol 0.2
    res = modified(base, {("clip", "speed/batch_latency_p50_ms"): 15.0 * 1.3,   # 30% slower: regressed
                          ("phi3v", "speed/batch_latency_p50_ms"): 300.0 * 0.7,  # 30% faster: improved
                          ("clip", "memory/peak_rss_mib"): 800.0 * 1.1,          # +10%: noise
                          ("phi3v-lm", "memory/peak_rss_mib"): 9000.0 * 1.25,    # +25%: regressed
                          ("clip", "speed/images_per_s"): 120.0 * 0.8})          # -20%: noise
    c = compare(res, base)
    assert verdict(c, "clip", "speed/batch_latency_p50_ms").verdict == "regressed"
    assert verdict(c, "phi3v", "speed/batch_latency_p50_ms").verdict == "improved"
    assert verdict(c, "clip", "memory/peak_rss_mib").verdict == "unchanged"
    assert verdict(c, "phi3v-lm", "memory/peak_rss_mib").verdict == "regressed"
    assert verdict(c, "clip", "speed/images_per_s").verdict == "unchanged"
    assert verdict(c, "clip", "speed/batch_latency_p50_ms").delta == "+30.0%"


def test_fail_on_selects_the_kinds_that_fail():
    base = make_results()
    res = modified(base, {("clip", "speed/images_per_s"): 10.0})
    assert compare(res, base, fail_on=("quality",)).exit_code == 0
    assert compare(res, base, fail_on=("quality",)).count("regressed") == 1  # still reported
    assert compare(res, base, fail_on=("quality",)).to_markdown().startswith(
        "**bench compare: OK (regressions in speed only, which do not fail)** — 1 regressed,")
    assert compare(res, base, fail_on=("speed",)).exit_code == 1
    with pytest.raises(BenchError, match="unknown kind 'sped'"):
        compare(res, base, fail_on=("sped",))


def test_different_hardware_makes_speed_incomparable_but_quality_still_compared():
    base = make_results(hardware="hw0000000000000a")
    res = modified(make_results(hardware="hw0000000000000b"),
                   {("clip", "speed/images_per_s"): 1.0, ("clip", "probe/top1"): 70.0})
    c = compare(res, base)
    v = verdict(c, "clip", "speed/images_per_s")
    assert v.verdict == "incomparable" and v.reason == "different hardware"
    assert verdict(c, "clip", "memory/peak_rss_mib").verdict == "incomparable"
    assert verdict(c, "clip", "probe/top1").verdict == "regressed"
    assert any("hardware differs" in n for n in c.notes)


def test_fingerprint_mismatch_is_incomparable_never_regressed():
    base = make_results()
    res = modified(base, {("clip", "probe/top1"): 10.0, ("phi3v-lm", "retrieval/t2i_recall@1"): 1.0})
    res["embedders"]["clip"]["fingerprint"] = "0123456789abcdef"      # another model or preprocessing
    res["datasets"]["caps"]["fingerprint"] = "fedcba9876543210"       # other data
    c = compare(res, base, fail_on=("quality",))
    assert verdict(c, "clip", "probe/top1").verdict == "incomparable"
    assert verdict(c, "clip", "probe/top1").reason == "model/preprocessing fingerprint differs"
    v = verdict(c, "phi3v-lm", "retrieval/t2i_recall@1")
    assert v.verdict == "incomparable" and v.reason == "data fingerprint differs"
    assert verdict(c, "phi3v-lm", "probe/top1").verdict == "unchanged"  # other data set: still compared
    assert c.count("regressed") == 0 and c.exit_code == 0
    # Every speed/memory metric was measured on `caps` (other data) or by clip (other model): with speed
    # and memory in fail_on nothing of them was checked, which fails rather than passes.
    c = compare(res, base)
    assert c.count("regressed") == 0 and c.exit_code == 1
    assert c.unchecked == ["no speed metric could be compared: 4 incomparable (data fingerprint differs), "
                           "2 incomparable (model/preprocessing fingerprint differs)",
                           "no memory metric could be compared: 2 incomparable (data fingerprint differs), "
                           "1 incomparable (model/preprocessing fingerprint differs)"]


def test_other_benchmark_is_bad_input():
    base = make_results()
    res = modified(base, {("clip", "probe/top1"): 10.0})
    res["benchmark"] = "coco"
    with pytest.raises(BenchError, match="cannot compare benchmark 'coco' .* with benchmark 'demo'"):
        compare(res, base)


def test_changed_task_settings_are_incomparable():
    base = make_results()
    res = modified(base, {("clip", "retrieval/i2t_recall@1"): 10.0})
    res["config"]["tasks"][0]["ks"] = [1, 5, 10, 50]
    c = compare(res, base)
    assert verdict(c, "clip", "retrieval/i2t_recall@1").reason == "task settings differ"
    assert verdict(c, "clip", "probe/top1").verdict == "unchanged"


def test_new_missing_and_na_metrics():
    base = make_results()
    res = copy.deepcopy(base)
    res["metrics"] = [m for m in res["metrics"] if m["key"] != "zeroshot/top1" or m["embedder"] != "clip"]
    res["metrics"].append({**res["metrics"][0], "key": "retrieval/i2t_recall@50", "value": 90.0})
    res = modified(res, {("phi3v-lm", "probe/top1"): None, ("clip", "probe/top1"): None})
    res["metrics"] = [m for m in res["metrics"] if m["embedder"] != "phi3v" or m["key"] != "zeroshot/top1"]
    res["embedders"]["clip"]["fingerprint"] = "0123456789abcdef"
    c = compare(res, base)
    assert verdict(c, "clip", "zeroshot/top1").verdict == "missing"
    assert verdict(c, "clip", "retrieval/i2t_recall@50").verdict == "new"
    lost = verdict(c, "phi3v-lm", "probe/top1")  # same model and data, value gone: the run stopped computing it
    assert lost.verdict == "missing" and lost.reason == "n/a in the result"
    v = verdict(c, "clip", "probe/top1")  # n/a, but another model anyway
    assert v.verdict == "incomparable" and v.reason == "n/a on one side"
    assert verdict(c, "phi3v", "zeroshot/top1").verdict == "missing"  # n/a in the baseline: nothing lost
    assert verdict(c, "phi3v-lm", "zeroshot/top1").verdict == "unchanged"
    # Lost values of a failing kind fail; the n/a-in-the-baseline one does not.
    assert c.failing == [lost, verdict(c, "clip", "zeroshot/top1")] and c.exit_code == 1
    assert c.reasons == ["2 metric(s) with a value in the baseline have none in the result (phi3v-lm probe/top1 on "
                         "labels, clip zeroshot/top1 on labels); accept a new baseline if that is deliberate"]
    assert compare(res, base, fail_on=("speed", "memory")).exit_code == 0


def test_per_metric_tolerance_overrides_with_globs():
    base = make_results()
    res = modified(base, {("clip", "probe/top1"): 78.0, ("clip", "retrieval/i2t_recall@1"): 28.0})
    tol = Tolerances.from_config({"quality_abs_tol": 0.5, "per_metric": {"probe/*": 3.0}})
    c = compare(res, base, tol)
    assert verdict(c, "clip", "probe/top1").verdict == "unchanged"
    assert verdict(c, "clip", "retrieval/i2t_recall@1").verdict == "regressed"
    assert Tolerances.from_config(None) == Tolerances()


def test_degraded_embeddings_are_caught(tmp_path):
    """Quality values of a run whose embeddings were corrupted drop by many points: caught."""
    base = make_results()
    drops = {(m["embedder"], m["key"]): m["value"] - 10.0 for m in base["metrics"]
             if m["kind"] == "quality" and m["value"] is not None}
    c = compare(modified(base, drops), base, fail_on=("quality",))
    assert c.exit_code == 1
    assert c.count("regressed") == len(drops)
    md = c.to_markdown()
    assert md.startswith("**bench compare: REGRESSION**")
    assert f"{len(drops)} regressed" in md and "| probe/top1 | clip | labels | 80% | 70% | -10 |" in md


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_cli_exit_codes_and_markdown_output(tmp_path):
    base = make_results()
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "same.json").write_text(json.dumps(base))
    (tmp_path / "worse.json").write_text(json.dumps(modified(base, {("clip", "probe/top1"): 60.0})))
    ok = _cli("compare", tmp_path / "same.json", tmp_path / "base.json")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("**bench compare: OK**")
    bad = _cli("compare", tmp_path / "worse.json", tmp_path / "base.json", "--output", tmp_path / "pr.md")
    assert bad.returncode == 1
    assert "**regressed**" in bad.stdout and (tmp_path / "pr.md").read_text() == bad.stdout
    loose = _cli("compare", tmp_path / "worse.json", tmp_path / "base.json", "--quality-abs-tol", "25")
    assert loose.returncode == 0
    missing = _cli("compare", tmp_path / "nope.json", tmp_path / "base.json")
    assert missing.returncode == 2 and "no results file" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "junk.json").write_text("{not json")
    junk = _cli("compare", tmp_path / "junk.json", tmp_path / "base.json")
    assert junk.returncode == 2 and "cannot read results" in junk.stderr
    kinds = _cli("compare", tmp_path / "same.json", tmp_path / "base.json", "--fail-on", "quality,sped")
    assert kinds.returncode == 2 and "unknown kind 'sped'" in kinds.stderr


def test_baseline_accept_writes_atomically_and_reports_changes(tmp_path):
    base = make_results()
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(modified(base, {("clip", "probe/top1"): 90.0})))
    target = tmp_path / "baselines" / "demo.json"
    assert accept_baseline(run, target) == "new baseline"
    assert json.loads(target.read_text())["metrics"][0]["embedder"] == "clip"
    assert "_path" not in json.loads(target.read_text())
    (run / "results.json").write_text(json.dumps(base))
    summary = accept_baseline(run, target)
    assert "1 regressed" in summary  # 90 -> 80 against the previous baseline
    assert json.loads(target.read_text()) == base
    unfinished = {**base, "complete": False}
    (run / "results.json").write_text(json.dumps(unfinished))
    with pytest.raises(BenchError, match="the run did not finish"):
        accept_baseline(run, target)


def test_cli_baseline_accept_default_path(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(make_results()))
    out = _cli("baseline", "accept", tmp_path / "r.json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "reports" / "baselines" / "demo.json").is_file()
    assert "baseline: reports/baselines/demo.json (new baseline)" in out.stdout
