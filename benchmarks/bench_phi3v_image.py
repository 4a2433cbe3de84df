"""Time per image of Phi-3-vision's image embedding at full size: fast path vs the reference loop.

Full-size image side with random weights: CLIP ViT-L/14-336 (24 layers, hidden 1024) + the MLP
projection to 3072. For each `num_crops`, a few images of mixed aspect are preprocessed once, then
  fast:      Phi3VImageEmbedding.forward: real crops of all images in one CLIP call, 23 layers;
  no-skip:   the fast path, but CLIP also runs on the zero padding crops (to isolate what skipping
             them is worth);
  reference: reference_forward: per image, all 1 + num_crops crops (zero padding included), all 24
             layers with output_hidden_states, hidden_states[-2];
and the outputs are compared (max abs difference, must be <= --atol). Preprocessing is not timed.

Usage: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_phi3v_image.py [--num-crops 4 16]
       [--images 3] [--repeat 1] [--device cpu] [--dtype float32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

HIDDEN = 3072
# (width, height): landscape 4:3, portrait, wide 3:1, square (different grids and padding-crop counts).
SIZES = [(640, 480), (480, 640), (1200, 400), (640, 640)]  # COCO-like 4:3 both ways, 3:1, 1:1


def full_config() -> dict:
    """The image part of Phi-3-vision-128k-instruct's config.json (built-in ViT-L/14-336 tower)."""
    return {
        "model_type": "phi3_v",
        "hidden_size": HIDDEN,
        "vocab_size": 32064,
        "img_processor": {
            "name": "clip_vision_model",
            "model_name": "openai/clip-vit-large-patch14-336",
            "image_dim_out": 1024,
            "num_img_tokens": 144,
        },
        "embd_layer": {
            "embedding_cls": "image",
            "use_hd_transform": True,
            "with_learnable_separator": True,
            "hd_transform_order": "sub_glb",
            "projection_cls": "mlp",
        },
    }


def _images(n: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        for w, h in (SIZES * (n // len(SIZES) + 1))[:n]
    ]


def forward_without_skip(module, pixel_values, image_sizes):
    """The fast path with the padding crops kept: every crop of the batch goes through the tower."""
    from bench.models.phi3v.image_embedding import _grids, merge_2x2

    b, n = pixel_values.shape[:2]
    feats = module.patch_features(pixel_values.reshape(b * n, *pixel_values.shape[2:]))
    feats = feats.reshape(b, n, *feats.shape[1:])
    out = []
    for i, (h, w) in enumerate(_grids(image_sizes, b)):
        merged = merge_2x2(feats[i, : 1 + h * w])
        out.append(module.project(module._layout(merged[0], merged[1:], h, w)))
    return out


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-crops", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--images", type=int, default=4, help="images per setting (mixed aspect)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per path (best is reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--skip-reference", action="store_true", help="time the fast path only")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    import torch

    from bench.models.phi3v.image_embedding import Phi3VImageEmbedding, reference_forward
    from bench.models.phi3v.processor import Phi3VImageProcessor

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    module = Phi3VImageEmbedding.from_config(full_config()).to(device=args.device, dtype=dtype).eval()
    with torch.no_grad():  # random separators (zeros at init would hide layout errors in the comparison)
        module.glb_GN.normal_()
        module.sub_GN.normal_()
    params = sum(p.numel() for p in module.parameters())
    with torch.inference_mode():  # warm-up: first-call allocations and kernel selection are not timed
        module.patch_features(torch.zeros(1, 3, 336, 336, device=args.device, dtype=dtype))
    print(
        f"Phi-3-vision image embedding, random weights: {params / 1e6:.0f}M parameters, "
        f"device {args.device}, "
        f"{args.dtype}, torch threads {torch.get_num_threads()}"
    )
    images = _images(args.images)
    results = []
    ok = True
    for num_crops in args.num_crops:
        batch = Phi3VImageProcessor(num_crops)(images)
        pv = batch["pixel_values"].to(args.device)
        sizes = batch["image_sizes"]
        grids = [(h // 336, w // 336) for h, w in sizes.tolist()]
        real = sum(1 + h * w for h, w in grids)
        total = len(images) * (num_crops + 1)
        with torch.inference_mode():
            fast_s, fast = _time(lambda pv=pv, sizes=sizes: module(pv, sizes), args.device, args.repeat)
            row = {
                "num_crops": num_crops,
                "images": len(images),
                "grids": grids,
                "real_crops": real,
                "all_crops": total,
                "fast_s_per_image": fast_s / len(images),
            }
            noskip_s, noskip = _time(lambda pv=pv, sizes=sizes: forward_without_skip(module, pv, sizes),
                                     args.device, args.repeat)
            row["no_skip_s_per_image"] = noskip_s / len(images)
            if not args.skip_reference:
                ref_s, ref = _time(
                    lambda pv=pv, sizes=sizes: reference_forward(module, pv, sizes), args.device, args.repeat
                )
                diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(fast, ref))
                row.update(
                    reference_s_per_image=ref_s / len(images), speedup=ref_s / fast_s, max_abs_diff=diff
                )
                ok &= diff <= args.atol
        results.append(row)
        line = (
            f"num_crops {num_crops:2d}: {len(images)} images, grids {grids}, CLIP crops {real} real "
            f"vs {total} with padding; fast {row['fast_s_per_image']:.2f} s/image"
        )
        line += f", without the padding skip {row['no_skip_s_per_image']:.2f} s/image"
        if "reference_s_per_image" in row:
            line += (
                f", reference {row['reference_s_per_image']:.2f} s/image, speedup x{row['speedup']:.2f}, "
                f"max |diff| {row['max_abs_diff']:.2e}"
            )
        print(line, flush=True)
        if "speedup" in row:
            target = 1.25 if num_crops == 16 else None
            report(f"phi3v image embedding num_crops {num_crops}: reference time / bench time", row["speedup"],
                   ">= 1.25" if target else "(info)", row["speedup"] >= 1.25 if target else True,
                   f"{row['fast_s_per_image']:.1f} vs {row['reference_s_per_image']:.1f} s/image, "
                   f"{len(images)} images {grids}, outputs max|diff| {row['max_abs_diff']:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": args.device,
                    "dtype": args.dtype,
                    "threads": torch.get_num_threads(),
                    "results": results,
                },
                f,
                indent=2,
            )
    if not ok:
        print(f"FAIL: fast and reference outputs differ by more than {args.atol}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
