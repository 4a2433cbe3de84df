"""CLIP image preprocessing in PIL + numpy/torch, matching transformers' CLIPImageProcessor (PIL backend).

No torchvision: resize is PIL's (as in the reference PIL backend, on the uint8 image), the crop
pads with zeros when the image is smaller than the crop (as transformers does), rescale is
computed in float64 then cast to float32, and normalization in float32, the same order of
operations as the reference, so outputs agree bit for bit in practice.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.errors import ModelError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

BICUBIC = 3  # PIL.Image.Resampling.BICUBIC; kept as an int so this module imports without PIL
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class ClipPreprocessSettings:
    """Everything that changes the pixels; read from a checkpoint's preprocessor_config.json."""

    size: int | tuple[int, int] | None = 224  # int: shortest edge; (h, w): exact; None: no resize
    crop: tuple[int, int] | None = (224, 224)  # (h, w); None: no center crop
    mean: tuple[float, ...] | None = OPENAI_CLIP_MEAN  # None: no normalization
    std: tuple[float, ...] | None = OPENAI_CLIP_STD
    resample: int = BICUBIC
    rescale_factor: float | None = 1 / 255  # None: no rescale

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form for fingerprints and reports."""
        d = asdict(self)
        d["size"] = list(self.size) if isinstance(self.size, tuple) else self.size
        d["crop"] = list(self.crop) if self.crop else None
        d["mean"] = list(self.mean) if self.mean else None
        d["std"] = list(self.std) if self.std else None
        d["resample"] = _RESAMPLE_NAMES.get(self.resample, self.resample)
        return d

    def __call__(self, image) -> Any:
        return clip_preprocess(image, self.size, self.crop, self.mean, self.std, self.resample,
                               rescale_factor=self.rescale_factor)


def _hw(value: Any, what: str, path: Path) -> tuple[int, int] | int:
    """Parse a transformers size dict / int into int (shortest edge) or (h, w)."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value and "longest_edge" not in value:
            return int(value["shortest_edge"])
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
    raise ModelError(f"{path}: unsupported {what} {value!r} (expected an int, {{'shortest_edge': N}} "
                     f"or {{'height': H, 'width': W}})")


def load_clip_preprocess(folder: str | Path) -> ClipPreprocessSettings:
    """Read preprocessor_config.json (CLIPImageProcessor / legacy CLIPFeatureExtractor fields)."""
    path = Path(folder) / "preprocessor_config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"missing {path}: a CLIP checkpoint needs its preprocessor_config.json "
                         f"(re-download the full checkpoint)") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path}: {e}") from None

    size = _hw(cfg.get("size", 224), "size", path) if cfg.get("do_resize", True) else None
    crop = None
    if cfg.get("do_center_crop", True):
        c = _hw(cfg.get("crop_size", 224), "crop_size", path)
        crop = (c, c) if isinstance(c, int) else c
    mean = std = None
    if cfg.get("do_normalize", True):
        mean = tuple(float(x) for x in cfg.get("image_mean", OPENAI_CLIP_MEAN))
        std = tuple(float(x) for x in cfg.get("image_std", OPENAI_CLIP_STD))
        if len(mean) != 3 or len(std) != 3:
            raise ModelError(f"{path}: image_mean and image_std must have 3 values, got {mean} and {std}")
    rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else None
    resample = int(cfg.get("resample", BICUBIC))
    if resample not in _RESAMPLE_NAMES:
        raise ModelError(f"{path}: unknown resample {resample} (expected one of {sorted(_RESAMPLE_NAMES)})")
    return ClipPreprocessSettings(size=size, crop=crop, mean=mean, std=std, resample=resample,
                                  rescale_factor=rescale)


def resize_shortest_edge(width: int, height: int, size: int) -> tuple[int, int]:
    """Target (width, height) with the short side = size; the long side truncated as transformers does."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def clip_preprocess(image, size: int | tuple[int, int] | None, crop: int | tuple[int, int] | None,
                    mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, resample: int = BICUBIC, *,
                    rescale_factor: float | None = 1 / 255):
    """PIL image -> float32 tensor [3, crop_h, crop_w]: resize, center crop, rescale, normalize."""
    import numpy as np
    import torch

    if image.mode != "RGB":
        image = image.convert("RGB")
    if size is not None:
        if isinstance(size, int):
            w, h = resize_shortest_edge(image.width, image.height, size)
        else:
            h, w = size
        image = image.resize((w, h), resample=resample)
    arr = np.asarray(image)  # H, W, 3 uint8
    if crop is not None:
        arr = _center_crop(arr, (crop, crop) if isinstance(crop, int) else crop)
    if arr.dtype == np.uint8 and rescale_factor is not None and mean is not None:
        # The rescale + normalize chain is elementwise on 256 possible values per channel: compute it
        # once per value with the very same operations (so bit-identical) and gather, straight to CHW.
        lut = _value_table(float(rescale_factor), tuple(mean), tuple(std))
        out = np.empty((3, *arr.shape[:2]), dtype=np.float32)
        for c in range(3):
            np.take(lut[c], arr[..., c], out=out[c])
        return torch.from_numpy(out)
    x = arr.astype(np.float64) * rescale_factor if rescale_factor is not None else arr
    x = np.asarray(x, dtype=np.float32)
    if mean is not None:
        x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


@functools.lru_cache(maxsize=8)
def _value_table(rescale_factor: float, mean: tuple, std: tuple):
    """[3, 256] float32: the normalized value of every uint8 value, per channel (same ops as above)."""
    import numpy as np

    values = np.arange(256, dtype=np.uint8)[:, None].repeat(3, axis=1)
    x = np.asarray(values.astype(np.float64) * rescale_factor, dtype=np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.T)


def _center_crop(arr, crop: tuple[int, int]):
    """Center crop an HWC array; zero-pad (before normalization, like transformers) when too small."""
    import numpy as np

    h, w = arr.shape[:2]
    ch, cw = int(crop[0]), int(crop[1])
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0:
        return arr[top:top + ch, left:left + cw]
    nh, nw = max(ch, h), max(cw, w)
    padded = np.zeros((nh, nw) + arr.shape[2:], dtype=arr.dtype)
    tp, lp = -(-(nh - h) // 2), -(-(nw - w) // 2)  # ceil, as transformers
    padded[tp:tp + h, lp:lp + w] = arr
    top, left = (nh - ch) // 2, (nw - cw) // 2
    return padded[top:top + ch, left:left + cw]
