"""bench compare on bad input (exit 2, one line) and on input it could not check (exit 1, with the reason).

Every case goes through the CLI's main() (as `python -m bench` does) and asserts the exit code and that
stderr is exactly one line naming the problem; one case also runs in a real subprocess.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from results_factory import make_results, modified

from bench.cli import main
from bench.errors import BenchError
from bench.regression import accept_baseline
from bench.results import Metric, check_results, load_results

ROOT = Path(__file__).resolve().parents[1]


def _without(d: dict, path: tuple, key: str) -> dict:
    target = d
    for p in path:
        target = target[p]
    del target[key]
    return d


def _set(d: dict, path: tuple, value) -> dict:
    target = d
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return d


def _probe(value):
    """The results with clip's probe/top1 (metrics[18] in results_factory) set to `value`."""
    return lambda d: modified(d, {("clip", "probe/top1"): value})


# name: (change to the result, extra CLI arguments, words stderr must contain)
BAD_INPUT = {
    "empty metrics list": (lambda d: _set(d, ("metrics",), []), (), "'metrics' is empty"),
    "complete false": (lambda d: _set(d, ("complete",), False), (),
                       "result.json: the run did not finish (complete: false)"),
    "different benchmark": (lambda d: _set(d, ("benchmark",), "coco"), (),
                            "cannot compare benchmark 'coco' ("),
    "NaN value": (_probe(float("nan")), (), "metrics[18] (clip, probe/top1): 'value' must be a finite number or "
                                             "null, got NaN"),
    "Infinity value": (_probe(float("inf")), (), "(clip, probe/top1): 'value' must be a finite number or null, "
                                                 "got Infinity"),
    "-Infinity value": (_probe(float("-inf")), (), "got -Infinity"),
    "string value": (_probe("80"), (), "(clip, probe/top1): 'value' must be a finite number or null, got \"80\""),
    "boolean value": (_probe(True), (), "'value' must be a finite number or null, got true"),
    "metric without embedder": (lambda d: _without(d, ("metrics", 3), "embedder"), (),
                                "metrics[3]: 'embedder' must be a non-empty string, got null"),
    "metric with an unknown kind": (lambda d: _set(d, ("metrics", 3, "kind"), "qualty"), (),
                                    "'kind' must be one of quality, speed, memory, fidelity, got \"qualty\""),
    "metric that is not an object": (lambda d: _set(d, ("metrics", 3), "x"), (),
                                     "metrics[3]: a JSON string, not an object"),
    "metrics as dict": (lambda d: _set(d, ("metrics",), {"a": d["metrics"][0]}), (),
                        "'metrics' must be a list of metric objects, got a JSON object"),
    "schema_version as string": (lambda d: _set(d, ("schema_version",), "1"), (),
                                 "schema_version must be an integer from 1 to 1, got \"1\""),
    "schema_version from the future": (lambda d: _set(d, ("schema_version",), 7), (),
                                       "schema_version 7; this bench reads up to 1: upgrade bench"),
    "embedders as a list": (lambda d: _set(d, ("embedders",), []), (), "'embedders' must be an object"),
    "--quality-abs-tol nan": (None, ("--quality-abs-tol", "nan"),
                              "--quality-abs-tol must be a finite number >= 0, got 'nan'"),
    "--quality-abs-tol inf": (None, ("--quality-abs-tol", "inf"), "--quality-abs-tol must be a finite number"),
    "--speed-rel-tol negative": (None, ("--speed-rel-tol", "-0.1"), "--speed-rel-tol must be a finite number >= 0"),
    "--memory-rel-tol abc": (None, ("--memory-rel-tol", "abc"), "--memory-rel-tol must be a finite number >= 0, "
                                                                "got 'abc'"),
    "config tolerance abc": (lambda d: _set(d, ("config", "regression", "quality_abs_tol"), "abc"), (),
                             "regression.quality_abs_tol must be a finite number >= 0, got 'abc'"),
    "config tolerance NaN": (lambda d: _set(d, ("config", "regression", "speed_rel_tol"), float("nan")), (),
                             "regression.speed_rel_tol must be a finite number >= 0, got 'NaN'"),
    "config per_metric tolerance negative": (
        lambda d: _set(d, ("config", "regression", "per_metric"), {"probe/*": -1}), (),
        "regression.per_metric['probe/*'] must be a finite number >= 0, got '-1'"),
}


def _run(capsys, *argv) -> tuple[int, str, list[str]]:
    code = main(["compare", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    change, args, words = BAD_INPUT[case]
    base = make_results()
    (tmp_path / "base.json").write_text(json.dumps(base))
    result = change(copy.deepcopy(base)) if change else base
    (tmp_path / "result.json").write_text(json.dumps(result))  # Python writes NaN/Infinity literals
    code, out, err = _run(capsys, tmp_path / "result.json", tmp_path / "base.json", *args)
    assert code == 2, (out, err)
    assert len(err) == 1 and err[0].startswith("bench: error: ") and words in err[0], err
    assert out == ""  # no verdict table for input that was not compared


def test_bad_baseline_is_bad_input_too(tmp_path, capsys):
    base = make_results()
    (tmp_path / "result.json").write_text(json.dumps(base))
    (tmp_path / "base.json").write_text(json.dumps({**base, "complete": False}))
    code, _, err = _run(capsys, tmp_path / "result.json", tmp_path / "base.json")
    assert code == 2 and err == [f"bench: error: {tmp_path / 'base.json'}: the run did not finish (complete: false); "
                                 "use a finished run (rerun it with bench run)"]
    (tmp_path / "base.json").write_text(json.dumps(modified(base, {("phi3v", "probe/top1"): float("nan")})))
    code, _, err = _run(capsys, tmp_path / "result.json", tmp_path / "base.json")
    assert code == 2 and len(err) == 1 and "base.json is not a valid bench results file: metrics[20] (phi3v, " \
                                           "probe/top1): 'value' must be a finite number or null, got NaN" in err[0]


def test_different_benchmark_names_both(tmp_path, capsys):
    base = make_results()
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "coco.json").write_text(json.dumps({**base, "benchmark": "coco"}))
    code, _, err = _run(capsys, tmp_path / "coco.json", tmp_path / "base.json")
    assert code == 2 and err == [f"bench: error: cannot compare benchmark 'coco' ({tmp_path / 'coco.json'}) with "
                                 f"benchmark 'demo' ({tmp_path / 'base.json'}): use the baseline of the same benchmark"]


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    base = make_results()
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "r.json").write_text(json.dumps(modified(base, {("clip", "probe/top1"): "80"})))
    for args in ([tmp_path / "r.json", tmp_path / "base.json"],
                 [tmp_path / "base.json", tmp_path / "base.json", "--quality-abs-tol", "abc"]):
        p = subprocess.run([sys.executable, "-m", "bench", "compare", *map(str, args)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr


def test_all_incomparable_fails_with_the_reason(tmp_path, capsys):
    base = make_results()
    res = copy.deepcopy(base)
    for entry in res["embedders"].values():
        entry["fingerprint"] = "9" * 16  # every model changed: no quality value measures the same thing
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "result.json").write_text(json.dumps(res))
    code, out, err = _run(capsys, tmp_path / "result.json", tmp_path / "base.json", "--fail-on", "quality")
    with_value = sum(m["kind"] == "quality" and m["value"] is not None for m in base["metrics"])
    assert with_value == 20  # 12 retrieval (phi3v has none), 6 probe, 2 zero-shot
    assert code == 1
    assert err == [f"bench: compare failed: no quality metric could be compared: {with_value} incomparable "
                   "(model/preprocessing fingerprint differs)"]
    assert out.startswith("**bench compare: FAIL**") and "- **fails:** no quality metric could be compared" in out
    assert "| probe/top1 | clip |" in out  # the verdict table is still there


def test_missing_quality_metric_fails(tmp_path, capsys):
    base = make_results()
    res = copy.deepcopy(base)
    res["metrics"] = [m for m in res["metrics"] if (m["embedder"], m["key"]) != ("clip", "probe/top1")]
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "result.json").write_text(json.dumps(res))
    code, out, err = _run(capsys, tmp_path / "result.json", tmp_path / "base.json", "--fail-on", "quality")
    assert code == 1
    assert err == ["bench: compare failed: 1 metric(s) with a value in the baseline have none in the result "
                   "(clip probe/top1 on labels); accept a new baseline if that is deliberate"]
    assert "| probe/top1 | clip | labels | 80% | n/a |  |  | **missing** |" in out
    # The same file with quality left out of --fail-on: the lost metric is reported, not failed on.
    code, out, err = _run(capsys, tmp_path / "result.json", tmp_path / "base.json", "--fail-on", "speed,memory")
    assert code == 0 and err == [] and "| probe/top1 | clip | labels | 80% | n/a |  |  | missing |" in out


def test_kind_with_nothing_compared_fails_but_absent_kinds_do_not(tmp_path, capsys):
    base = make_results()
    other_hw = copy.deepcopy(base)
    other_hw["environment"]["hardware_fingerprint"] = "hw" + "f" * 14
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "hw.json").write_text(json.dumps(other_hw))
    code, _, err = _run(capsys, tmp_path / "hw.json", tmp_path / "base.json", "--fail-on", "speed")
    assert code == 1 and err == ["bench: compare failed: no speed metric could be compared: 6 incomparable "
                                 "(different hardware)"]
    assert _run(capsys, tmp_path / "hw.json", tmp_path / "base.json", "--fail-on", "quality")[0] == 0
    # A kind neither file has is skipped while another kind was compared; alone, it fails.
    quality_only = {**base, "metrics": [m for m in base["metrics"] if m["kind"] == "quality"]}
    (tmp_path / "q.json").write_text(json.dumps(quality_only))
    code, _, err = _run(capsys, tmp_path / "q.json", tmp_path / "q.json")
    assert code == 0 and err == []
    code, _, err = _run(capsys, tmp_path / "q.json", tmp_path / "q.json", "--fail-on", "speed,memory")
    assert code == 1 and err == ["bench: compare failed: no speed or memory metric could be compared: neither file "
                                 "has one with a value"]


def test_committed_baseline_path_of_make_regress(tmp_path, capsys):
    """`make regress` compares a demo run with reports/baselines/demo.json: a copy passes, a corrupted copy is
    bad input (exit 2), not a regression."""
    demo = ROOT / "reports" / "baselines" / "demo.json"
    assert check_results(json.loads(demo.read_text())) == ""
    shutil.copy(demo, tmp_path / "run.json")
    code, out, err = _run(capsys, tmp_path / "run.json", demo, "--fail-on", "quality")
    assert code == 0 and err == [] and out.startswith("**bench compare: OK**")
    text = (tmp_path / "run.json").read_text()
    (tmp_path / "run.json").write_text(text.replace('"value": 2.0,', '"value": NaN,', 1))
    code, out, err = _run(capsys, tmp_path / "run.json", demo, "--fail-on", "quality")
    assert code == 2 and len(err) == 1 and "'value' must be a finite number or null, got NaN" in err[0]


def test_report_and_baseline_accept_check_the_file_too(tmp_path, capsys):
    base = make_results()
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({**base, "metrics": {}}))
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "'metrics' must be a list of metric objects" in err[0]
    (run / "results.json").write_text(json.dumps({**base, "complete": False}))
    assert main(["baseline", "accept", str(run), "--to", str(tmp_path / "b.json")]) == 2
    assert capsys.readouterr().err.splitlines() == [f"bench: error: {run / 'results.json'}: the run did not finish "
                                                    "(complete: false); use a finished run (rerun it with bench run)"]
    assert not (tmp_path / "b.json").exists()
    # A report of an unfinished run is still allowed (it says so in the report).
    load_results(run)


def test_baseline_accept_refuses_another_benchmarks_baseline(tmp_path):
    base = make_results()
    (tmp_path / "coco.json").write_text(json.dumps({**base, "benchmark": "coco"}))
    (tmp_path / "demo.json").write_text(json.dumps(base))
    with pytest.raises(BenchError, match="demo.json is the baseline of benchmark 'demo', not 'coco'"):
        accept_baseline(tmp_path / "coco.json", tmp_path / "demo.json")
    assert json.loads((tmp_path / "demo.json").read_text()) == base  # untouched


def test_a_run_never_writes_what_load_results_refuses():
    m = Metric("clip", "speed", "caps", "speed/images_per_s", float("inf"), "img/s", True, "speed")
    assert m.to_json()["value"] is None and m.to_json()["na_reason"] == "not a finite number (inf)"
    nan = Metric("clip", "retrieval", "caps", "retrieval/i2t_recall@1", float("nan"))
    assert nan.to_json()["value"] is None and nan.to_json()["na_reason"] == "not a finite number (nan)"
    assert Metric("clip", "retrieval", "caps", "retrieval/i2t_recall@1", 3).to_json()["value"] == 3.0
