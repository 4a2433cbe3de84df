"""Compute efficiency of a full-size CLIP image tower (random weights) on this machine: ViT-B/32 (default)
or ViT-L/14-336 (`--model l14-336`, the tower of Phi-3-vision; ~30x the FLOPs per image: use a small batch).

Per dtype (float32, bfloat16): GFLOP per image (torch's flop counter, bench.metrics.flops), model-only
images/s on pre-made batches (bench's ClipEmbedder, measure_loop with the device-aware sync), achieved
GFLOP/s, the measured matmul peak in that dtype (measured here, not cached: it reflects the load now)
and the achieved % of it. Figures for information (no targets yet; issue 17 sets them).
The machine is shared: each round measures the peak and then the model back to back, so a round's
fraction compares two figures taken under the same load; the figures reported are medians over rounds.

Usage: python -m benchmarks.bench_flops [--model b32|l14-336] [--batch 16] [--rounds 3] [--min-time 2] [--dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse
import os

from benchmarks._common import full_clip_b32, full_clip_l14_336, jpeg_folder, report

MODELS = {"b32": ("ViT-B/32", full_clip_b32), "l14-336": ("ViT-L/14-336", full_clip_l14_336)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="b32")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtypes", nargs="+", default=None, help="default: bench.metrics.flops.peak_dtypes")
    args = ap.parse_args()

    from statistics import median

    import torch

    from bench.data.images import load_image
    from bench.embedders.base import RuntimeOptions
    from bench.embedders.clip import ClipEmbedder
    from bench.metrics import flops as fl
    from bench.metrics.speed import measure_loop

    dtypes = args.dtypes or fl.peak_dtypes("cpu")
    n = args.batch * args.batches
    paths = sorted(jpeg_folder(n).glob("*.jpg"))[:n]
    label, make = MODELS[args.model]
    model_dir = make()
    tag = "" if args.model == "b32" else f"{args.model} "
    load = os.getloadavg()
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"torch threads {torch.get_num_threads()}, cpu capability {cap}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    for dtype in dtypes:
        emb = ClipEmbedder(model=str(model_dir), runtime=RuntimeOptions(batch_size=args.batch, dtype=dtype))
        batches = [emb.collate([emb.preprocess(load_image(p)) for p in paths[i:i + args.batch]])
                   for i in range(0, n, args.batch)]
        per_image = fl.count_flops(lambda: emb.embed_image_batch(batches[0])) / args.batch
        state = {"i": 0}

        def step() -> None:
            emb.embed_image_batch(batches[state["i"] % len(batches)])  # noqa: B023 (called in this loop)
            state["i"] += 1

        step()  # warm-up
        rounds = []
        for r in range(args.rounds):
            peak = fl.matmul_peak("cpu", dtype)
            res = measure_loop(step, warmup=1, min_iterations=len(batches), min_time_s=args.min_time,
                               items_per_step=args.batch)
            ips = res.items_per_s or float("nan")
            rounds.append((ips, peak["gflops"], 100 * ips * per_image / 1e9 / peak["gflops"]))
            print(f"{dtype} round {r}: {ips:.1f} img/s, peak {peak['gflops']:.0f} GFLOP/s, "
                  f"{rounds[-1][2]:.1f}% of peak, load {os.getloadavg()[0]:.2f}", flush=True)
        ips, peak_gflops, frac = (median(x[i] for x in rounds) for i in range(3))
        peak = {"gflops": peak_gflops, "n": peak["n"]}
        gflops = fl.achieved(ips, per_image) or float("nan")
        detail = (f"{per_image / 1e9:.2f} GFLOP/image x {ips:.1f} img/s = {gflops:.0f} GFLOP/s; matmul peak "
                  f"{peak['gflops']:.0f} GFLOP/s ({peak['n']}^2); medians of {args.rounds} rounds; "
                  f"load {os.getloadavg()[0]:.2f}")
        info = f"(info) {label} image tower"
        report(f"flops {tag}{dtype} GFLOP/image", per_image / 1e9, info, True, detail, unit="GFLOP",
               higher_is_better=False, kind="speed")
        report(f"flops {tag}{dtype} model images/s", ips, info, True, detail, unit="img/s", higher_is_better=True,
               kind="speed")
        report(f"flops {tag}{dtype} achieved GFLOP/s", gflops, info, True, detail, unit="GFLOP/s",
               higher_is_better=True, kind="speed")
        report(f"flops {tag}{dtype} matmul peak GFLOP/s", peak["gflops"], info, True, detail, unit="GFLOP/s",
               higher_is_better=True, kind="speed")
        report(f"flops {tag}{dtype} % of peak", frac, info, True, detail, unit="%", higher_is_better=True,
               kind="speed")


if __name__ == "__main__":
    main()
