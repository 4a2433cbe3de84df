"""Where `bench embed clip`'s time goes, per image, by stage, in float32 and bf16 (issue 17's closing note).

Every stage is timed on its own, in this process, one after the other (no overlap), over N JPEGs 640x480
with a full-size ViT-B/32 (random weights), batch B:
  process: import torch, import transformers' CLIP model (a fresh interpreter each), loading the embedder
  decode (PIL open + RGB), resize (bicubic, shortest edge 224), crop + rescale + normalize (the lookup
  table), to the model dtype, collate (stack), forward (get_image_features) on 1 and on 2 threads,
  L2 normalize + float, the per-image copies and the safetensors write.
The forward is then split by torch.profiler into matmul-like operators (linear/mm/bmm/sdpa/conv) and the
rest, and set against the matmul peak measured now (bench.metrics.flops.matmul_peak): what the gap to
the peak is made of. Figures for information; the machine is shared, `uptime` is printed.
Usage: python -m benchmarks.profile_e2e [--images 64] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import full_clip_b32, jpeg_folder

MATMUL_OPS = ("addmm", "aten::mm", "bmm", "linear", "scaled_dot_product", "conv", "matmul", "mkldnn")


def _import_s(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", f"import time; t = time.perf_counter(); {code}; "
                          "print(time.perf_counter() - t)"], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _ms(fn, n_items: int, repeat: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return 1000 * (time.perf_counter() - t) / (n_items * repeat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from bench.data.images import load_image
    from bench.embedders.base import RuntimeOptions
    from bench.embedders.clip import ClipEmbedder
    from bench.metrics.flops import count_flops, matmul_peak
    from bench.models.preprocess import _center_crop, _value_table, resize_shortest_edge

    paths = sorted(jpeg_folder(args.images).glob("*.jpg"))
    model = full_clip_b32()
    n, bs = len(paths), args.batch
    print(f"{n} JPEGs 640x480, ViT-B/32 random init, batch {bs}; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"process: import torch {_import_s('import torch'):.2f} s, import torch + transformers' CLIP "
          f"{_import_s('import torch; from transformers import CLIPModel'):.2f} s")
    rows: dict[str, dict[str, float]] = {}
    for dtype in ("float32", "bfloat16"):
        t = time.perf_counter()
        emb = ClipEmbedder(model=str(model), runtime=RuntimeOptions(dtype=dtype, batch_size=bs))
        load_s = time.perf_counter() - t
        s = emb.preprocess_settings
        tdt = getattr(torch, dtype)
        r: dict[str, float] = {}
        images = []
        r["decode"] = _ms(lambda: images.extend(load_image(p) for p in paths), n)
        size = s.size
        resized = []
        r["resize"] = _ms(lambda: resized.extend(
            im.resize(resize_shortest_edge(im.width, im.height, size), resample=s.resample) for im in images), n)
        lut = _value_table(float(s.rescale_factor), tuple(s.mean), tuple(s.std))
        items = []

        def crop_norm() -> None:
            for im in resized:
                arr = _center_crop(np.asarray(im), s.crop)
                out = np.empty((3, *arr.shape[:2]), dtype=np.float32)
                for c in range(3):
                    np.take(lut[c], arr[..., c], out=out[c])
                items.append(torch.from_numpy(out))
        r["crop + normalize"] = _ms(crop_norm, n)
        conv = []
        r["to model dtype"] = _ms(lambda: conv.extend(x.to(tdt) for x in items), n)
        batches = []
        r["collate"] = _ms(lambda: batches.extend(torch.stack(conv[i:i + bs]) for i in range(0, n, bs)), n)
        feats = []
        with torch.inference_mode():
            emb.model.get_image_features(pixel_values=batches[0])  # warm-up
            for threads in (1, 2):
                torch.set_num_threads(threads)
                feats.clear()
                r[f"forward, {threads} thread(s)"] = _ms(
                    lambda: feats.extend(emb._image_forward(b) for b in batches), n)
            vecs = []
            r["L2 normalize + float"] = _ms(lambda: vecs.extend(F.normalize(f.float(), dim=-1) for f in feats), n)
            tensors = {}
            r["per-image copies"] = _ms(lambda: tensors.update(
                {f"{i}": v.contiguous().clone() for i, v in enumerate(torch.cat(vecs))}), n)
            with tempfile.TemporaryDirectory() as tmp:
                r["safetensors write"] = _ms(lambda: save_file(tensors, str(Path(tmp) / "e.safetensors")), n)
            gflop = count_flops(lambda: emb._image_forward(batches[0])) / len(batches[0]) / 1e9
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for b in batches[:2]:
                    emb._image_forward(b)
        ops = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in ops)
        mm = sum(e.self_cpu_time_total for e in ops if any(k in e.key for k in MATMUL_OPS))
        top = sorted(ops, key=lambda e: -e.self_cpu_time_total)[:6]
        peak = matmul_peak("cpu", dtype)["gflops"]
        fwd = r["forward, 2 thread(s)"]
        rows[dtype] = r
        print(f"\n{dtype}: embedder load {load_s:.2f} s; {gflop:.2f} GFLOP/image; matmul peak now {peak:.0f} GFLOP/s "
              f"= {1000 * gflop / peak:.1f} ms/image at peak; forward {fwd:.1f} ms/image on 2 threads = "
              f"{gflop * 1000 / fwd:.0f} GFLOP/s ({100 * gflop * 1000 / fwd / peak:.0f}% of peak)")
        print(f"  forward by operator (torch.profiler, self CPU time, 2 threads): matmul-like "
              f"{100 * mm / total:.0f}%, everything else {100 * (total - mm) / total:.0f}%; top: "
              + ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in top))
        torch.set_num_threads(2)
    print(f"\nper-image ms by stage (sequential; load average now {os.getloadavg()[0]:.1f})")
    print(f"{'stage':28s} {'float32':>9s} {'bfloat16':>9s}")
    for k in rows["float32"]:
        print(f"{k:28s} {rows['float32'][k]:9.2f} {rows['bfloat16'][k]:9.2f}")


if __name__ == "__main__":
    main()
