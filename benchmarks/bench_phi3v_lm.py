"""Peak memory and time per image / per caption of `phi3v-lm` at full width, reduced depth.

Full-size Phi-3-vision language model configuration (hidden 3072, intermediate 8192, 32 heads,
vocab 32064, "su" rope) with random weights, cut to `--layers` decoder layers (32 in the real
model), plus the full-size image side (CLIP ViT-L/14-336 + projection, num_crops 4). The random
checkpoint is written in the real layout (bf16, two shards + index, tiny tokenizer), then loaded
and run through the real embedder in a fresh process, so the peak RSS covers loading too.

Scaling to 32 layers (stated in the output):
  time  = image-side time (vision tower + projection + token lookup) + 32 * (LM time / layers)
  memory = measured peak RSS + (32 - layers) * bytes of one decoder layer in the run dtype
(decoder layers are identical, run one after another, and their activations are freed between
layers, so both grow linearly with the layer count; the final RMSNorm is negligible).

Usage: OMP_NUM_THREADS=2 python -m benchmarks.bench_phi3v_lm [--layers 2] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import PHI3_HIDDEN, PHI3_VOCAB, ROOT, phi3v_config, report

FULL_LAYERS = 32
HIDDEN, VOCAB = PHI3_HIDDEN, PHI3_VOCAB
VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def full_config(layers: int) -> dict:
    """config.json of Phi-3-vision-128k-instruct with `layers` decoder layers, its tower spelled out."""
    return phi3v_config(layers, layer_idx=-2, type_feature="patch", vision_config=VISION)


def _shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor name -> shape, from the modules built on the meta device."""
    from bench.models.phi3v.lm import build_phi3_model, phi3_config_from_dict

    shapes = {"model." + k: tuple(v.shape)
              for k, v in build_phi3_model(phi3_config_from_dict(config)).state_dict().items()}
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    from bench.demo.tiny_phi3v import vision_shapes

    shapes.update(vision_shapes(config))  # the real key layout, from the module itself
    return shapes


def write_checkpoint(folder: Path, layers: int, seed: int = 0) -> None:
    """Random bf16 checkpoint in the real layout (two shards + index), tokenizer and preprocessor config."""
    import torch
    from safetensors.torch import save_file

    from bench.demo.tiny_tokenizer import write_tiny_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    config = full_config(layers)
    shapes = _shapes(config)
    gen = torch.Generator().manual_seed(seed)
    names = sorted(shapes)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        tensors = {}
        for name in part:
            shape = shapes[name]
            if name.endswith(("layernorm.weight", "norm.weight", "layer_norm1.weight", "layer_norm2.weight",
                              "pre_layrnorm.weight", "post_layernorm.weight")):
                t = torch.ones(shape)
            elif name.endswith(".bias"):
                t = torch.zeros(shape)
            else:
                t = torch.randn(shape, generator=gen) * 0.02
            tensors[name] = t.to(torch.bfloat16)
            weight_map[name] = shard
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Phi3VImageProcessor", "num_crops": 4, "num_img_tokens": 144,
        "do_convert_rgb": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711]}, indent=1))
    write_tiny_tokenizer(folder, vocab_size=VOCAB)
    (folder / "_done").write_text("ok")


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(folder: Path, dtype: str, n_captions: int, repeats: int) -> dict:
    """Load the embedder and time one image and a batch of captions; runs in a fresh process."""
    import numpy as np
    import torch
    from PIL import Image

    from bench.embedders.base import RuntimeOptions
    from bench.embedders.phi3v_lm import Phi3VLMEmbedder
    from bench.models.phi3v.lm import param_bytes
    from bench.models.phi3v.tokenizer import build_inputs

    base_mb = _rss_mb()
    t0 = time.perf_counter()
    emb = Phi3VLMEmbedder(str(folder), num_crops=4, runtime=RuntimeOptions(dtype=dtype, batch_size=n_captions))
    load_s = time.perf_counter() - t0
    load_peak_mb = _peak_mb()
    lm = emb.model
    layers = lm.config.num_hidden_layers
    layer_bytes = param_bytes(lm.model.layers[0])

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), "RGB")
    item = emb.preprocess(image)
    batch = emb.collate([item])
    ids, mask = build_inputs(emb.tokenizer, [emb.image_prompt], batch["num_img_tokens"], emb.bos_id, emb.pad_id)
    pv = batch["pixel_values"].to(lm.dtype)
    img_vis, img_lm = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            t = time.perf_counter()
            embeds = lm.input_embeddings(ids, pv, batch["image_sizes"]).to(lm.dtype)
            img_vis.append(time.perf_counter() - t)
            t = time.perf_counter()
            lm.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
            img_lm.append(time.perf_counter() - t)
        t = time.perf_counter()
        emb.embed_image_batch(batch)  # the real path end to end, once
        img_e2e = time.perf_counter() - t

    captions = [f"a {c} {s} on the {p} of a simple drawing with a {c2} background"
                for c, s, p, c2 in zip(["red", "blue", "green", "yellow"] * 8, ["circle", "square", "star", "cross"] * 8,
                                       ["left", "right", "top", "bottom"] * 8, ["white", "gray", "beige", "orange"] * 8)]
    captions = captions[:n_captions]
    prompts = [emb.text_prompt.replace("{text}", c) for c in captions]
    tids, tmask = build_inputs(emb.tokenizer, prompts, None, emb.bos_id, emb.pad_id)
    txt_emb, txt_lm = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            t = time.perf_counter()
            embeds = lm.input_embeddings(tids)
            txt_emb.append(time.perf_counter() - t)
            t = time.perf_counter()
            lm.model(inputs_embeds=embeds, attention_mask=tmask, use_cache=False)
            txt_lm.append(time.perf_counter() - t)
        t = time.perf_counter()
        emb.embed_texts(captions)
        txt_e2e = time.perf_counter() - t

    peak_mb = _peak_mb()
    vis, lm_img = min(img_vis), min(img_lm)
    tok_lookup, lm_txt = min(txt_emb), min(txt_lm)
    extra_layers_mb = (FULL_LAYERS - layers) * layer_bytes / 2**20
    n_img_params = sum(p.numel() for p in lm.image_embed.parameters())
    return {
        "dtype": dtype, "threads": torch.get_num_threads(), "layers_run": layers, "num_crops": emb.num_crops,
        "image_size_wxh": [640, 480], "image_tokens": int(batch["num_img_tokens"][0]),
        "image_prompt_tokens": int(mask.sum()), "captions": n_captions,
        "caption_prompt_tokens_mean": float(tmask.sum(1).float().mean()), "caption_batch_width": int(tmask.shape[1]),
        "weights_mb_run": round(emb.weight_bytes / 2**20, 1),
        "weights_mb_full_32_layers": round((emb.weight_bytes + (FULL_LAYERS - layers) * layer_bytes) / 2**20, 1),
        "one_layer_mb": round(layer_bytes / 2**20, 1), "image_side_params": int(n_img_params),
        "rss_before_load_mb": round(base_mb, 1), "load_seconds": round(load_s, 2),
        "peak_rss_after_load_mb": round(load_peak_mb, 1), "peak_rss_mb": round(peak_mb, 1),
        "peak_rss_scaled_32_layers_mb": round(peak_mb + extra_layers_mb, 1),
        "image": {"image_side_s": round(vis, 3), "lm_s": round(lm_img, 3), "lm_per_layer_s": round(lm_img / layers, 3),
                  "end_to_end_s": round(img_e2e, 3),
                  "scaled_32_layers_s": round(vis + FULL_LAYERS * lm_img / layers, 2)},
        "caption": {"token_lookup_s": round(tok_lookup / n_captions, 5),
                    "lm_per_layer_s": round(lm_txt / layers / n_captions, 5),
                    "end_to_end_s": round(txt_e2e / n_captions, 4),
                    "scaled_32_layers_s": round((tok_lookup + FULL_LAYERS * lm_txt / layers) / n_captions, 4)},
        "scaling": "time = image side + 32 * LM time / layers_run; memory = peak RSS + (32 - layers_run) * one_layer_mb",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--captions", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_phi3v_lm"))
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    folder = args.workdir / f"layers{args.layers}"
    if args.measure:
        print(json.dumps(measure(folder, args.dtype, args.captions, args.repeats)))
        return 0
    if not (folder / "_done").is_file():
        t = time.perf_counter()
        write_checkpoint(folder, args.layers)
        print(f"wrote random checkpoint to {folder} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", __spec__.name, "--measure", "--layers", str(args.layers),
                          "--dtype", args.dtype, "--captions", str(args.captions), "--repeats", str(args.repeats),
                          "--workdir", str(args.workdir)], env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        print(out.stderr, file=sys.stderr)
        return out.returncode
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=2))
    scaled = f"{args.layers} of 32 layers run, scaled to 32 ({result['scaling']})"
    report("phi3v-lm s/image, 32 layers (scaled)", result["image"]["scaled_32_layers_s"], "(info)", True,
           f"{args.dtype}, num_crops 4, {result['image_tokens']} image tokens; {scaled}")
    report("phi3v-lm s/caption, 32 layers (scaled)", result["caption"]["scaled_32_layers_s"], "(info)", True,
           f"batch of {result['captions']} captions, ~{result['caption_prompt_tokens_mean']:.0f} tokens each")
    report("phi3v-lm peak RSS MiB, 32 layers (scaled)", result["peak_rss_scaled_32_layers_mb"], "(info)", True,
           f"measured {result['peak_rss_mb']:.0f} MiB with {args.layers} layers; weights "
           f"{result['weights_mb_run']:.0f} MiB run / {result['weights_mb_full_32_layers']:.0f} MiB full")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
