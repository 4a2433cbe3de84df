"""The quality tolerance floor of bench compare: a change of 1-2 evaluated items is not a regression
(issue 10, item 1), and the `num_items` each quality metric records for it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from results_factory import make_results, modified

from bench.regression import Tolerances, compare
from bench.results import Metric
from bench.tasks import num_items

ROOT = Path(__file__).resolve().parents[1]


def _with_items(results, n, embedder=None, key=None):
    out = copy.deepcopy(results)
    for m in out["metrics"]:
        if m["kind"] == "quality" and (embedder is None or m["embedder"] == embedder) \
                and (key is None or m["key"] == key):
            m["num_items"] = n
    return out


def _verdict(c, embedder, key):
    (v,) = [v for v in c.verdicts if v.embedder == embedder and v.key == key]
    return v


def test_two_items_of_100_are_unchanged_three_regress():
    base = _with_items(make_results(), 100)  # configured quality_abs_tol: 0.5
    two = modified(base, {("clip", "probe/top1"): 78.0, ("phi3v", "probe/top1"): 86.0})
    c = compare(two, base)
    assert _verdict(c, "clip", "probe/top1").verdict == "unchanged"   # -2 items
    assert _verdict(c, "phi3v", "probe/top1").verdict == "unchanged"  # +2 items
    assert _verdict(c, "clip", "probe/top1").tolerance == "±2 (2 of 100 items)"
    assert c.exit_code == 0
    three = modified(base, {("clip", "probe/top1"): 77.0, ("phi3v", "probe/top1"): 87.0})
    c = compare(three, base)
    assert _verdict(c, "clip", "probe/top1").verdict == "regressed"
    assert _verdict(c, "phi3v", "probe/top1").verdict == "improved"
    assert c.exit_code == 1


def test_without_num_items_the_configured_tolerance_applies():
    base = make_results()  # results written before num_items existed
    c = compare(modified(base, {("clip", "probe/top1"): 79.0}), base)
    v = _verdict(c, "clip", "probe/top1")
    assert v.verdict == "regressed" and v.tolerance == "±0.5"


def test_a_larger_configured_tolerance_wins_over_the_floor():
    base = _with_items(make_results(), 1000)  # floor 0.2 points < configured 0.5
    c = compare(modified(base, {("clip", "probe/top1"): 79.6}), base)
    v = _verdict(c, "clip", "probe/top1")
    assert v.verdict == "unchanged" and v.tolerance == "±0.5"
    c = compare(modified(base, {("clip", "probe/top1"): 79.4}), base)
    assert _verdict(c, "clip", "probe/top1").verdict == "regressed"


def test_per_metric_override_is_floored_too():
    base = _with_items(make_results(), 50)
    tol = Tolerances(quality_abs=0.5, per_metric={"probe/*": 0.1})
    c = compare(modified(base, {("clip", "probe/top1"): 76.0}), base, tol)  # -4 = 2 items of 50
    v = _verdict(c, "clip", "probe/top1")
    assert v.verdict == "unchanged" and v.tolerance == "±4 (2 of 50 items)"


def test_both_sides_must_record_it_and_the_larger_count_is_used():
    plain = make_results()
    base = _with_items(plain, 100)
    # one side only (e.g. an old baseline, or a hand-edited result): the configured tolerance
    for res, b in ((modified(plain, {("clip", "probe/top1"): 78.0}), base),
                   (_with_items(modified(plain, {("clip", "probe/top1"): 78.0}), 100), plain)):
        v = _verdict(compare(res, b), "clip", "probe/top1")
        assert v.verdict == "regressed" and v.tolerance == "±0.5"
    # a result claiming 10 items cannot widen the tolerance to 20 points: 100 is used
    res = _with_items(modified(plain, {("clip", "probe/top1"): 70.0}), 10)
    v = _verdict(compare(res, base), "clip", "probe/top1")
    assert v.verdict == "regressed" and v.tolerance == "±2 (2 of 100 items)"


@pytest.mark.parametrize("bad", [0, -5, True, "100", 1.5, None])
def test_invalid_num_items_are_ignored(bad):
    base = _with_items(make_results(), bad)
    v = _verdict(compare(modified(base, {("clip", "probe/top1"): 79.0}), base), "clip", "probe/top1")
    assert v.verdict == "regressed" and v.tolerance == "±0.5"


def test_speed_and_memory_ignore_num_items():
    base = make_results()
    for m in base["metrics"]:
        m["num_items"] = 2  # a floor of 100 points if it applied
    c = compare(modified(base, {("clip", "speed/images_per_s"): 60.0}), base)
    v = _verdict(c, "clip", "speed/images_per_s")
    assert v.verdict == "regressed" and v.tolerance == "±25%"


def test_quality_items_setting():
    base = _with_items(make_results(), 100)
    res = modified(base, {("clip", "probe/top1"): 77.0})
    assert _verdict(compare(res, base, Tolerances(quality_abs=0.5, quality_items=3)),
                    "clip", "probe/top1").tolerance == "±3 (3 of 100 items)"
    assert _verdict(compare(res, base, Tolerances(quality_abs=0.5, quality_items=0)),
                    "clip", "probe/top1").tolerance == "±0.5"


def test_markdown_and_cli_show_the_effective_tolerance(tmp_path):
    base = _with_items(make_results(), 100)
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "res.json").write_text(json.dumps(modified(base, {("clip", "probe/top1"): 78.0})))
    p = subprocess.run([sys.executable, "-m", "bench", "compare", str(tmp_path / "res.json"),
                        str(tmp_path / "base.json"), "--fail-on", "quality", "--show", "all"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    row = next(line for line in p.stdout.splitlines() if line.startswith("| probe/top1 | clip |"))
    assert "| -2 | ±2 (2 of 100 items) | unchanged |" in row


def test_metric_json_has_num_items_only_when_known():
    m = Metric("clip", "zeroshot", "d", "zeroshot/top1", 50.0, "%")
    assert "num_items" not in m.to_json()
    m.num_items = 40
    assert m.to_json()["num_items"] == 40


def test_num_items_by_metric():
    y = np.array([0] * 10 + [1] * 4 + [2] * 6)  # 20 images, smallest class 4
    assert num_items("probe/top1", y, False) == 20
    assert num_items("top5", y, False) == 20
    # one image of the class with 4 moves its recall by 25 points, the mean of 3 by 25/3 = 100/12
    assert num_items("zeroshot/mean_per_class_recall", y, False) == 12
    ml = np.zeros((20, 4), dtype=int)
    ml[:5, 0] = 1
    ml[:3, 1] = 1
    ml[:, 2] = 1  # class 3 has no positive: left out of mAP
    assert num_items("probe/mAP", ml, True) == 3 * 3  # 3 classes with a positive, fewest positives 3
    assert num_items("probe/mAP", np.zeros((5, 2), dtype=int), True) is None
    assert num_items("probe/best_C", y, False) is None
    assert num_items("probe/top1", np.array([], dtype=int), False) is None
