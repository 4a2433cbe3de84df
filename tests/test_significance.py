"""Wiring of the statistics (issue 15): intervals and chance on the metric records, paired marks,
the per-query file beside results.json, and the paired rule of `bench compare`. Hand-made records
with known answers (no models: fast)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import significance
from bench.metrics.records import classification_record, retrieval_record
from bench.metrics.retrieval import RetrievalRanks
from bench.regression import Tolerances, compare
from bench.results import Metric, as_result
from tests.results_factory import make_results

ROOT = Path(__file__).resolve().parents[1]
STATS = {"resamples": 1000, "level": 0.95, "seed": 0}


def _ranks(t2i_ranks: np.ndarray, n_images: int) -> RetrievalRanks:
    """One caption per image (caption j owns image j): i2t ranks equal t2i ranks here."""
    owner = np.arange(n_images, dtype=np.int32)
    r = np.asarray(t2i_ranks, dtype=np.int32)
    return RetrievalRanks(owner, r.copy(), r.copy(), r.copy())


def _recall_metric(label: str, ranks: RetrievalRanks, k: int = 1, direction: str = "t2i") -> Metric:
    value = 100.0 * float(np.mean(np.asarray(ranks.t2i) < k))
    return Metric(label, "retrieval", "caps", f"retrieval/{direction}_recall@{k}", value, "%", True,
                  "quality", num_items=len(ranks.t2i))


def test_intervals_contain_the_estimate_and_chance_is_exact():
    rng = np.random.default_rng(0)
    n = 200
    ranks = _ranks(rng.integers(0, 20, n), n)
    metrics = [_recall_metric("a", ranks, k) for k in (1, 5)]
    metrics.append(Metric("a", "retrieval", "caps", "retrieval/t2i_median_rank",
                          float(np.median(np.asarray(ranks.t2i) + 1)), "rank", False, "quality"))
    significance.annotate(metrics, {("a", "retrieval", "caps"): retrieval_record(ranks)}, STATS)
    for m in metrics:
        assert m.ci_low <= m.value <= m.ci_high and m.ci_low < m.ci_high, m
    # recall@1 of a 200-query set near 5%: the binomial standard error is ~1.5 points, so the 95% interval
    # is ~6 points wide
    width = metrics[0].ci_high - metrics[0].ci_low
    assert 3.0 < width < 10.0
    # chance of t2i recall@k with one correct image among n: k / n (percent)
    assert metrics[0].chance == pytest.approx(100.0 / n)
    assert metrics[1].chance == pytest.approx(500.0 / n)
    assert metrics[2].chance == pytest.approx(n / 2, abs=1)


def test_classification_chance_and_interval():
    labels = np.arange(100) % 4
    rank = np.where(np.arange(100) % 2 == 0, 0, 1)  # half right at top-1, all right at top-2
    rec = classification_record(rank, labels, labels, 4)
    m = Metric("a", "zeroshot", "shapes", "zeroshot/top1", 50.0, "%", True, "quality")
    significance.annotate([m], {("a", "zeroshot", "shapes"): rec}, STATS)
    assert m.chance == pytest.approx(25.0)
    # binomial: 50% of 100, standard error 5 points -> a 95% interval of about +-10
    assert 38 < m.ci_low < 45 and 55 < m.ci_high < 62


def _pair(better_by: int, n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 3, n)  # about 1/3 at rank 0
    b = a.copy()
    if better_by:
        hits = np.flatnonzero(a == 0)[:better_by]
        b[hits] = 5  # b misses what a found
    return _ranks(a, n), _ranks(b, n)


def test_paired_marks_significant_and_tie():
    ra, rb = _pair(better_by=40)
    metrics = [_recall_metric("a", ra), _recall_metric("b", rb)]
    records = {("a", "retrieval", "caps"): retrieval_record(ra),
               ("b", "retrieval", "caps"): retrieval_record(rb)}
    (p,) = significance.paired_marks(metrics, records, STATS)
    assert (p.best, p.runner_up, p.significant) == ("a", "b", True)
    assert p.low > 0 and p.diff == pytest.approx(100 * 40 / 300)
    same = [_recall_metric("a", ra), _recall_metric("b", ra)]
    records[("b", "retrieval", "caps")] = retrieval_record(ra)
    (p,) = significance.paired_marks(same, records, STATS)
    assert not p.significant and p.low == p.high == 0.0


def test_report_shows_intervals_chance_and_marks(tmp_path):
    from bench.report import render_run

    data = make_results()
    for m in data["metrics"]:
        if m["kind"] == "quality" and m["value"] is not None:
            m.update(ci_low=m["value"] - 3.0, ci_high=m["value"] + 3.0, chance=10.0)
    data["paired"] = [{"task": "retrieval", "dataset": "caps", "key": "retrieval/i2t_recall@1",
                       "best": "phi3v-lm", "runner_up": "clip",
                       "diff": 5.0, "low": 1.0, "high": 9.0, "level": 0.95,
                       "significant": True},
                      {"task": "linear_probe", "dataset": "labels", "key": "probe/top1", "best": "phi3v",
                       "runner_up": "phi3v-lm", "diff": 2.0, "low": -1.0, "high": 5.0, "level": 0.95,
                       "significant": False}]
    result = as_result(data)
    assert result.to_json()["paired"][0]["best"] == "phi3v-lm"  # written back
    md = render_run(result, tmp_path)["markdown"].read_text()
    assert "| **35.00 ± 3.00*** |" in md  # phi3v-lm i2t_recall@1, best and significant
    assert "**84.00 ± 3.00**≈" in md  # phi3v probe top1, best but a tie with the runner-up
    assert "| metric | clip | phi3v | phi3v-lm | chance |" in md and "| 10.00 |" in md
    assert "bootstrap interval" in md and "≈ a tie" in md
    html = (tmp_path / "report.html").read_text()
    assert "<th>chance</th>" in html and "35.00 ± 3.00*" in html
    csv = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv[0].endswith("ci_low,ci_high,chance")


def test_lopsided_interval_shown_with_bounds():
    from bench.report.tables import format_interval

    assert format_interval(2.0, 0.0, 5.0, "%") == "2.00 [0.00, 5.00]"
    assert format_interval(62.4, 59.3, 65.5, "%") == "62.40 ± 3.10"


def test_old_results_without_statistics_still_load_and_render(tmp_path):
    from bench.report import render_run

    result = as_result(make_results())
    assert result.paired == [] and all(m.ci_low is None for m in result.metrics)
    assert "paired" not in result.to_json() and "ci_low" not in result.to_json()["metrics"][0]
    md = render_run(result, tmp_path)["markdown"].read_text()
    assert "±" not in md and "bootstrap" not in md


def test_records_file_round_trip_and_naming(tmp_path):
    ra, rb = _pair(better_by=3)
    recs = {("clip", "retrieval", "caps"): retrieval_record(ra),
            ("x/y", "zeroshot", "labels"): classification_record([0, 1], [0, 1], [0, 1], 2)}
    for (label, task, ds), r in recs.items():
        r.meta.update(embedder=label, task=task, dataset=ds)
    path = tmp_path / "run" / significance.RECORDS_FILE
    size = significance.save_records(path, recs, {"run_id": "r1", "seed": 0})
    assert size == path.stat().st_size and [p.name for p in path.parent.iterdir()] == [path.name]
    back, meta = significance.load_records(path)
    assert meta == {"run_id": "r1", "seed": 0} and set(back) == set(recs)
    np.testing.assert_array_equal(back[("clip", "retrieval", "caps")].arrays["t2i"], ra.t2i)
    assert significance.records_path(tmp_path / "run" / "results.json") == path
    assert significance.records_path(tmp_path / "run") == path
    want = Path("reports/baselines/demo.per_query.npz")
    assert significance.records_path("reports/baselines/demo.json") == want


# --- bench compare: the paired rule ------------------------------------------------------------------


def _compare_pair(tmp_path: Path, name: str, ranks: RetrievalRanks, run_id: str = "") -> Path:
    """A results.json (make_results, clip's t2i_recall@1 from `ranks`) with its per_query.npz."""
    data = make_results()
    data["run_id"] = run_id or data["run_id"]
    value = 100.0 * float(np.mean(np.asarray(ranks.t2i) < 1))
    for m in data["metrics"]:
        if m["embedder"] == "clip" and m["key"] == "retrieval/t2i_recall@1":
            m["value"], m["num_items"] = value, len(ranks.t2i)
    folder = tmp_path / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(data))
    rec = retrieval_record(ranks, embedder="clip", task="retrieval", dataset="caps",
                           embedder_fingerprint=data["embedders"]["clip"]["fingerprint"],
                           dataset_fingerprint=data["datasets"]["caps"]["fingerprint"])
    significance.save_records(folder / significance.RECORDS_FILE, {("clip", "retrieval", "caps"): rec},
                              {"run_id": data["run_id"]})
    return folder


def _verdict(tmp_path: Path, a: Path, b: Path, records: bool = True):
    from bench.results import load_results

    ra, rb = load_results(a), load_results(b)
    recs = (significance.run_records(ra)[0], significance.run_records(rb)[0]) if records else None
    c = compare(ra, rb, Tolerances(quality_abs=0.5), fail_on=("quality",), records=recs)
    (v,) = [v for v in c.verdicts if v.embedder == "clip" and v.key == "retrieval/t2i_recall@1"]
    return c, v


def test_compare_with_itself_is_no_significant_change(tmp_path):
    ra, _ = _pair(0)
    a = _compare_pair(tmp_path, "a", ra)
    c, v = _verdict(tmp_path, a, a)
    assert v.verdict == "unchanged" and v.reason == "paired" and "paired 95% [+0, +0]" in v.tolerance
    assert c.exit_code == 0


def test_clearly_worse_ranks_regress_by_the_paired_rule(tmp_path):
    good, bad = _pair(better_by=40)
    c, v = _verdict(tmp_path, _compare_pair(tmp_path, "bad", bad), _compare_pair(tmp_path, "good", good))
    assert v.verdict == "regressed" and v.reason == "paired" and c.exit_code == 1


def test_three_items_inside_the_noise_are_not_a_regression(tmp_path):
    """3 of 300 queries lose their hit (-1 point): beyond the item floor (2 of 300 = 0.67), so the plain
    rule calls it a regression; the paired interval of the change reaches 0 (resamples that draw none of
    the 3 queries: (299/300)^300 = 37% of them), so it is not entirely below -0.5: unchanged."""
    good, bad = _pair(better_by=3)
    a, b = _compare_pair(tmp_path, "bad", bad), _compare_pair(tmp_path, "good", good)
    _, plain = _verdict(tmp_path, a, b, records=False)
    assert plain.verdict == "regressed" and plain.delta == "-1"
    c, v = _verdict(tmp_path, a, b)
    assert v.verdict == "unchanged" and v.reason == "paired: inside the noise" and c.exit_code == 0
    assert v.tolerance.endswith(", +0]")


def test_records_of_another_run_are_not_used(tmp_path):
    from bench.results import load_results

    good, bad = _pair(better_by=40)
    a = _compare_pair(tmp_path, "a", bad)
    data = json.loads((a / "results.json").read_text())
    data["run_id"] = "another-run"
    (a / "results.json").write_text(json.dumps(data))
    recs, note = significance.run_records(load_results(a))
    assert recs == {} and "belongs to run" in note


def test_cli_compare_uses_the_records_and_baseline_accept_copies_them(tmp_path):
    good, bad = _pair(better_by=40)
    a, b = _compare_pair(tmp_path, "bad", bad), _compare_pair(tmp_path, "good", good)
    base = tmp_path / "baselines" / "demo.json"
    r = subprocess.run([sys.executable, "-m", "bench", "baseline", "accept", str(b), "--to", str(base)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "baselines" / "demo.per_query.npz").read_bytes() == (b / "per_query.npz").read_bytes()
    r = subprocess.run([sys.executable, "-m", "bench", "compare", str(a), str(base), "--fail-on", "quality"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1 and "**regressed** (paired)" in r.stdout and "paired bootstrap" in r.stdout
    # A baseline accepted from a run without records drops the stale copy.
    (a / "per_query.npz").unlink()
    data = copy.deepcopy(json.loads((a / "results.json").read_text()))
    (a / "results.json").write_text(json.dumps(data))
    r = subprocess.run([sys.executable, "-m", "bench", "baseline", "accept", str(a), "--to", str(base)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and not (tmp_path / "baselines" / "demo.per_query.npz").exists()


@pytest.mark.parametrize("section, words", [
    ({"resamples": "1000"}, "statistics.resamples"),
    ({"resamples": 5}, "statistics.resamples"),
    ({"level": 95}, "statistics.level"),
    ({"seeds": 1}, "seeds"),
])
def test_statistics_config_is_strict(section, words):
    from bench.config import parse_config
    from bench.errors import ConfigError

    raw = {"name": "x", "datasets": {"c": {"type": "imagefolder", "root": "r"}},
           "embedders": [{"type": "clip", "model": "m"}], "tasks": [{"type": "zeroshot", "dataset": "c"}],
           "statistics": section}
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        parse_config(raw)


def test_retrieval_measures_option_is_strict():
    from bench.tasks.retrieval import RetrievalParams

    assert RetrievalParams(type="retrieval", dataset="c").keys() == [
        f"{d}_recall@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
    p = RetrievalParams(type="retrieval", dataset="c", ks=[5], measures=["mrr", "ndcg", "true_recall"])
    # i2t first, then the measures in the order the config lists them
    assert p.keys() == ["i2t_mrr", "i2t_ndcg@10", "i2t_true_recall@5", "t2i_mrr", "t2i_ndcg@10",
                        "t2i_true_recall@5"]
    for bad in (["map"], [], ["mrr", "mrr"]):
        with pytest.raises(ValueError):
            RetrievalParams(type="retrieval", dataset="c", measures=bad)


def test_measures_setting_keeps_old_baselines_comparable():
    """`measures` only chooses which keys are shown: a baseline written before it existed still
    compares (a changed `ks` would not: the task settings then differ)."""
    new, old = make_results(), make_results()
    new["config"]["tasks"][0]["measures"] = ["recall", "mrr"]
    c = compare(new, old, fail_on=("quality",))
    clip = [v for v in c.verdicts if v.key.startswith("retrieval/") and v.embedder == "clip"]
    assert {v.verdict for v in clip} == {"unchanged"}
    new["config"]["tasks"][0]["ks"] = [1, 5, 20]
    c = compare(new, old, fail_on=("quality",))
    assert {v.reason for v in c.verdicts if v.key.startswith("retrieval/") and v.embedder == "clip"} == {
        "task settings differ"}
