"""Loading Phi-3-vision's image embedder from a big checkpoint: memory and time follow the vision part.

A synthetic phi3_v checkpoint in the real layout (config.json, preprocessor_config.json, several
bf16 safetensors shards + model.safetensors.index.json, vision keys under
model.vision_embed_tokens.*) with the full-size image side (CLIP ViT-L/14-336 + projection) and a
full-width Phi-3 language model with enough layers for >= 4 GB on disk, written once under
.cache/perf/ (shard by shard, so writing it never holds more than one shard in memory).

Measured in fresh subprocesses, each after `import torch, transformers, bench...` and transformers'
CLIP modeling module (a one-time 2.7 s import here, independent of the checkpoint) so imports are
not counted, with the page cache warmed for every shard first (both paths read from memory, the
disk's speed is left out):
  image  bench.models.phi3v.checkpoint.load_image_embedding (float32): wall time, and the rise of
         peak RSS (VmHWM reset through /proc/self/clear_refs just before loading) over RSS before;
  whole  every tensor of the checkpoint through the same reader, in the same dtype (float32): what
         loading the whole model costs before any module is even built;
  raw    (for information) every tensor copied out of its shard in the stored bf16, no conversion:
         the cheapest conceivable whole read.
Targets: peak RSS rise <= 1.5x the vision tensors' float32 bytes; image time <= 1/5 of whole time.

Usage: .venv/bin/python benchmarks/bench_loading.py [--lm-gb 4.0] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import WORK, median, report  # noqa: E402

SHARD_BYTES = 1 << 30


def write_checkpoint(lm_gb: float) -> Path:
    import torch
    from safetensors.torch import save_file

    from bench_phi3v_lm import _shapes, full_config

    layer_bytes = 2 * (3072 * 3 * 3072 + 3072 * 3072 + 2 * 8192 * 3072 + 8192 * 3072 + 2 * 3072)
    fixed = 2 * 2 * 32064 * 3072  # embed_tokens + lm_head, bf16
    layers = max(1, -(-int(lm_gb * 1e9 - fixed) // layer_bytes))
    folder = WORK / f"phi3v-loading-{layers}layers"
    if (folder / "_done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = full_config(layers)
    shapes = _shapes(config)
    # Vision tensors first, then the language model: real checkpoints interleave them across shards;
    # what matters here is that the loader opens only the shards the index points to.
    names = sorted(shapes, key=lambda n: (not n.startswith("model.vision_embed_tokens."), n))
    gen = torch.Generator().manual_seed(0)
    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        nbytes = 2 * int(torch.Size(shapes[name]).numel())
        if size + nbytes > SHARD_BYTES and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map = {}
    for i, part in enumerate(shards):
        shard = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in part:
            t = torch.empty(shapes[name], dtype=torch.bfloat16)
            t.normal_(0, 0.02, generator=gen) if name.startswith("model.vision") else t.fill_(0.01)
            tensors[name] = t
            weight_map[name] = shard
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})
        del tensors
        print(f"  wrote {shard} ({len(part)} tensors)", flush=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    (folder / "preprocessor_config.json").write_text(json.dumps({"num_crops": 16, "num_img_tokens": 144}))
    (folder / "_done").write_text("ok")
    return folder


CHILD = r"""
import json, sys, time
from pathlib import Path
import torch, transformers, safetensors, safetensors.torch  # imports are not what is measured:
import transformers.models.clip.modeling_clip  # 2.7 s here, once per process, whatever the checkpoint
from bench.models.phi3v.checkpoint import Phi3VCheckpoint, load_image_embedding

def status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

folder, what = Path(sys.argv[1]), sys.argv[2]
Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
before = status_kib("VmRSS")
start = time.perf_counter()
if what == "image":
    module = load_image_embedding(Phi3VCheckpoint(folder), dtype=torch.float32)
    held = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
elif what == "whole":
    ckpt = Phi3VCheckpoint(folder)
    keep = ckpt.read(list(ckpt.keys()), dtype=torch.float32)  # same reader, same dtype, every tensor
    held = sum(t.numel() * t.element_size() for t in keep.values())
else:  # "raw": every tensor copied out of its shard in the stored dtype (no conversion, no checks)
    held, keep = 0, []
    for shard in sorted(folder.glob("*.safetensors")):
        with safetensors.safe_open(str(shard), "pt") as f:
            for name in f.keys():
                keep.append(f.get_tensor(name).clone())
                held += keep[-1].numel() * keep[-1].element_size()
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_before_mib": before / 1024, "peak_mib": status_kib("VmHWM") / 1024,
                  "held_bytes": held}))
"""


def measure(folder: Path, what: str) -> dict:
    for shard in folder.glob("*.safetensors"):  # warm the page cache: memory speed for both paths
        with open(shard, "rb") as f:
            while f.read(1 << 24):
                pass
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), what], capture_output=True, text=True,
                         cwd=HERE.parent, timeout=1800)
    if out.returncode:
        raise SystemExit(f"{what} load failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lm-gb", type=float, default=4.0, help="language-model bytes on disk (bf16), at least")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    folder = write_checkpoint(args.lm_gb)
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    from safetensors import safe_open

    vision_bf16 = lm_bytes = 0
    for shard in sorted(set(index.values())):
        with safe_open(str(folder / shard), "pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                n = 2
                for d in sl.get_shape():
                    n *= d
                if name.startswith("model.vision_embed_tokens."):
                    vision_bf16 += n
                else:
                    lm_bytes += n
    vision_fp32 = 2 * vision_bf16
    print(f"checkpoint {folder} ready in {time.perf_counter() - t0:.0f} s: language model + lm_head "
          f"{lm_bytes / 1e9:.2f} GB, vision {vision_bf16 / 1e9:.2f} GB (bf16 on disk) = "
          f"{vision_fp32 / 2**20:.0f} MiB in float32, {len(set(index.values()))} shards", flush=True)
    image, whole, raw = [], [], []
    for r in range(args.rounds):  # alternate the paths so drifting machine load hits all of them
        image.append(measure(folder, "image"))
        whole.append(measure(folder, "whole"))
        raw.append(measure(folder, "raw"))
        print(f"  round {r + 1}: " + "; ".join(
            f"{name} {m['seconds']:.2f} s, peak +{m['peak_mib'] - m['rss_before_mib']:.0f} MiB"
            for name, m in (("image", image[-1]), ("whole", whole[-1]), ("raw bf16", raw[-1]))), flush=True)
    t_image, t_whole = median([m["seconds"] for m in image]), median([m["seconds"] for m in whole])
    rise = median([m["peak_mib"] - m["rss_before_mib"] for m in image])
    mem_ratio = rise * 2**20 / vision_fp32
    report("phi3v loading: peak RSS rise / vision tensors (float32)", mem_ratio, "<= 1.5", mem_ratio <= 1.5,
           f"rise {rise:.0f} MiB, vision {vision_fp32 / 2**20:.0f} MiB; LM part {lm_bytes / 1e9:.2f} GB on disk")
    time_ratio = t_image / t_whole
    report("phi3v loading: image-only time / whole-checkpoint time", time_ratio, "<= 0.2", time_ratio <= 0.2,
           f"image {t_image:.2f} s vs whole {t_whole:.2f} s (median of {args.rounds}, page cache warm)")
    t_raw = median([m["seconds"] for m in raw])
    report("phi3v loading: image-only time / raw bf16 copy of every tensor", t_image / t_raw, "(info)", True,
           f"raw {t_raw:.2f} s: the cheapest conceivable whole read, no conversion")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
