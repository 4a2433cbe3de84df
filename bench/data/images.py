"""Image decoding with one clear error for a missing or corrupt file."""

from __future__ import annotations

from pathlib import Path

from bench.errors import DataError


def load_image(path: str | Path):
    """Open an image and return it as PIL RGB (grayscale, RGBA, palette, 16-bit are converted).

    Alpha is dropped (not composited), as Phi-3-vision's and CLIP's reference processors do.
    """
    from PIL import Image, UnidentifiedImageError

    from bench.data.refs import ImageRef

    if isinstance(path, ImageRef):  # an image inside a tar shard or a table row: see bench/data/refs.py
        return path.decode()
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except FileNotFoundError:
        raise DataError(f"image not found: {path} (check the dataset's 'images' folder in the config)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode image {path}: {e} (the file is corrupt or not an image; "
                        "remove it or fix the annotation that lists it)") from None


def to_rgb(im):
    """Convert any PIL mode to RGB. 16-bit integer modes are scaled to 8 bits first."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if im.mode == "F":
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return im.convert("RGB")
