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

Usage: .venv/bin/python -m benchmarks.bench_finetune [--part demo|vitb32|all] [--threads N] [--steps 3]
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
    from bench.finetune.train import param_groups

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("demo", "vitb32", "all"), default="all")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--steps", type=int, default=3, help="timed ViT-B/32 steps after the first")
    args = ap.parse_args()
    if args.part in ("demo", "all"):
        demo(args.threads)
    if args.part in ("vitb32", "all"):
        vitb32(args.threads, args.steps)


if __name__ == "__main__":
    main()
