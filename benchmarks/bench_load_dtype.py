"""Peak memory of loading clip / phi3v / phi3v-lm in bfloat16 vs float32 (issue 17: bf16 loads in bf16).

Checkpoints (random weights, written once under .cache/perf/load_dtype/, reused), each stored both in
float32 and in bfloat16 (a converted copy), so every (stored, runtime) dtype pair is measured:
  clip      CLIP ViT-B/32 at full size (benchmarks._common.full_clip_b32, 151M parameters);
  phi3v     Phi-3-vision's full image side (ViT-L/14-336 + projection, 0.31B), from the checkpoint below;
  phi3v-lm  Phi-3-vision's language model at full width (hidden 3072, vocab 32064) with --layers decoder
            layers + the full image side (benchmarks.bench_phi3v_lm.write_checkpoint's layout).
Each load runs in a FRESH subprocess, after the imports (not measured), with the page cache warmed by
reading the checkpoint's files once. Measured with bench.metrics.memory.PeakMemory (the kernel's VmHWM,
reset through /proc/self/clear_refs), MiB over the RSS after imports:
  load       the embedder's constructor (what `bench embed` does), then every weight read once
             (weights left memory-mapped are only counted once touched: a lazily mapped float32 load
             looks free until its first forward, which then pays for it);
  settled    RSS after that, over the RSS after imports;
  embed      one more PeakMemory block around embedding a few images (clip: 64 at 640x480, batch 32;
             phi3v / phi3v-lm: 1 image, num_crops 4), over the RSS before it.
Target (issue 17): load peak in bfloat16 <= 0.6x the float32 load's peak, per embedder and stored dtype.

Usage: OMP_NUM_THREADS=2 python -m benchmarks.bench_load_dtype [--layers 2] [--only clip phi3v phi3v-lm]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks._common import WORK, full_clip_b32, report

CACHE = WORK / "load_dtype"
TARGET = 0.6
EMBEDDERS = ("clip", "phi3v", "phi3v-lm")
DTYPES = ("float32", "bfloat16")


def _convert(src: Path, dst: Path, dtype: str) -> Path:
    """A copy of checkpoint folder `src` with every floating tensor stored in `dtype` (written once)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    if (dst / "_done").is_file():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    target = getattr(torch, dtype)
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            with safe_open(str(f), "pt") as sf:
                tensors = {k: sf.get_tensor(k) for k in sf.keys()}
            tensors = {k: t.to(target) if t.is_floating_point() else t.clone() for k, t in tensors.items()}
            save_file(tensors, str(dst / f.name), metadata={"format": "pt"})
            del tensors
        elif f.is_file() and f.name != "_done":
            shutil.copy(f, dst / f.name)
    (dst / "_done").write_text("ok")
    return dst


def checkpoints(layers: int) -> dict[tuple[str, str], Path]:
    """(embedder, stored dtype) -> checkpoint folder."""
    from benchmarks.bench_phi3v_lm import write_checkpoint

    clip32 = full_clip_b32()  # stored in float32
    phi16 = CACHE / f"phi3v-{layers}layers-bfloat16"
    if not (phi16 / "_done").is_file():
        write_checkpoint(phi16, layers)  # stored in bf16
    out = {("clip", "float32"): clip32, ("clip", "bfloat16"): _convert(clip32, CACHE / "clip-b32-bfloat16",
                                                                       "bfloat16")}
    phi32 = _convert(phi16, CACHE / f"phi3v-{layers}layers-float32", "float32")
    for kind in ("phi3v", "phi3v-lm"):
        out[(kind, "bfloat16")], out[(kind, "float32")] = phi16, phi32
    return out


def child(kind: str, folder: Path, dtype: str) -> dict:
    """One load + a short embedding in this (fresh) process."""
    import numpy as np
    import torch
    import transformers.models.clip.modeling_clip  # noqa: F401  (one-time import, not measured)
    from PIL import Image

    from bench.embedders.base import RuntimeOptions
    from bench.metrics.memory import PeakMemory, current_rss_mib

    if kind == "clip":
        from bench.embedders.clip import ClipEmbedder as cls
        settings, n_images, batch = {}, 64, 32
    elif kind == "phi3v":
        from bench.embedders.phi3v import Phi3VImageEmbedder as cls
        settings, n_images, batch = {"num_crops": 4}, 1, 1
    else:
        from bench.embedders.phi3v_lm import Phi3VLMEmbedder as cls
        settings, n_images, batch = {"num_crops": 4}, 1, 1
    cls.preload()
    rss0 = current_rss_mib()
    with PeakMemory("cpu") as mem:
        emb = cls(str(folder), runtime=RuntimeOptions(dtype=dtype, batch_size=batch), **settings)
        module = getattr(emb, "model", None) or emb.module
        weights = [*module.parameters(), *module.buffers()]
        with torch.no_grad():
            for t in weights:  # one element per 4 KiB page of every weight: mapped pages count from here
                t.reshape(-1)[:: 1024].sum()
    settled = current_rss_mib() - rss0
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), "RGB")
              for _ in range(n_images)]
    items = [emb.preprocess(im) for im in images]
    with PeakMemory("cpu") as run:
        for s in range(0, n_images, batch):
            emb.embed_image_batch(emb.collate(items[s:s + batch]))
    return {"kind": kind, "dtype": dtype, "rss_after_imports_mib": rss0,
            "load_peak_mib": mem.metrics()["peak_rss_delta_mib"], "settled_mib": settled,
            "embed_peak_mib": run.metrics()["peak_rss_delta_mib"], "method": mem.method,
            "weight_mib": sum(t.numel() * t.element_size() for t in weights) / 2**20,
            "weight_dtypes": sorted({str(t.dtype) for t in weights if t.is_floating_point()})}


def warm(folder: Path) -> None:
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def measure(kind: str, folder: Path, dtype: str) -> dict:
    warm(folder)
    out = subprocess.run([sys.executable, "-m", __spec__.name, "--child", kind, str(folder), dtype],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise SystemExit(f"{kind} {dtype} load failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2, help="phi3v-lm decoder layers (32 in the real model)")
    ap.add_argument("--only", nargs="+", choices=EMBEDDERS, default=list(EMBEDDERS))
    ap.add_argument("--stored", nargs="+", choices=DTYPES, default=list(DTYPES), help="checkpoint dtypes")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "FOLDER", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.child[2])))
        return 0
    folders = checkpoints(args.layers)
    for kind in args.only:
        for stored in args.stored:
            rows = {dtype: measure(kind, folders[(kind, stored)], dtype) for dtype in DTYPES}
            for dtype, r in rows.items():
                print(f"  {kind:8s} stored {stored:8s} run {dtype:8s}: "
                      f"load peak +{r['load_peak_mib']:.0f} MiB, "
                      f"settled +{r['settled_mib']:.0f}, embed peak +{r['embed_peak_mib']:.0f}; weights "
                      f"{r['weight_mib']:.0f} MiB {','.join(r['weight_dtypes'])} ({r['method']})", flush=True)
            f32, b16 = rows["float32"], rows["bfloat16"]
            ratio = b16["load_peak_mib"] / f32["load_peak_mib"]
            report(f"{kind} load peak RSS bf16 / float32 ({stored} checkpoint)", ratio, f"<= {TARGET}",
                   ratio <= TARGET,
                   f"bf16 +{b16['load_peak_mib']:.0f} MiB vs float32 +{f32['load_peak_mib']:.0f} "
                   f"MiB (weights {b16['weight_mib']:.0f} vs {f32['weight_mib']:.0f} MiB; fresh processes, "
                   f"page cache warm)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
