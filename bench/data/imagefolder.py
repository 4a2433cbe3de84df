"""Single-label classification data laid out as root/<class>/<image> (torchvision ImageFolder style)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np

from bench.data.base import LabelledDataset, drop_unreadable
from bench.errors import DataError
from bench.params import DatasetParams, Int, OnBadImage

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageFolderParams(DatasetParams):
    """root/<class>/<image>: single-label classification."""

    type: Literal["imagefolder"]
    root: Path
    max_images: Int(ge=1) | None = None
    on_bad_image: OnBadImage = "error"


def _normalise_extensions(extensions: Iterable[str] | None) -> tuple[str, ...]:
    if extensions is None:
        return DEFAULT_EXTENSIONS
    if isinstance(extensions, str):
        extensions = [extensions]
    out = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions if e)
    if not out:
        raise DataError("imagefolder: 'extensions' is empty; give e.g. ['.jpg', '.png'] or leave it out")
    return out


def load_imagefolder(name: str, root: str | Path, max_images: int | None = None,
                     extensions: Iterable[str] | None = None, on_bad_image: str = "error") -> LabelledDataset:
    """root/<class>/**/<image> -> single-label LabelledDataset (labels int64 [N]).

    Classes are the non-hidden sub-folders of root, sorted by name; a class folder without images
    is kept as a class (so train/test folders give the same label ids). Images are found
    recursively, matched by extension (case-insensitive) and sorted by relative path. max_images
    keeps a deterministic class-balanced subset: images are taken round-robin over the classes
    (the first of each class, then the second of each, ...), and the subset stays sorted by path.
    Linked sub-folders are followed, each real folder once per class (a link loop would otherwise
    list the same images again and again). With on_bad_image 'skip', images that cannot be decoded are
    dropped with their labels after max_images is applied.
    """
    root = Path(root)
    exts = _normalise_extensions(extensions)
    if not root.exists():
        raise DataError(f"image folder not found: {root} (check the dataset's 'root' key in the config)")
    if not root.is_dir():
        raise DataError(f"imagefolder root {root} is a file; 'root' must be a folder with one sub-folder "
                        "per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"imagefolder root {root} has no class sub-folders; "
                        f"expected {root}/<class>/<image>.jpg")

    per_class: list[list[str]] = []
    for cls in classes:
        found = []
        seen: set[str] = set()  # real paths of the folders walked for this class
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            found += [f"{rel_dir}/{f}" for f in filenames
                      if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts]
        per_class.append(sorted(found))
    total = sum(len(f) for f in per_class)
    if total == 0:
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise DataError(f"imagefolder root {root} has class folders ({shown}) but no images with "
                        f"extensions {', '.join(exts)}")

    records = [(rel, label) for label, files in enumerate(per_class) for rel in files]
    if max_images is not None:
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
            raise DataError(f"max_images must be a positive integer or null, got {max_images!r}")
        if max_images < total:
            # Rank of each image inside its class; taking the lowest ranks first is round-robin.
            ranked = sorted(((rank, label, rel) for label, files in enumerate(per_class)
                             for rank, rel in enumerate(files)))
            keep = {rel for _, _, rel in ranked[:max_images]}
            records = [(rel, label) for rel, label in records if rel in keep]
    records.sort(key=lambda r: r[0])
    ds = LabelledDataset(
        name=name,
        image_paths=[root / rel for rel, _ in records],
        labels=np.array([label for _, label in records], dtype=np.int64),
        class_names=classes,
        multilabel=False,
    )
    return drop_unreadable(ds, on_bad_image, root)
