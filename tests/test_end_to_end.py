"""The whole harness on synthetic data and tiny checkpoints: results, report, cache reuse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp: Path, synthetic_dir: Path, clip_dir: Path, phi_dir: Path) -> Path:
    d = synthetic_dir
    cfg = {
        "name": "e2e",
        "synthetic": True,
        "output_dir": str(tmp / "runs"),
        "cache_dir": str(tmp / "cache"),
        "runtime": {"device": "cpu", "batch_size": 5, "num_workers": 1, "seed": 0},
        "datasets": {
            "caps": {"type": "coco_karpathy", "annotations": str(d / "dataset_coco.json"),
                     "images": str(d / "images"), "split": "test"},
            "obj_train": {"type": "coco_instances", "annotations": str(d / "annotations/instances_train.json"),
                          "images": str(d / "images/train")},
            "obj_test": {"type": "coco_instances", "annotations": str(d / "annotations/instances_test.json"),
                         "images": str(d / "images/test")},
            "fold_train": {"type": "imagefolder", "root": str(d / "imagefolder/train")},
            "fold_test": {"type": "imagefolder", "root": str(d / "imagefolder/test")},
        },
        "embedders": [
            {"type": "clip", "model": str(clip_dir)},
            {"type": "phi3v", "model": str(phi_dir), "num_crops": 2},
            {"type": "phi3v-lm", "model": str(phi_dir), "num_crops": 2},
        ],
        "tasks": [
            {"type": "retrieval", "dataset": "caps",
             "measures": ["recall", "true_recall", "mrr", "ndcg", "median_rank"]},
            {"type": "linear_probe", "train": "fold_train", "test": "fold_test"},
            {"type": "linear_probe", "train": "obj_train", "test": "obj_test"},
            {"type": "zeroshot", "dataset": "fold_test", "templates": ["a {c}."]},
            {"type": "speed", "dataset": "caps", "num_images": 6, "min_iterations": 1, "min_time_s": 0.0,
             "warmup_batches": 1},
        ],
    }
    p = tmp / "e2e.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory, synthetic_dir, tiny_clip_dir, tiny_phi3v_dir):
    from bench.config import load_config
    from bench.runner import run_benchmark

    tmp = tmp_path_factory.mktemp("e2e")
    path = _config(tmp, synthetic_dir, tiny_clip_dir, tiny_phi3v_dir)
    cfg = load_config(path)
    first = run_benchmark(cfg, path, progress=False, out_dir=tmp / "run1")
    second = run_benchmark(cfg, path, progress=False, out_dir=tmp / "run2")
    return tmp, path, first, second


def _metrics(run_dir: Path) -> dict:
    data = json.loads((run_dir / "results.json").read_text())
    return data, {(m["embedder"], m["dataset"], m["key"]): m for m in data["metrics"]}


def test_results_and_reports_present(e2e_run):
    _, _, first, _ = e2e_run
    for name in ("results.json", "report.md", "report.html", "metrics.csv"):
        assert (first / name).is_file(), name
    data, _ = _metrics(first)
    assert data["schema_version"] == 1 and data["complete"] is True
    assert data["synthetic"] is True
    assert set(data["embedders"]) == {"clip", "phi3v", "phi3v-lm"}
    env = data["environment"]
    assert env["packages"]["torch"] and env["device"]["type"] == "cpu" and env["hardware_fingerprint"]
    assert data["datasets"]["caps"]["num_images"] == 24
    assert data["datasets"]["caps"]["num_captions"] >= 5 * 24
    assert "random" in (first / "report.md").read_text().lower()


def test_every_expected_metric_key(e2e_run):
    _, _, first, _ = e2e_run
    _, m = _metrics(first)
    recall = [f"retrieval/{d}_recall@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
    for emb in ("clip", "phi3v", "phi3v-lm"):
        for key in recall:
            assert (emb, "caps", key) in m, (emb, key)
        for key in ("probe/top1", "probe/top5", "probe/mean_per_class_recall"):
            assert m[(emb, "fold_test", key)]["value"] is not None
        assert m[(emb, "obj_test", "probe/mAP")]["value"] is not None
        for key in ("zeroshot/top1", "zeroshot/top5", "zeroshot/mean_per_class_recall"):
            assert (emb, "fold_test", key) in m
        for key in ("speed/images_per_s", "speed/model_images_per_s", "speed/batch_latency_p50_ms",
                    "speed/batch_latency_p90_ms", "speed/batch_latency_p99_ms", "memory/peak_rss_mib"):
            v = m[(emb, "caps", key)]["value"]
            assert v is not None and v > 0, (emb, key)
    # Text-capable embedders fill every quality metric; the image-only one says why it cannot.
    for emb in ("clip", "phi3v-lm"):
        for key in recall:
            v = m[(emb, "caps", key)]["value"]
            assert 0.0 <= v <= 100.0
        assert m[(emb, "fold_test", "zeroshot/top1")]["value"] is not None
    for key in recall:
        rec = m[("phi3v", "caps", key)]
        assert rec["value"] is None and "images only" in rec["na_reason"]
    assert m[("phi3v", "fold_test", "zeroshot/top1")]["value"] is None
    # Directions are declared.
    assert m[("clip", "caps", "memory/peak_rss_mib")]["higher_is_better"] is False
    assert m[("clip", "caps", "retrieval/i2t_recall@5")]["higher_is_better"] is True


def test_second_run_reuses_cache_and_gives_same_quality(e2e_run):
    _, _, first, second = e2e_run
    d1, m1 = _metrics(first)
    d2, m2 = _metrics(second)
    for emb, status in d1["cache"].items():
        assert set(status.values()) == {"miss"}, (emb, status)
    for emb, status in d2["cache"].items():
        assert status and set(status.values()) == {"hit"}, (emb, status)
    for k, rec in m1.items():
        if rec["kind"] == "quality" and rec["value"] is not None:
            assert m2[k]["value"] == pytest.approx(rec["value"], abs=1e-9), k


def test_statistics_in_results_report_and_compare(e2e_run):
    """Issue 15 end to end: per-query records, intervals containing the estimate, chance, the extra
    retrieval measures, paired marks, the report's ± and chance column, and compare's paired rule."""
    from bench import significance

    _, _, first, second = e2e_run
    data, m = _metrics(first)
    records, meta = significance.load_records(first / "per_query.npz")
    assert meta["run_id"] == data["run_id"] and meta["statistics"] == {"n_resamples": 1000, "seed": 0,
                                                                       "level": 0.95}
    assert meta["embedders"]["clip"] == data["embedders"]["clip"]["fingerprint"]
    assert {("clip", "retrieval", "caps"), ("phi3v", "linear_probe", "fold_test"),
            ("phi3v-lm", "linear_probe", "obj_test"), ("clip", "zeroshot", "fold_test")} <= set(records)
    assert ("phi3v", "retrieval", "caps") not in records  # image-only: n/a, no record
    quality = [r for r in m.values() if r["kind"] == "quality" and r["value"] is not None]
    assert len(quality) > 30
    for r in quality:
        assert r["ci_low"] - 1e-9 <= r["value"] <= r["ci_high"] + 1e-9, r
        assert r["chance"] is not None, r
    for key in ("retrieval/i2t_true_recall@5", "retrieval/t2i_mrr", "retrieval/i2t_ndcg@10",
                "retrieval/t2i_median_rank"):
        assert m[("clip", "caps", key)]["value"] is not None, key
    assert m[("clip", "caps", "retrieval/t2i_median_rank")]["higher_is_better"] is False
    assert "nDCG@k" in m[("clip", "caps", "retrieval/i2t_ndcg@10")]["protocol"]
    # text->image has one correct image: true recall equals hit recall there (ranking.py)
    assert m[("clip", "caps", "retrieval/t2i_true_recall@5")]["value"] == \
        pytest.approx(m[("clip", "caps", "retrieval/t2i_recall@5")]["value"])
    assert data["paired"] and {p["task"] for p in data["paired"]} >= {"retrieval", "linear_probe", "zeroshot"}
    md = (first / "report.md").read_text()
    assert "±" in md and "| chance |" in md and "bootstrap interval" in md
    r = subprocess.run([sys.executable, "-m", "bench", "compare", str(second), str(first), "--fail-on",
                        "quality", "--show", "all"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    quality = [line for line in r.stdout.splitlines() if "| retrieval/" in line or "| probe/" in line
               or "| zeroshot/" in line]
    bad = [line for line in quality if not line.endswith("| unchanged (paired) |") and "| n/a |" not in line]
    assert len(quality) > 30 and not bad, bad


def test_cli_run_prints_report_path_last(e2e_run, tmp_path):
    tmp, path, _, _ = e2e_run
    r = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--no-progress", "--out",
                        str(tmp_path / "cli")], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.endswith("report.html") and Path(last.split()[-1]).is_file()


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_one_clear_error(tmp_path, synthetic_dir, tiny_clip_dir, workers):
    import shutil

    from bench.config import load_config
    from bench.errors import DataError
    from bench.runner import run_benchmark

    root = tmp_path / "imgs"
    shutil.copytree(synthetic_dir / "imagefolder" / "test", root)
    victim = sorted(root.rglob("*.jpg"))[3]
    victim.write_bytes(b"not a jpeg at all")
    cfg = {"name": "bad", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
           "runtime": {"device": "cpu", "num_workers": workers},
           "datasets": {"f": {"type": "imagefolder", "root": str(root)}},
           "embedders": [{"type": "clip", "model": str(tiny_clip_dir)}],
           "tasks": [{"type": "linear_probe", "train": "f", "test": "f"}]}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DataError, match=rf"cannot decode image .*{victim.name}"):
        run_benchmark(load_config(p), p, progress=False)


def test_degraded_run_is_caught_as_a_regression(e2e_run, monkeypatch):
    """A run whose CLIP image embeddings are corrupted (same model, data and settings) fails the compare."""
    import torch

    from bench.config import load_config
    from bench.embedders.clip import ClipEmbedder
    from bench.regression import compare
    from bench.results import load_results
    from bench.runner import run_benchmark

    tmp, path, first, _ = e2e_run
    cfg = yaml.safe_load(path.read_text())
    cfg["embedders"] = [e for e in cfg["embedders"] if e["type"] == "clip"]
    cfg["tasks"] = [t for t in cfg["tasks"] if t["type"] != "speed"]
    small = tmp / "degraded.yaml"
    small.write_text(yaml.safe_dump(cfg))
    original = ClipEmbedder.embed_image_batch
    gen = torch.Generator().manual_seed(0)

    def corrupted(self, batch):
        x = original(self, batch)
        return torch.nn.functional.normalize(torch.randn(x.shape, generator=gen), dim=-1)  # noise, no signal

    monkeypatch.setattr(ClipEmbedder, "embed_image_batch", corrupted)
    degraded = run_benchmark(load_config(small), small, use_cache=False, progress=False, render=False,
                             out_dir=tmp / "degraded")
    result, baseline = load_results(degraded), load_results(first)
    honest = compare(baseline, baseline, fail_on=("quality",))
    assert honest.exit_code == 0 and honest.count("regressed") == 0
    c = compare(result, baseline, fail_on=("quality",))
    assert c.exit_code == 1
    regressed = {(v.embedder, v.key) for v in c.verdicts if v.verdict == "regressed"}
    assert regressed and all(e == "clip" for e, _ in regressed)
    assert {v.verdict for v in c.verdicts if v.embedder != "clip"} == {"missing"}


def test_cpu_runs_take_bfloat16_and_refuse_float16(tmp_path, synthetic_dir, tiny_clip_dir):
    """runtime.dtype on the CPU: bfloat16 runs end to end (half the weights' memory), float16 is one
    ConfigError before any work or output."""
    import json

    from bench.config import load_config
    from bench.errors import ConfigError
    from bench.runner import run_benchmark

    d = synthetic_dir
    cfg = {"name": "bf16", "synthetic": True, "output_dir": str(tmp_path / "runs"),
           "cache_dir": str(tmp_path / "cache"),
           "runtime": {"device": "cpu", "dtype": "bfloat16", "batch_size": 8, "num_workers": 0},
           "datasets": {"tr": {"type": "imagefolder", "root": str(d / "imagefolder/train")},
                        "te": {"type": "imagefolder", "root": str(d / "imagefolder/test")}},
           "embedders": [{"type": "clip", "model": str(tiny_clip_dir)}],
           "tasks": [{"type": "linear_probe", "train": "tr", "test": "te"},
                     {"type": "zeroshot", "dataset": "te", "templates": ["a {c}."]}]}
    p = tmp_path / "bf16.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out = run_benchmark(load_config(p), p, progress=False, render=False, out_dir=tmp_path / "run")
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["runtime"]["dtype"] == "bfloat16"
    values = {m["key"]: m["value"] for m in results["metrics"]}
    assert 0 <= values["probe/top1"] <= 100 and 0 <= values["zeroshot/top1"] <= 100

    cfg["runtime"]["dtype"] = "float16"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="float16.*CUDA.*float32 or bfloat16"):
        run_benchmark(load_config(p), p, progress=False, out_dir=tmp_path / "run16")
    assert not (tmp_path / "run16").exists()
