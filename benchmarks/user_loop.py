"""The reference for `bench embed`'s end-to-end targets (issue 17): what a competent user writes instead.

A torch DataLoader with worker processes decodes each JPEG with PIL and runs transformers'
CLIPImageProcessor on it; batches go through `CLIPModel.get_image_features` under inference_mode; the
L2-normalized vectors are saved as one safetensors file keyed by file name (as `bench embed` does).
Run as a whole process (imports and model load included), like `bench embed`:

  python -m benchmarks.user_loop --model DIR --images DIR --output F.safetensors [--batch-size 16]
                                 [--num-workers 2] [--dtype float32]
"""

from __future__ import annotations

import argparse
from pathlib import Path


class _Files:
    def __init__(self, paths: list[Path], processor) -> None:
        self.paths, self.processor = paths, processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.processor(images=im.convert("RGB"), return_tensors="pt")["pixel_values"][0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--output", required=True, type=Path)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader
    from transformers import CLIPImageProcessor, CLIPModel

    dtype = getattr(torch, args.dtype)
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    processor = CLIPImageProcessor.from_pretrained(args.model)
    model = CLIPModel.from_pretrained(args.model, dtype=dtype).eval()
    loader = DataLoader(_Files(paths, processor), batch_size=args.batch_size, num_workers=args.num_workers)
    out = []
    with torch.inference_mode():
        for pixels in loader:
            feats = model.get_image_features(pixel_values=pixels.to(dtype))
            feats = feats if hasattr(feats, "shape") else feats.pooler_output
            out.append(F.normalize(feats.float(), dim=-1))
    vecs = torch.cat(out)
    save_file({p.name: v.clone() for p, v in zip(paths, vecs)}, str(args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
