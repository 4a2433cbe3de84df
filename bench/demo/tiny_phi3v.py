"""Seeded random tiny Phi-3-vision checkpoints in the REAL on-disk layout (for tests and the demo).

config.json (model_type phi3_v, "su" rope scaling, img_processor with a tiny `vision_config`,
embd_layer), preprocessor_config.json, two safetensors shards + model.safetensors.index.json with
the released checkpoints' tensor names: language model in shard 1 (embed_tokens, layers), the rest
(final norm, lm_head, the whole vision part) in shard 2, so a test can break shard 1 and still load
the image embedder. Values are drawn from one torch.Generator over sorted names: deterministic per seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.models.phi3v.processor import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

STAMP = ".tiny_phi3v_complete"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
VISION_PREFIX = "model.vision_embed_tokens."


def tiny_config(
    num_crops: int = 4,
    hd_transform_order: str = "sub_glb",
    projection_cls: str = "mlp",
    vocab_size: int = 512,
    seed: int = 0,
) -> dict[str, Any]:
    """The config.json dict of a tiny checkpoint."""
    import random

    hidden, heads, layers = 64, 4, 2
    half = hidden // heads // 2
    rng = random.Random(seed)
    short = [round(1.0 + 0.5 * rng.random(), 4) for _ in range(half)]
    long = sorted(round(1.0 + 7.0 * rng.random(), 4) for _ in range(half))
    return {
        "_name_or_path": "tiny-phi3v",
        "architectures": ["Phi3VForCausalLM"],
        "model_type": "phi3_v",
        "hidden_size": hidden,
        "intermediate_size": 128,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "hidden_act": "silu",
        "vocab_size": vocab_size,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 64,
        "rope_scaling": {"type": "su", "short_factor": short, "long_factor": long},
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "embd_pdrop": 0.0,
        "resid_pdrop": 0.0,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "img_processor": {
            "name": "clip_vision_model",
            "model_name": "openai/clip-vit-large-patch14-336",
            "image_dim_out": 32,
            "num_img_tokens": 144,
            "vision_config": {
                "image_size": 336,
                "patch_size": 14,
                "hidden_size": 32,
                "num_hidden_layers": 3,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5,
                "num_channels": 3,
                "projection_dim": 32,
            },
        },
        "embd_layer": {
            "embedding_cls": "image",
            "use_hd_transform": True,
            "with_learnable_separator": True,
            "hd_transform_order": hd_transform_order,
            "projection_cls": projection_cls,
        },
    }


def lm_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Language-model tensor names and shapes of transformers' Phi3ForCausalLM for a config."""
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = hidden // heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg["vocab_size"], hidden)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "self_attn.qkv_proj.weight"] = ((heads + 2 * kv) * head_dim, hidden)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, heads * head_dim)
        shapes[p + "mlp.gate_up_proj.weight"] = (2 * inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (cfg["vocab_size"], hidden)
    return shapes


def vision_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Vision tensor names (with the model.vision_embed_tokens. prefix) and shapes, from the module itself."""
    import torch

    from bench.models.phi3v.image_embedding import Phi3VImageEmbedding

    with torch.device("meta"):
        module = Phi3VImageEmbedding.from_config(cfg)
    return {VISION_PREFIX + k: tuple(v.shape) for k, v in module.state_dict().items()}


def _value(name: str, shape: tuple[int, ...], gen) -> Any:
    """A random tensor scaled so activations stay O(1) through the tiny model."""
    import torch

    base = name.rsplit(".", 1)[-1]
    if "norm" in name or "layrnorm" in name:
        if base == "bias":
            return 0.1 * torch.randn(shape, generator=gen)
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if base == "bias":
        return 0.05 * torch.randn(shape, generator=gen)
    if name.endswith(("glb_GN", "sub_GN", "class_embedding")):
        return torch.randn(shape, generator=gen)
    if name.endswith(("embed_tokens.weight", "position_embedding.weight")):
        return 0.5 * torch.randn(shape, generator=gen)
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    return torch.randn(shape, generator=gen) / max(fan_in, 1) ** 0.5


def _params_key(**params: Any) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def make_tiny_phi3v(
    out_dir: str | Path,
    seed: int = 0,
    num_crops: int = 4,
    hd_transform_order: str = "sub_glb",
    projection_cls: str = "mlp",
    words: Sequence[str] | None = None,
    vocab_size: int = 512,
) -> Path:
    """Write a tiny random Phi-3-vision checkpoint into `out_dir` (skipped when already complete)."""
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = _params_key(
        seed=seed,
        num_crops=num_crops,
        order=hd_transform_order,
        proj=projection_cls,
        words=list(words) if words is not None else None,
        vocab=vocab_size,
        version=1,
    )
    stamp = out / STAMP
    if stamp.is_file() and stamp.read_text().strip() == key:
        return out
    if stamp.exists():
        stamp.unlink()

    cfg = tiny_config(num_crops, hd_transform_order, projection_cls, vocab_size, seed)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "auto_map": {
                    "AutoImageProcessor": "image_processing_phi3_v.Phi3VImageProcessor",
                    "AutoProcessor": "processing_phi3_v.Phi3VProcessor",
                },
                "do_convert_rgb": True,
                "image_mean": list(OPENAI_CLIP_MEAN),
                "image_std": list(OPENAI_CLIP_STD),
                "image_processor_type": "Phi3VImageProcessor",
                "num_crops": num_crops,
                "num_img_tokens": 144,
                "processor_class": "Phi3VProcessor",
            },
            indent=2,
        )
    )

    shapes = {**lm_shapes(cfg), **vision_shapes(cfg)}
    gen = torch.Generator().manual_seed(seed)
    tensors = {name: _value(name, shapes[name], gen).float().contiguous() for name in sorted(shapes)}
    first = {k: v for k, v in tensors.items() if k.startswith(("model.embed_tokens.", "model.layers."))}
    second = {k: v for k, v in tensors.items() if k not in first}
    weight_map = {}
    for shard, part in zip(SHARDS, (first, second)):
        save_file(part, str(out / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2
        )
    )

    from bench.demo.tiny_tokenizer import write_tiny_tokenizer

    write_tiny_tokenizer(out, words)
    stamp.write_text(key)
    return out
