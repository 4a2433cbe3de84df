"""Compute efficiency: FLOP counts against hand formulas, the on-disk caches, the matmul peak and the
speed task's GFLOP/s and % of peak metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")

from bench.metrics import flops as fl  # noqa: E402


def test_linear_flops_are_two_per_multiply_add():
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(5, 64)
    assert fl.count_flops(lambda: lin(x)) == 2 * 64 * 32 * 5
    conv = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4, bias=False)
    img = torch.randn(2, 3, 16, 16)  # 4x4 output positions, 8 channels, 3*4*4 MACs each
    assert fl.count_flops(lambda: conv(img)) == 2 * 2 * 16 * 8 * (3 * 4 * 4)


def _vision_flops_by_hand(cfg: dict) -> int:
    """ViT forward per image: patch conv, per layer q/k/v/out projections (4 d^2 per token), the
    attention scores and the weighted sum (2 S^2 d), the MLP (2 d m per token); then the projection of
    the pooled token. Counted in multiply-adds, x2."""
    v = cfg["vision_config"]
    d, m, layers = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    p, size = v["patch_size"], v["image_size"]
    patches = (size // p) ** 2
    s = patches + 1
    macs = patches * 3 * p * p * d
    macs += layers * (4 * s * d * d + 2 * s * s * d + 2 * s * d * m)
    macs += d * cfg["projection_dim"]
    return 2 * macs


def test_tiny_clip_image_flops_match_the_hand_formula(tiny_clip_dir):
    from PIL import Image

    from bench.embedders.clip import ClipEmbedder

    emb = ClipEmbedder(str(tiny_clip_dir))
    imgs = [Image.new("RGB", (40 + 7 * i, 50), (10 * i, 80, 200)) for i in range(3)]
    batch = emb.collate([emb.preprocess(im) for im in imgs])
    cfg = json.loads((Path(tiny_clip_dir) / "config.json").read_text())
    per = fl.flops_per_item(lambda: emb.embed_image_batch(batch), 3, "k", None)
    assert per == _vision_flops_by_hand(cfg)


def test_flop_count_is_cached_on_disk(tmp_path, monkeypatch):
    calls = []

    def counter(fn):
        calls.append(1)
        return 600

    key = fl.flops_key({"model": "m", "dtype": "float32"}, "image:data:3")
    assert fl.flops_per_item(lambda: None, 3, key, tmp_path, counter=counter) == 200
    assert json.loads((tmp_path / "flops" / f"{key}.json").read_text())["flops_per_item"] == 200
    monkeypatch.setattr(fl, "count_flops", lambda fn: pytest.fail("counted again"))
    assert fl.flops_per_item(lambda: None, 3, key, tmp_path) == 200 and calls == [1]
    # another fingerprint (e.g. another dtype) is another entry
    other = fl.flops_key({"model": "m", "dtype": "bfloat16"}, "image:data:3")
    assert other != key
    assert fl.flops_per_item(lambda: None, 3, other, tmp_path, counter=counter) == 200 and calls == [1, 1]


def test_matmul_peak_is_positive_and_cached_per_hardware(tmp_path):
    r = fl.matmul_peak("cpu", "float32", n=256, min_time_s=0.05)
    assert r["n"] == 256 and math.isfinite(r["gflops"]) and r["gflops"] > 0
    assert r["gflops"] == pytest.approx(2 * 256**3 / r["best_s"] / 1e9)
    calls = []

    def measure(device, dtype):
        calls.append((device, dtype))
        return {"dtype": dtype, "n": 8, "best_s": 1.0, "gflops": 123.0}

    a = fl.device_peak("cpu", "float32", "hwA", tmp_path, measure=measure)
    assert a["gflops"] == 123.0 and (tmp_path / "peak" / "hwA-float32.json").is_file()
    assert fl.device_peak("cpu", "float32", "hwA", tmp_path, measure=measure)["gflops"] == 123.0
    assert calls == [("cpu", "float32")]
    fl.device_peak("cpu", "bfloat16", "hwA", tmp_path, measure=measure)
    fl.device_peak("cpu", "float32", "hwB", tmp_path, measure=measure)
    assert calls == [("cpu", "float32"), ("cpu", "bfloat16"), ("cpu", "float32")]


def test_matmul_peak_synchronizes_through_device_sync(monkeypatch):
    import bench.metrics.speed as sp

    seen = []
    real = sp.device_sync
    monkeypatch.setattr(sp, "device_sync", lambda device: seen.append(device) or real("cpu"))
    fl.matmul_peak("cpu", "float32", n=64, min_time_s=0.0)
    assert seen == ["cpu"]


def test_published_peaks_are_dense_figures_by_part():
    assert fl.published_peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.5
    assert fl.published_peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert fl.published_peak_tflops("NVIDIA H200", "float16") == 989.5
    assert fl.published_peak_tflops("NVIDIA A100-SXM4-80GB", "tf32") == 156.0
    assert fl.published_peak_tflops("NVIDIA L4", "bfloat16") == 121.0
    assert fl.published_peak_tflops("NVIDIA L40S", "bfloat16") == 362.0
    assert fl.published_peak_tflops("Tesla T4", "bfloat16") is None
    assert fl.published_peak_tflops("Some GPU", "float32") is None
    assert fl.published_peak_tflops(None, "x") is None
    assert fl.achieved(None, 1e9) is None and fl.peak_fraction(50.0, 200.0) == 25.0


def test_speed_task_reports_consistent_compute_efficiency(tmp_path, synthetic_dir, tiny_clip_dir,
                                                          monkeypatch):
    from bench.config import load_config
    from bench.runner import run_benchmark

    monkeypatch.setattr(fl, "matmul_peak", lambda device, dtype: {"dtype": dtype, "n": 8, "best_s": 1.0,
                                                                   "gflops": 0.5})
    d = synthetic_dir
    cfg = {"name": "flops", "synthetic": True, "output_dir": str(tmp_path / "runs"),
           "cache_dir": str(tmp_path / "cache"),
           "runtime": {"device": "cpu", "batch_size": 4, "num_workers": 0, "seed": 0},
           "datasets": {"caps": {"type": "coco_karpathy", "annotations": str(d / "dataset_coco.json"),
                                 "images": str(d / "images"), "split": "test"}},
           "embedders": [{"type": "clip", "model": str(tiny_clip_dir)}],
           "tasks": [{"type": "speed", "dataset": "caps", "num_images": 8, "min_iterations": 1,
                      "min_time_s": 0.0, "warmup_batches": 1}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = run_benchmark(load_config(path), path, progress=False, out_dir=tmp_path / "run", render=True)
    data = json.loads((run / "results.json").read_text())
    m = {x["key"]: x for x in data["metrics"] if x["embedder"] == "clip"}
    model_cfg = json.loads((Path(tiny_clip_dir) / "config.json").read_text())
    gflop = m["speed/gflop_per_image"]["value"]
    assert gflop == pytest.approx(_vision_flops_by_hand(model_cfg) / 1e9, rel=1e-3)
    assert m["speed/gflop_per_image"]["unit"] == "GFLOP" and m["speed/gflops"]["unit"] == "GFLOP/s"
    assert m["speed/gflops"]["value"] == pytest.approx(m["speed/images_per_s"]["value"] * gflop, rel=1e-3)
    model = m["speed/model_gflops"]["value"]
    assert model == pytest.approx(m["speed/model_images_per_s"]["value"] * gflop, rel=1e-3)
    assert m["speed/peak_gflops"]["value"] == 0.5
    assert m["speed/peak_fraction"]["value"] == pytest.approx(100 * model / 0.5, rel=1e-3)
    per_text = m["speed/gflop_per_text"]["value"]
    assert per_text > 0
    texts_per_s = m["speed/texts_per_s"]["value"]
    assert m["speed/text_gflops"]["value"] == pytest.approx(texts_per_s * per_text, rel=1e-3)
    assert len(list((tmp_path / "cache" / "flops").glob("*.json"))) == 2  # image and text counts cached
    assert "gflop_per_image" in (run / "report.md").read_text()
    # flops: false turns it off
    cfg["tasks"][0]["flops"] = False
    path.write_text(yaml.safe_dump(cfg))
    run = run_benchmark(load_config(path), path, progress=False, out_dir=tmp_path / "run2", render=False)
    keys = {x["key"] for x in json.loads((run / "results.json").read_text())["metrics"]}
    assert "speed/images_per_s" in keys and not any("flop" in k or "peak_fraction" in k for k in keys)
