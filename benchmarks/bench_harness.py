"""Harness overhead and the naive way (issue 6, targets 1 and 2).

CLIP ViT-B/32 (random weights, full size), N JPEGs of 640x480 read from disk, float32, CPU:
  A. bare model: get_image_features on pre-made pixel tensors, batch B      (the ceiling)
  B. bench end to end: bench's loader (decode + preprocess in a worker) + ClipEmbedder, batch B
  C. naive: one image at a time through transformers' CLIPImageProcessor and the model (the seed's way)
Target 1: B / A >= 0.9.  Target 2: B / C >= 1.5.  Rounds alternate A, B, C; medians are reported.
Usage: python -m benchmarks.bench_harness [--images 256] [--batch 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from statistics import median

from benchmarks._common import full_clip_b32, jpeg_folder, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    from bench.data.images import load_image
    from bench.embedders.base import RuntimeOptions
    from bench.embedders.clip import ClipEmbedder
    from bench.loader import image_batches

    folder = jpeg_folder(args.images)
    paths = sorted(folder.glob("*.jpg"))
    model_dir = full_clip_b32()
    emb = ClipEmbedder(model=str(model_dir), runtime=RuntimeOptions(batch_size=args.batch))
    bare = CLIPModel.from_pretrained(model_dir).eval()
    proc = CLIPImageProcessor.from_pretrained(model_dir)
    pixels = [emb.collate([emb.preprocess(load_image(p)) for p in paths[i:i + args.batch]])
              for i in range(0, len(paths), args.batch)]
    print(f"torch threads {torch.get_num_threads()}, {len(paths)} images, batch {args.batch}, "
          f"workers {args.workers}", flush=True)

    def run_bare() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for px in pixels:
                bare.get_image_features(pixel_values=px)
        return len(paths) / (time.perf_counter() - t)

    def run_bench() -> float:
        t = time.perf_counter()
        for batch in image_batches(emb, paths, args.batch, args.workers):
            emb.embed_image_batch(batch)
        return len(paths) / (time.perf_counter() - t)

    def run_naive() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for p in paths:
                from PIL import Image

                inputs = proc(images=Image.open(p), return_tensors="pt")
                bare.get_image_features(**inputs)
        return len(paths) / (time.perf_counter() - t)

    run_bare()  # warm-up (first forward allocates)
    a, b, c = [], [], []
    for r in range(args.rounds):
        a.append(run_bare())
        b.append(run_bench())
        c.append(run_naive())
        print(f"round {r}: bare {a[-1]:.2f} img/s, bench {b[-1]:.2f} img/s, naive {c[-1]:.2f} img/s", flush=True)
    A, B, C = median(a), median(b), median(c)
    report("harness_overhead bench/bare images/s", B / A, ">= 0.9", B / A >= 0.9,
           f"bench {B:.2f} img/s, bare model {A:.2f} img/s")
    report("naive_way bench/naive images/s", B / C, ">= 1.5", B / C >= 1.5,
           f"bench {B:.2f} img/s, naive {C:.2f} img/s")


if __name__ == "__main__":
    main()
