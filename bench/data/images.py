"""Image decoding with one clear error for a missing or corrupt file."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

from bench.errors import DataError

log = logging.getLogger(__name__)


def load_image(path: str | Path):
    """Open an image and return it as PIL RGB (grayscale, RGBA, palette, 16-bit are converted).

    Alpha is dropped (not composited), as Phi-3-vision's and CLIP's reference processors do.
    """
    from bench.data.refs import ImageRef

    if isinstance(path, ImageRef):  # an image inside a tar shard or a table row: see bench/data/refs.py
        return path.decode()
    path = Path(path)
    try:
        return decode_image(path, str(path), "the file is corrupt or not an image; remove it or fix the "
                                             "annotation that lists it")
    except FileNotFoundError:
        raise DataError(f"image not found: {path} (check the dataset's 'images' folder in the config)") \
            from None


def decode_image(source, where: str, corrupt_hint: str):
    """PIL RGB image from a path or a binary file object, with the one rule for every image source
    (files, tar members, table rows): over PIL.Image.MAX_IMAGE_PIXELS x 2 pixels it is a decompression
    bomb, refused with one DataError line (a counted skip under on_bad_image: skip); over
    MAX_IMAGE_PIXELS it is decoded with a warning naming `where`; undecodable data is one DataError
    ending in `corrupt_hint`. FileNotFoundError passes through for the caller to word."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                im.load()
                rgb = to_rgb(im)
        for w in caught:  # PIL's bomb warning does not say which image: say it; pass the others on
            if issubclass(w.category, Image.DecompressionBombWarning):
                log.warning("image %s is very large (%s); decoding it anyway", where, w.message)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return rgb
    except Image.DecompressionBombError as e:
        px, limit = (re.findall(r"(\d+) pixels", str(e)) + ["?", "?"])[:2]
        raise DataError(f"image {where} has {px} pixels, over the limit of {limit} pixels that guards "
                        "against decompression bombs (PIL.Image.MAX_IMAGE_PIXELS x 2): resize the image (the "
                        "embedders use a few megapixels at most) or remove it from the dataset") from None
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode image {where}: {e} ({corrupt_hint})") from None


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
