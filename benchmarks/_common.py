"""Shared bits of the benchmark scripts: a result line format, full-size random checkpoints, images."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("BENCH_PERF_DIR", ROOT / ".cache" / "perf"))
RESULTS = WORK / "results.jsonl"

# Phi-3-vision-128k-instruct at full size: language-model width, heads and vocabulary.
PHI3_HIDDEN, PHI3_INTERMEDIATE, PHI3_HEADS, PHI3_VOCAB = 3072, 8192, 32, 32064


def phi3v_config(layers: int, **img_processor: object) -> dict:
    """config.json of Phi-3-vision-128k-instruct as released, with `layers` decoder layers (32 in the
    real model); `img_processor` adds fields to its img_processor block (e.g. a vision_config)."""
    half = PHI3_HIDDEN // PHI3_HEADS // 2
    return {
        "model_type": "phi3_v", "architectures": ["Phi3VForCausalLM"], "torch_dtype": "bfloat16",
        "hidden_size": PHI3_HIDDEN, "intermediate_size": PHI3_INTERMEDIATE, "num_hidden_layers": layers,
        "num_attention_heads": PHI3_HEADS, "num_key_value_heads": PHI3_HEADS, "vocab_size": PHI3_VOCAB,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
        "rope_scaling": {"type": "su", "short_factor": [1.0 + 0.01 * i for i in range(half)],
                         "long_factor": [1.0 + 0.5 * i for i in range(half)]},
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32000, "sliding_window": 131072,
        "tie_word_embeddings": False, "use_cache": True,
        "img_processor": {"name": "clip_vision_model", "model_name": "openai/clip-vit-large-patch14-336",
                          "image_dim_out": 1024, "num_img_tokens": 144, **img_processor},
        "embd_layer": {"embedding_cls": "image", "use_hd_transform": True, "with_learnable_separator": True,
                       "hd_transform_order": "sub_glb", "projection_cls": "mlp"},
    }


def verdict(target: str, ok: bool) -> str:
    """MET / MISSED next to a target; INFO for figures printed for information ("(info)" targets)."""
    if target.strip().startswith("(info)"):
        return "INFO"
    return "MET" if ok else "MISSED"


def report(name: str, value: float, target: str, ok: bool, detail: str = "", **facts: object) -> None:
    """One line per figure, `value` next to its target and MET/MISSED; also appended to results.jsonl
    (with the script that wrote it, from run_all's BENCH_PERF_SCRIPT) for run_all's summary table and
    results.json (benchmarks.perf_results). `facts` (unit, kind, higher_is_better) override what
    perf_results reads from the name and the target."""
    mark = verdict(target, ok)
    print(f"[{mark}] {name}: {value:.3f} (target {target}) {detail}".rstrip(), flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    row = {"name": name, "value": value, "target": target, "ok": ok, "verdict": mark, "detail": detail,
           "script": os.environ.get("BENCH_PERF_SCRIPT", Path(sys.argv[0]).name),
           "quick": os.environ.get("BENCH_PERF_QUICK") == "1", **facts}
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")


def jpeg_folder(n: int, size=(640, 480), seed: int = 0) -> Path:
    """n photo-like JPEGs (smooth gradients + noise + shapes), written once."""
    import numpy as np
    from PIL import Image, ImageDraw

    out = WORK / f"jpeg_{n}_{size[0]}x{size[1]}_{seed}"
    stamp = out / "_done"
    if stamp.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        base = np.stack([(xx * rng.uniform(0.2, 0.5) + yy * rng.uniform(0.1, 0.4) + rng.uniform(0, 255)) % 256
                         for _ in range(3)], -1)
        arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        im = Image.fromarray(arr)
        d = ImageDraw.Draw(im)
        for _ in range(5):
            x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            d.ellipse([x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200))],
                      fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        im.save(out / f"img_{i:04d}.jpg", quality=90)
    stamp.write_text("ok")
    return out


def full_clip_b32() -> Path:
    """CLIP ViT-B/32 architecture (transformers' CLIPConfig defaults) with random weights, saved once
    with the tiny checkpoint's tokenizer files (the image path does not use them)."""
    return _full_clip("clip-vit-b32-random", {"image_size": 224, "patch_size": 32}, {}, 224)


def full_clip_l14_336() -> Path:
    """CLIP ViT-L/14-336 architecture (openai/clip-vit-large-patch14-336's shapes: 24 layers of width 1024,
    12 text layers of width 768, projection 768) with random weights, saved once like full_clip_b32."""
    vision = {"image_size": 336, "patch_size": 14, "hidden_size": 1024, "intermediate_size": 4096,
              "num_hidden_layers": 24, "num_attention_heads": 16}
    text = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12}
    return _full_clip("clip-vit-l14-336-random", vision, text, 336, projection_dim=768)


def _full_clip(name: str, vision: dict, text: dict, size: int, projection_dim: int = 512) -> Path:
    import shutil

    import torch
    from transformers import CLIPConfig, CLIPModel

    from bench.demo.tiny_clip import make_tiny_clip

    out = WORK / name
    if (out / "_done").exists():
        return out
    tiny = make_tiny_clip(WORK / "tiny-clip-tok", seed=0)
    out.mkdir(parents=True, exist_ok=True)
    cfg = CLIPConfig(text_config={"vocab_size": 49408, **text}, vision_config=vision,
                     projection_dim=projection_dim)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(out)
    pre = json.loads((tiny / "preprocessor_config.json").read_text())
    pre.update({"crop_size": {"height": size, "width": size}, "size": {"shortest_edge": size}})
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny / f).exists():
            shutil.copy(tiny / f, out / f)
    (out / "_done").write_text("ok")
    return out
