"""bf16 and float32 end to end (issue 17): `bench embed` against the user's loop, and against the bare model.

CLIP ViT-B/32 (random weights, full size), N JPEGs 640x480, CPU.
  Processes (imports, model load, decode, model, file write; wall time of the whole process):
    U. the user's float32 loop: benchmarks/user_loop.py (DataLoader with 2 workers + CLIPImageProcessor +
       batched get_image_features, batch 16)
    B32 / B16. `bench embed clip --model M --images D --output F` with --dtype float32 / bfloat16 (defaults
       otherwise)
    Targets: U / B16 >= 2.0, U / B32 >= 1.0; cosine of every B16 vector to its B32 vector >= 0.9999.
  In one process (no imports or load), per dtype, batch B:
    bare: the embedder's model (get_image_features) on pre-made pixel batches in the model dtype, on
          torch's default thread count and with bench's per-batch choice (bench.threads); the faster
          of the two is the ceiling
    bench: bench's loader (decode + preprocess in a worker) + embed_image_batch, with the thread count
           chosen batch by batch (bench.threads), as `bench embed` runs it
    Targets: bench / bare images/s >= 0.85 in bfloat16, >= 0.9 in float32.
Rounds alternate (the process order rotates each round); medians are reported; the machine is shared.
Usage: python -m benchmarks.bench_e2e [--images 192] [--rounds 3] [--batch 16] [--part processes|loop|all]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from benchmarks._common import ROOT, full_clip_b32, jpeg_folder, report


def _timed(cmd: list[str]) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    return took


def processes(model: Path, images: Path, rounds: int) -> None:
    import torch
    from safetensors.torch import load_file

    out = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    py = sys.executable
    cmds = {
        "user": [py, "-m", "benchmarks.user_loop", "--model", str(model), "--images", str(images),
                 "--output", str(out / "user.safetensors")],
        "bench32": [py, "-m", "bench", "embed", "clip", "--model", str(model), "--images", str(images),
                    "--output", str(out / "b32.safetensors")],
        "bench16": [py, "-m", "bench", "embed", "clip", "--model", str(model), "--images", str(images),
                    "--output", str(out / "b16.safetensors"), "--dtype", "bfloat16"],
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    order = list(cmds)
    for r in range(rounds):
        for k in order[r % 3:] + order[:r % 3]:
            times[k].append(_timed(cmds[k]))
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items())
              + f" (load {os.getloadavg()[0]:.1f})", flush=True)
    u, b32, b16 = (median(times[k]) for k in ("user", "bench32", "bench16"))
    a, b = load_file(out / "b32.safetensors"), load_file(out / "b16.safetensors")
    ref = load_file(out / "user.safetensors")
    cos = min(float(torch.nn.functional.cosine_similarity(a[k], b[k], dim=0)) for k in a)
    user_gap = max(float((a[k] - ref[Path(k).name]).abs().max()) for k in a)
    load = f"load average {os.getloadavg()[0]:.1f}"
    report("bench embed bf16 / user's float32 loop (processes)", u / b16, ">= 2.0", u / b16 >= 2.0,
           f"user {u:.2f} s, bench bf16 {b16:.2f} s, medians of {rounds}; {load}")
    report("bench embed float32 / user's float32 loop (processes)", u / b32, ">= 1.0", u / b32 >= 1.0,
           f"user {u:.2f} s, bench float32 {b32:.2f} s; float32 vectors max |diff| to the user's {user_gap:.1e}")
    report("bench embed bf16 cosine to float32 (min over images)", cos, ">= 0.9999", cos >= 0.9999,
           f"min {cos:.6f} over {len(a)} images", unit="x", kind="quality")


def loop(model: Path, images: Path, rounds: int, batch: int, workers: int) -> None:
    import torch

    from bench.data.images import load_image
    from bench.embedders.base import RuntimeOptions
    from bench.embedders.clip import ClipEmbedder
    from bench.loader import image_batches
    from bench.threads import ThreadTuner

    paths = sorted(images.glob("*.jpg"))
    for dtype, target in (("bfloat16", 0.85), ("float32", 0.9)):
        emb = ClipEmbedder(model=str(model), runtime=RuntimeOptions(dtype=dtype, batch_size=batch))
        pixels = [emb.collate([emb.preprocess(load_image(p)) for p in paths[i:i + batch]])
                  for i in range(0, len(paths), batch)]

        def run_bare(tuned: bool = False) -> float:
            tuner = ThreadTuner()
            t = time.perf_counter()
            with torch.inference_mode():
                for px in pixels:
                    if tuned:
                        tuner.before()
                    emb.model.get_image_features(pixel_values=px)
                    if tuned:
                        tuner.after(len(px))
            took = time.perf_counter() - t
            tuner.restore()
            return len(paths) / took

        def run_bench() -> float:
            tuner = ThreadTuner()
            t = time.perf_counter()
            batches = image_batches(emb, paths, batch, workers)
            while True:
                tuner.before()
                b = next(batches, None)
                if b is None:
                    break
                tuner.after(len(emb.embed_image_batch(b)))
            took = time.perf_counter() - t
            tuner.restore()
            threads.append(tuner.history)
            return len(paths) / took

        run_bare()  # warm-up
        runs = {"bare": run_bare, "bare, tuned threads": lambda: run_bare(True), "bench": run_bench}
        rates: dict[str, list[float]] = {k: [] for k in runs}
        threads: list[list[int]] = []
        order = list(runs)
        for r in range(rounds):
            for k in order[r % 3:] + order[:r % 3]:
                rates[k].append(runs[k]())
            print(f"{dtype} round {r}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in rates.items())
                  + f" (load {os.getloadavg()[0]:.1f}); bench's threads per batch {threads[-1]}", flush=True)
        A, A_tuned, B = (median(rates[k]) for k in runs)
        ceiling = max(A, A_tuned)
        report(f"bench end to end / bare model, {dtype} (images/s)", B / ceiling, f">= {target}",
               B / ceiling >= target,
               f"bench {B:.1f} img/s; bare model {A:.1f} img/s on {torch.get_num_threads()} threads, {A_tuned:.1f} "
               f"with the thread count chosen per batch (the faster is the ceiling); batch {batch}, {workers} "
               f"worker(s), medians of {rounds}; load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--part", choices=["processes", "loop", "all"], default="all")
    args = ap.parse_args()
    images, model = jpeg_folder(args.images), full_clip_b32()
    print(f"{args.images} JPEGs 640x480, CLIP ViT-B/32 random init; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.part in ("processes", "all"):
        processes(model, images, args.rounds)
    if args.part in ("loop", "all"):
        loop(model, images, args.rounds, args.batch, args.workers)


if __name__ == "__main__":
    main()
