"""Fidelity of fast modes: the figures against an independent route, the speed task's records for a
bfloat16 run (and none for float32), the report, and `bench compare` failing on them only when asked."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from bench.metrics.fidelity import fidelity, rank_agreement  # noqa: E402


def _by_hand(fast: np.ndarray, ref: np.ndarray, k: int) -> dict[str, float]:
    """Row by row with plain Python and scipy.stats.spearmanr."""
    from scipy.stats import spearmanr

    same = over = rho = 0.0
    for f, r in zip(fast.tolist(), ref.tolist()):
        order_f = sorted(range(len(f)), key=lambda j: (-f[j], j))
        order_r = sorted(range(len(r)), key=lambda j: (-r[j], j))
        same += order_f[0] == order_r[0]
        over += len(set(order_f[:k]) & set(order_r[:k])) / k
        rho += spearmanr(f, r).statistic
    n = len(fast)
    return {"top1_agreement": 100 * same / n, f"top{k}_overlap": 100 * over / n, "spearman": rho / n}


def test_rank_agreement_matches_a_row_by_row_computation():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20, 12))
    fast = ref + rng.normal(scale=0.3, size=ref.shape)  # noisy enough to flip some rankings
    got = rank_agreement(fast, ref, k=3)
    want = _by_hand(fast, ref, 3)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert 0 < got["top1_agreement"] < 100 and got["spearman"] < 1
    same = rank_agreement(ref, ref * 2 + 1, k=3)  # a monotone map keeps every ranking
    assert same == {"top1_agreement": 100.0, "top3_overlap": 100.0, "spearman": pytest.approx(1.0)}


def test_fidelity_cosines_and_leave_one_out():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(6, 4))
    fast = ref.copy()
    fast[2] = -fast[2]  # one vector flipped: cosine -1
    out = fidelity(fast, ref)
    assert out["image_cosine_min"] == pytest.approx(-1.0)
    assert out["image_cosine_mean"] == pytest.approx((5 - 1) / 6)
    # i2i: candidates are the other 5 images (k capped at 5: the overlap is then always complete)
    assert out["i2i_top5_overlap"] == 100.0
    assert "i2t_top1_agreement" not in out and "text_cosine_min" not in out


def _config(tmp_path, d, model, dtype, fidelity_images=16):
    return {"name": "fid", "synthetic": True, "output_dir": str(tmp_path / "runs"),
            "cache_dir": str(tmp_path / "cache"),
            "runtime": {"device": "cpu", "batch_size": 4, "num_workers": 0, "seed": 0, "dtype": dtype},
            "datasets": {"caps": {"type": "coco_karpathy", "annotations": str(d / "dataset_coco.json"),
                                  "images": str(d / "images"), "split": "test"}},
            "embedders": [{"type": "clip", "model": str(model)}],
            "tasks": [{"type": "speed", "dataset": "caps", "num_images": 4, "min_iterations": 1,
                       "min_time_s": 0.0, "warmup_batches": 0, "flops": False,
                       "fidelity_images": fidelity_images}]}


def _run(tmp_path, name, cfg, render=False):
    from bench.config import load_config
    from bench.runner import run_benchmark

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = run_benchmark(load_config(path), path, progress=False, out_dir=tmp_path / name, render=render)
    return run, json.loads((run / "results.json").read_text())


def test_bf16_run_records_fidelity_and_float32_none(tmp_path, synthetic_dir, tiny_clip_dir):
    from bench.embedders.base import RuntimeOptions
    from bench.embedders.clip import ClipEmbedder
    from bench.loader import image_batches

    cfg = _config(tmp_path, synthetic_dir, tiny_clip_dir, "bfloat16")
    run, data = _run(tmp_path, "bf16", cfg, render=True)
    m = {x["key"]: x for x in data["metrics"] if x["kind"] == "fidelity"}
    cos_min, cos_mean = m["fidelity/image_cosine_min"]["value"], m["fidelity/image_cosine_mean"]["value"]
    assert 0.99 < cos_min <= cos_mean < 1.0
    assert 0.99 < m["fidelity/text_cosine_min"]["value"] < 1.0
    for direction in ("i2i", "i2t", "t2i"):
        for name in ("top1_agreement", "top5_overlap", "spearman"):
            assert f"fidelity/{direction}_{name}" in m
    assert m["fidelity/i2t_top1_agreement"]["unit"] == "%" and m["fidelity/image_cosine_min"]["unit"] == "cos"
    assert all(x["task"] == "speed" and x["higher_is_better"] for x in m.values())
    assert "bfloat16 vs the same checkpoint in float32" in m["fidelity/image_cosine_min"]["protocol"]

    # Independent route: the sample the run used, embedded here in both dtypes, figures by hand.
    detail = data["details"]["clip"]["speed/caps/fidelity"]
    paths = detail["images"]
    assert len(paths) == 16 and paths == sorted(paths)  # 16 of the 24 test images, in dataset order
    ds_caps = {p["filename"]: p["sentences"][0]["raw"]
               for p in json.loads((synthetic_dir / "dataset_coco.json").read_text())["images"]}
    texts = [ds_caps[p.rsplit("/", 1)[-1]] for p in paths]
    vecs = {}
    for dtype in ("float32", "bfloat16"):
        emb = ClipEmbedder(str(tiny_clip_dir), runtime=RuntimeOptions(dtype=dtype, batch_size=4))
        img = torch.cat([emb.embed_image_batch(b) for b in image_batches(emb, paths, 4, 0)])
        vecs[dtype] = (img.double(), emb.embed_texts(texts).double())
    (fi, ft), (ri, rt) = vecs["bfloat16"], vecs["float32"]
    cos = torch.nn.functional.cosine_similarity(fi, ri, dim=-1)
    assert cos_min == pytest.approx(float(cos.min()), abs=1e-6)
    assert cos_mean == pytest.approx(float(cos.mean()), abs=1e-6)
    hand = _by_hand((fi @ ft.T).numpy(), (ri @ rt.T).numpy(), 5)
    assert m["fidelity/i2t_top1_agreement"]["value"] == pytest.approx(hand["top1_agreement"])
    assert m["fidelity/i2t_spearman"]["value"] == pytest.approx(hand["spearman"], abs=1e-9)
    report = (run / "report.md").read_text()
    assert "fidelity/image_cosine_min" in report and f"{cos_min:.6f}" in report

    _, data32 = _run(tmp_path, "fp32", _config(tmp_path, synthetic_dir, tiny_clip_dir, "float32"))
    assert not [x for x in data32["metrics"] if x["kind"] == "fidelity" or x["key"].startswith("fidelity/")]
    assert "speed/images_per_s" in {x["key"] for x in data32["metrics"]}

    # compare: a fidelity drop is listed, and fails only with --fail-on ...,fidelity
    from bench.regression import compare

    worse = copy.deepcopy(data)
    for x in worse["metrics"]:
        if x["key"] == "fidelity/i2t_top1_agreement":
            x["value"] = 0.0
    c = compare(worse, data)
    row = [v for v in c.verdicts if v.key == "fidelity/i2t_top1_agreement"][0]
    assert row.verdict == "regressed" and row.kind == "fidelity"
    assert c.exit_code == 0
    assert compare(worse, data, fail_on=("quality", "speed", "memory", "fidelity")).exit_code == 1


def test_reference_that_cannot_run_is_na_and_zero_images_turn_it_off(tmp_path, synthetic_dir, tiny_clip_dir,
                                                                      monkeypatch):
    from bench.tasks import speed_fidelity

    real = speed_fidelity._vectors

    def vectors(emb, paths, texts, batch_size):
        if emb.runtime.dtype == "float32":
            raise RuntimeError("out of memory (simulated)")
        return real(emb, paths, texts, batch_size)

    monkeypatch.setattr(speed_fidelity, "_vectors", vectors)
    _, data = _run(tmp_path, "na", _config(tmp_path, synthetic_dir, tiny_clip_dir, "bfloat16", 4))
    fid = [x for x in data["metrics"] if x["kind"] == "fidelity"]
    assert [(x["key"], x["value"]) for x in fid] == [("fidelity/image_cosine_min", None)]
    assert "out of memory (simulated)" in fid[0]["na_reason"]
    _, data = _run(tmp_path, "off", _config(tmp_path, synthetic_dir, tiny_clip_dir, "bfloat16", 0))
    assert not [x for x in data["metrics"] if x["kind"] == "fidelity"]
