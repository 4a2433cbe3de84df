"""Fine-tuning (bench.finetune): the demo recipe's before -> after recall, and one full-size CLIP step.

demo   Synthetic data with 2,000 train images (bench.demo.synthetic, as `bench make-data --train 2000`),
       the demo's tiny random CLIP (`bench make-models`), fine-tuned with the recipe below on the train
       split in this process; recall@10 both ways on the 100 test images, base vs fine-tuned (bench's
       clip embedder on both checkpoints). Targets (issue 12): fine-tuned recall@10 >= 40% both ways,
       untrained near chance, fine-tuning <= 60 s on 2 cores.
       Recipe: steps 150, batch 64, lr 1e-3, weight decay 0.1, no warm-up, constant lr, seed 0.
vitb32 One optimizer step (forward, symmetric InfoNCE, backward, AdamW) of full-size CLIP ViT-B/32
       (random init, transformers' CLIPConfig defaults = openai/clip-vit-base-patch32's shapes) at batch
       32 (224x224 images, 77-token texts) on this CPU: s/step (median of the steps after a first,
       untimed one that allocates the optimizer state) and peak RSS of the process (ru_maxrss).
phi3v  One training step of the phi3v-lm recipe (bench.finetune.phi3v: DoRA r 16 alpha 64 dropout 0.1 on
       VLM2Vec's eight target names, so the language model and the CLIP tower both get an adapter; last-token
       pooling, InfoNCE at temperature 0.02, AdamW) at full Phi-3-vision width (hidden 3072, intermediate
       8192, 32 heads, vocab 32064, the full CLIP ViT-L/14-336 tower: benchmarks.bench_phi3v_lm's random
       checkpoint writer), batch 8 pairs (336x336 images, so num_crops 1 = 2 crops of 336 each and 313
       image tokens; ~20-token captions), float32, whole batch vs GradCache chunks (--chunks none,2). Each
       configuration runs in a fresh process (its own peak RSS, ru_maxrss) with 1 decoder layer; hooks on
       decoder layer 0 during the real step measure its forward time (with and without grad) and the bytes
       autograd saves inside it per pass. Scaled to 32 layers (decoder layers are identical):
           time   = step + 31 * (layer 0 forward without grad + 3 * with grad)   (backward ~ 2x forward)
           memory = peak + 31 * (layer fp32 weights + adapter, grad, 2 Adam moments + saved activations
                    alive at once: both passes of the whole batch, or one chunk's pass with GradCache)
       The whole batch of 8 needs ~50 GB at 1 layer (CLIP tower activations): on a smaller machine its
       child is killed (-9) and reported as failed; run --batch 2 --chunks none to measure per pair.

Usage: .venv/bin/python -m benchmarks.bench_finetune [--part demo|vitb32|phi3v|all] [--threads N] [--steps 3]
       .venv/bin/python -m benchmarks.bench_finetune --part phi3v [--batch 8 --chunks none,2 --num-crops 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks._common import WORK, full_clip_b32, report

RECIPE = dict(name="clip-ft", base="clip", train="synthetic-train", steps=150, batch_size=64, lr=1e-3,
              weight_decay=0.1, warmup_steps=0, schedule="constant", seed=0, log_every=25, save_every=1000)


def _recall(model_dir: Path, test) -> dict[str, float]:
    import torch

    from bench.embedders.clip import ClipEmbedder
    from bench.metrics.retrieval import recall_at_k

    emb = ClipEmbedder(str(model_dir))
    from PIL import Image

    images = torch.stack([emb.preprocess(Image.open(p).convert("RGB")) for p in test.image_paths])
    texts, owner = test.flat_captions()
    return recall_at_k(emb.embed_image_batch(images), emb.embed_texts(texts), owner, ks=(1, 5, 10))


def demo(threads: int | None) -> None:
    import torch

    from bench.data.coco import load_karpathy
    from bench.demo.synthetic import make_synthetic
    from bench.demo.tiny_clip import make_tiny_clip
    from bench.finetune.launch import finetune
    from bench.finetune.params import parse_params

    root = WORK / "finetune_demo"
    data = make_synthetic(root / "data", n_train=2000, n_val=50, n_test=100, seed=0)
    base = make_tiny_clip(root / "tiny-clip", seed=0)
    train = load_karpathy("synthetic-train", data["karpathy"], data["images"], split="train")
    test = load_karpathy("synthetic-test", data["karpathy"], data["images"], split="test")
    if threads:
        torch.set_num_threads(threads)
    before = _recall(base, test)
    out = root / f"clip-ft-{time.time_ns()}"  # fresh folder: always trains
    t0 = time.perf_counter()
    rec = finetune(parse_params(RECIPE), base, [train], out, eval_sets=[test], progress=True, threads=threads)
    total = time.perf_counter() - t0
    after = _recall(out, test)
    for d in ("t2i", "i2t"):
        k = f"{d}_recall@10"
        r1, r5 = f"{d}_recall@1", f"{d}_recall@5"
        print(f"{k}: {before[k]:.1f} -> {after[k]:.1f}  (R@1 {before[r1]:.1f} -> {after[r1]:.1f}, "
              f"R@5 {before[r5]:.1f} -> {after[r5]:.1f})")
        report(f"finetune demo {d} recall@10 after", after[k], ">= 40", after[k] >= 40,
               f"before {before[k]:.1f}")
    report("finetune demo training wall s", rec["wall_s"], "<= 60", rec["wall_s"] <= 60,
           f"finetune() total {total:.1f} s incl. load/save; {rec['samples_per_s']:.0f} samples/s; "
           f"loss {rec['history'][0]['loss']:.3f} -> {rec['final_loss']:.3f}; "
           f"peak RSS {rec['peak_rss_mb']:.0f} MB")


def vitb32(threads: int | None, steps: int) -> None:
    import resource

    import torch
    from transformers import CLIPModel

    from bench.finetune.loss import clip_loss
    from bench.finetune.loop import param_groups

    if threads:
        torch.set_num_threads(threads)
    model = CLIPModel.from_pretrained(full_clip_b32()).train()
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-5, betas=(0.9, 0.98), eps=1e-6)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(32, 3, 224, 224, generator=g)
    ids = torch.randint(0, 49406, (32, 77), generator=g)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        out = model(pixel_values=pixels, input_ids=ids)
        loss = clip_loss(out.image_embeds, out.text_embeds, model.logit_scale)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t)
        print(f"step {i}: {time.perf_counter() - t:.2f} s (loss {float(loss):.3f})", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = sum(p.numel() for p in model.parameters())
    report("finetune ViT-B/32 batch 32 s/step", statistics.median(times), "(info)", True,
           f"{torch.get_num_threads()} threads, {n / 1e6:.1f}M params, steps {[round(t, 2) for t in times]}")
    report("finetune ViT-B/32 batch 32 peak RSS MB", rss, "(info)", True, "ru_maxrss of the process")


def phi3v_step(folder: Path, batch: int, chunk: int | None, num_crops: int) -> dict:
    """One training step in this process (the child of `phi3v`): seconds and peak RSS."""
    import math
    import resource

    import numpy as np
    import torch
    from PIL import Image

    from bench.embedders.phi3v_lm import TEMPLATES
    from bench.finetune.params import LoraParams
    from bench.finetune.phi3v import Phi3VPairTransform, apply_lora, contrastive_step
    from bench.finetune.phi3v_train import load_base
    from bench.finetune.loop import param_groups

    settings = {"image_prompt": TEMPLATES["vlm2vec"]["image"], "text_prompt": TEMPLATES["vlm2vec"]["text"],
                "num_crops": num_crops}
    t = time.perf_counter()
    model, encoder = load_base(folder, settings)
    load_s = time.perf_counter() - t
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.manual_seed(0)
    peft_model = apply_lora(model, LoraParams())
    model.train()
    opt = torch.optim.AdamW(param_groups(peft_model, 0.0), lr=2e-5)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (336, 336, 3), dtype=np.uint8), "RGB")
              for _ in range(batch)]
    colours, shapes = ["red", "blue", "green", "yellow"], ["circle", "square", "star", "cross"]
    captions = [f"a {colours[i % 4]} {shapes[(i // 4) % 4]} on the left of a simple drawing with a white "
                f"background" for i in range(batch)]
    tf = Phi3VPairTransform(encoder)
    tf.epoch = None
    pairs = tf({"image": images, "captions": [[c] for c in captions], "idx": list(range(batch))})
    scale = torch.tensor(math.log(1 / 0.02))
    # Decoder layer 0, watched during the real step: its forward time (with and without grad) and the
    # bytes autograd saves inside it per forward with grad (what each further layer would add).
    layer = model.model.layers[0]
    watch = {"on": False, "t0": 0.0, "fwd_grad_s": 0.0, "fwd_nograd_s": 0.0, "saved": [], "seen": set()}

    def pre(*_):
        watch.update(on=True, t0=time.perf_counter())
        if torch.is_grad_enabled():
            watch["saved"].append(0)
            watch["seen"] = set()

    def post(*_):
        key = "fwd_grad_s" if torch.is_grad_enabled() else "fwd_nograd_s"
        watch[key] += time.perf_counter() - watch["t0"]
        watch["on"] = False

    def pack(x):
        ptr = (x.untyped_storage().data_ptr(), x.untyped_storage().nbytes())
        if watch["on"] and ptr not in watch["seen"]:
            watch["seen"].add(ptr)
            watch["saved"][-1] += ptr[1]
        return x

    layer.register_forward_pre_hook(pre)
    layer.register_forward_hook(post)
    t = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss = contrastive_step(encoder, pairs, scale, chunk)
    opt.step()
    opt.zero_grad(set_to_none=True)
    step_s = time.perf_counter() - t
    # alive at once in one layer: both sides of the whole batch, or one chunk's pass (GradCache)
    saved = watch["saved"]
    alive = sum(saved) if not chunk else max(saved)
    adapter_layer = sum(p.numel() for n, p in layer.named_parameters() if p.requires_grad)
    per_layer_s = watch["fwd_nograd_s"] + 3 * watch["fwd_grad_s"]  # backward ~ 2x its forward
    per_layer_mb = (sum(p.numel() for p in layer.parameters()) * 4 + adapter_layer * 4 * 3 + alive) / 2**20
    return {"layers": int(model.config.num_hidden_layers), "batch": batch, "chunk": chunk,
            "image_tokens": int(pairs["images"][0]["num_img_tokens"]), "step_s": round(step_s, 2),
            "loss": round(float(loss), 4), "load_s": round(load_s, 1),
            "peak_rss_after_load_mb": round(rss_loaded),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "threads": torch.get_num_threads(),
            "trainable_params": sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
            "one_layer_params": sum(p.numel() for p in layer.parameters()),
            "layer0_fwd_grad_s": round(watch["fwd_grad_s"], 2),
            "layer0_fwd_nograd_s": round(watch["fwd_nograd_s"], 2),
            "layer0_saved_mb_per_pass": [round(b / 2**20) for b in saved],
            "per_layer_s": round(per_layer_s, 2), "per_layer_mb": round(per_layer_mb),
            "scaled_32_step_s": round(step_s + 31 * per_layer_s, 1),
            "scaled_32_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                                           + 31 * per_layer_mb)}


def phi3v(batch: int, chunks: list[int | None], num_crops: int, workdir: Path, threads: int | None) -> None:
    """Runs phi3v_step in a fresh process per chunking (1 decoder layer) and reports it scaled to 32."""
    import json
    import os
    import subprocess
    import sys

    from benchmarks.bench_phi3v_lm import write_checkpoint

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    folder = workdir / "layers1"
    if not (folder / "_done").is_file():
        write_checkpoint(folder, 1)
    for chunk in chunks:
        cmd = [sys.executable, "-m", "benchmarks.bench_finetune", "--phi3v-child", str(folder),
               "--batch", str(batch), "--num-crops", str(num_crops)]
        out = subprocess.run(cmd + (["--chunk", str(chunk)] if chunk else []), env=env, capture_output=True,
                             text=True)
        if out.returncode:
            print(f"batch {batch} chunk {chunk} failed (exit {out.returncode}; -9: killed, out of memory): "
                  f"{out.stderr[-1500:]}", file=sys.stderr)
            continue
        got = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(got), flush=True)
        how = f"GradCache chunks of {chunk}" if chunk else "whole batch"
        facts = (f"float32, {got['threads']} threads, {got['image_tokens']} image tokens/image (num_crops "
                 f"{num_crops}), DoRA r16 on VLM2Vec targets; 1 decoder layer run")
        report(f"finetune phi3v-lm LoRA batch {batch} {how} s/step (1 layer)", got["step_s"], "(info)", True,
               facts)
        report(f"finetune phi3v-lm LoRA batch {batch} {how} s/step, 32 layers (scaled)",
               got["scaled_32_step_s"], "(info)", True,
               f"step + 31 * per-layer {got['per_layer_s']} s (layer 0's forward time without grad "
               f"+ 3x with)")
        report(f"finetune phi3v-lm LoRA batch {batch} {how} peak RSS MiB (1 layer)", got["peak_rss_mb"],
               "(info)", True, facts)
        report(f"finetune phi3v-lm LoRA batch {batch} {how} peak RSS MiB, 32 layers (scaled)",
               got["scaled_32_peak_rss_mb"], "(info)", True,
               f"peak + 31 * per-layer {got['per_layer_mb']} MiB (fp32 weights + adapter, grad, Adam "
               f"moments + "
               f"activations autograd saved in layer 0, all passes alive at once or one chunk)")


def main() -> None:
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("demo", "vitb32", "phi3v", "all"), default="all",
                    help="all: demo and vitb32 (phi3v only by name: minutes and ~17 GB)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--steps", type=int, default=3, help="timed ViT-B/32 steps after the first")
    ap.add_argument("--batch", type=int, default=8, help="phi3v: pairs per step")
    ap.add_argument("--chunk", type=int, default=None,
                    help="phi3v child: GradCache chunk (none: whole batch)")
    ap.add_argument("--chunks", default="none,2", help="phi3v: chunkings to measure, e.g. none,2")
    ap.add_argument("--num-crops", type=int, default=1,
                    help="phi3v: Phi-3-V num_crops (1: 2 crops per image)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_phi3v_lm"), help="phi3v: checkpoints")
    ap.add_argument("--phi3v-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phi3v_child is not None:
        import json

        print(json.dumps(phi3v_step(args.phi3v_child, args.batch, args.chunk, args.num_crops)))
        sys.stdout.flush()
        return
    if args.part in ("demo", "all"):
        demo(args.threads)
    if args.part in ("vitb32", "all"):
        vitb32(args.threads, args.steps)
    if args.part == "phi3v":  # not in "all" (make perf): ~10 min and 17 GB on a 2-core CPU
        chunks = [None if c.strip() == "none" else int(c) for c in args.chunks.split(",")]
        phi3v(args.batch, chunks, args.num_crops, args.workdir, args.threads)


if __name__ == "__main__":
    main()
