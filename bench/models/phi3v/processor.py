"""Phi-3-vision image processor in PIL + torch (no torchvision), reproducing the reference exactly.

Reference: `image_processing_phi3_v.py` shipped with microsoft/Phi-3-vision-128k-instruct and
Phi-3.5-vision-instruct (see shared/docs/phi3v-reference.md, section 1):
  RGB -> HD transform (transpose portrait, scale loop, bilinear resize, white padding of the height
  to a multiple of 336, transpose back) -> /255 -> CLIP normalize -> global view (bicubic 336x336)
  + row-major 336x336 crops -> zero padding to num_crops + 1 crops.

torchvision's `resize` on a PIL image is PIL's `img.resize((w, h), Image.BILINEAR)` (PIL always
antialiases), and its `pad(fill=255)` is a paste onto a white canvas: both are done with PIL here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.errors import ConfigError

CROP = 336  # crop side in pixels (CLIP ViT-L/14-336 input)
TOKENS_PER_CROP = 144  # 24x24 patches merged 2x2 -> 12x12
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def num_img_tokens_for(h_crops: int, w_crops: int) -> int:
    """Image tokens for an HD grid of h_crops x w_crops: (h*w + 1) * 144 + 1 + (h + 1) * 12."""
    return int((h_crops * w_crops + 1) * TOKENS_PER_CROP + 1 + (h_crops + 1) * 12)


def hd_scale(width: int, height: int, num_crops: int) -> int:
    """Reference scale loop for a landscape (width >= height) image: largest s with s*ceil(s/ratio) <= n."""
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    return max(scale - 1, 1)


def hd_transform(img: Any, num_crops: int) -> Any:
    """PIL RGB image -> resized and white-padded to multiples of 336 (the reference's HD_transform)."""
    from PIL import Image

    width, height = img.size
    transposed = width < height
    if transposed:
        img = img.transpose(Image.Transpose.TRANSPOSE)
        width, height = img.size
    ratio = width / height
    scale = hd_scale(width, height, num_crops)
    new_w = int(scale * CROP)
    # The reference crashes when an extreme panorama rounds new_h down to 0; keep one pixel row instead.
    new_h = max(int(new_w / ratio), 1)
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    target = int(math.ceil(new_h / CROP) * CROP)
    top = int((target - new_h) / 2)
    if target != new_h:
        canvas = Image.new("RGB", (new_w, target), (255, 255, 255))
        canvas.paste(img, (0, top))
        img = canvas
    if transposed:
        img = img.transpose(Image.Transpose.TRANSPOSE)
    return img


class Phi3VImageProcessor:
    """HD crops + global view for Phi-3-vision. `num_crops` is the reference's `hd_num` (class default 1)."""

    def __init__(
        self,
        num_crops: int = 1,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        do_convert_rgb: bool = True,
    ) -> None:
        if isinstance(num_crops, bool) or not isinstance(num_crops, int) or num_crops < 1:
            raise ConfigError(
                f"num_crops must be a positive integer (Phi-3-vision uses 16, Phi-3.5-vision 4), "
                f"got {num_crops!r}"
            )
        for name, value in (("image_mean", image_mean), ("image_std", image_std)):
            if len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
                raise ConfigError(f"{name} must be 3 numbers (one per RGB channel), got {value!r}")
        if any(float(s) <= 0 for s in image_std):
            raise ConfigError(f"image_std must be positive, got {list(image_std)}")
        self.num_crops = num_crops
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.do_convert_rgb = bool(do_convert_rgb)

    @classmethod
    def from_preprocessor_config(cls, config: dict | None) -> Phi3VImageProcessor:
        """Build from a checkpoint's preprocessor_config.json dict (missing keys take the class defaults)."""
        config = dict(config or {})
        kwargs: dict[str, Any] = {}
        if config.get("num_crops") is not None:
            kwargs["num_crops"] = config["num_crops"]
        for key in ("image_mean", "image_std", "do_convert_rgb"):
            if config.get(key) is not None:
                kwargs[key] = config[key]
        return cls(**kwargs)

    def settings(self) -> dict[str, Any]:
        """JSON-able settings that change the pixels (for fingerprints)."""
        return {
            "processor": "phi3v-hd",
            "num_crops": self.num_crops,
            "crop": CROP,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """(rows, cols) of 336-crops for an image of width x height, without decoding it."""
        transposed = width < height
        if transposed:
            width, height = height, width
        new_w = int(hd_scale(width, height, self.num_crops) * CROP)
        new_h = max(int(new_w / (width / height)), 1)
        rows, cols = math.ceil(new_h / CROP), new_w // CROP
        return (cols, rows) if transposed else (rows, cols)

    def preprocess_one(self, image: Any) -> dict[str, Any]:
        """PIL image -> dict(pixel_values [1+num_crops,3,336,336], image_size (H, W), num_img_tokens,
        num_real_crops)."""
        import numpy as np
        import torch
        import torch.nn.functional as F

        from bench.data.images import to_rgb

        if self.do_convert_rgb or image.mode != "RGB":
            image = to_rgb(image)
        hd = hd_transform(image, self.num_crops)
        x = torch.from_numpy(np.asarray(hd, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
        mean = torch.tensor(self.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.image_std, dtype=torch.float32)[:, None, None]
        x = x.sub(mean).div(std)
        _, H, W = x.shape
        rows, cols = H // CROP, W // CROP
        glb = F.interpolate(x[None], size=(CROP, CROP), mode="bicubic", align_corners=False)
        crops = x.reshape(1, 3, rows, CROP, cols, CROP).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, CROP, CROP)
        pixel_values = torch.zeros(self.num_crops + 1, 3, CROP, CROP, dtype=torch.float32)
        pixel_values[0] = glb[0]
        pixel_values[1 : 1 + rows * cols] = crops
        return {
            "pixel_values": pixel_values,
            "image_size": (int(H), int(W)),
            "num_img_tokens": num_img_tokens_for(rows, cols),
            "num_real_crops": 1 + rows * cols,
        }

    @staticmethod
    def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Per-image dicts -> dict(pixel_values [B,1+n,3,336,336], image_sizes [B,2], num_img_tokens)."""
        import torch

        return {
            "pixel_values": torch.stack([torch.as_tensor(it["pixel_values"]) for it in items]),
            "image_sizes": torch.tensor([list(it["image_size"]) for it in items], dtype=torch.long),
            "num_img_tokens": [int(it["num_img_tokens"]) for it in items],
        }

    def __call__(self, images: Sequence[Any]) -> dict[str, Any]:
        if not isinstance(images, (list, tuple)):
            images = [images]
        return self.collate([self.preprocess_one(im) for im in images])
