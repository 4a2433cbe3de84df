"""Dataset records shared by every loader. Loaders return these; nothing else crosses the boundary.

Images are referenced by path and decoded lazily (by the runner's DataLoader workers).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

@dataclass
class CaptionDataset:
    """Images with one or more captions each (COCO has 5, sometimes 6 or 7)."""

    name: str
    image_paths: list[Path]
    captions: list[list[str]]  # captions[i] = all captions of image i
    image_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # A lone surrogate ("\ud800" is valid JSON) cannot be encoded as UTF-8: tokenizers, hashes and
        # reports would fail on it far from the file. Replace it with U+FFFD here, once, and say where.
        fixed, first = 0, None
        for i, caps in enumerate(self.captions):
            for j, text in enumerate(caps):
                clean = replace_surrogates(text)
                if clean is not text:
                    caps[j] = clean
                    fixed += 1
                    first = first or self.image_paths[i]
        if fixed:
            log.warning("dataset '%s': %d caption(s) hold lone UTF-16 surrogates (invalid Unicode), replaced "
                        "with U+FFFD; first in a caption of image %s", self.name, fixed, first)

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def num_captions(self) -> int:
        return sum(len(c) for c in self.captions)

    def flat_captions(self) -> tuple[list[str], np.ndarray]:
        """All captions in order, and for each the index of its image."""
        texts = [t for caps in self.captions for t in caps]
        owner = np.repeat(np.arange(len(self.captions)), [len(c) for c in self.captions])
        return texts, owner

    def fingerprint(self) -> str:
        return fingerprint_records(self.image_paths, [" | ".join(c) for c in self.captions])


@dataclass
class LabelledDataset:
    """Images with class labels: single-label (labels: int array [N]) or multi-label
    (labels: 0/1 array [N, C])."""

    name: str
    image_paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    multilabel: bool = False

    def __post_init__(self) -> None:
        # Class names become prompts and report labels: same rule as captions (a folder name that is not
        # UTF-8 arrives here with surrogate escapes).
        clean = [replace_surrogates(c) for c in self.class_names]
        if any(a is not b for a, b in zip(clean, self.class_names)):
            log.warning("dataset '%s': class names hold invalid Unicode (lone surrogates), replaced with "
                        "U+FFFD", self.name)
            self.class_names = clean

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        return fingerprint_records(
            self.image_paths, [str(row.tolist()) if self.multilabel else str(int(row)) for row in self.labels]
            + ["classes:" + ",".join(self.class_names)]
        )


def replace_surrogates(text: str) -> str:
    """`text` itself when it is valid Unicode, else a copy with each lone surrogate replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)


def fingerprint_records(paths: list[Path], extra: list[str]) -> str:
    """Hash of the image files (name, size, mtime-free content proxy) and the annotations.

    Uses each file's relative name and size plus the first and last 4 KiB of its bytes: cheap on
    5k images, and changes when an image is replaced by a different one.
    """
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(os.fsencode(p.name))  # the name's bytes on disk, also when they are not UTF-8
        try:
            st = os.stat(p)
            h.update(str(st.st_size).encode())
            with open(p, "rb") as f:
                h.update(f.read(4096))
                if st.st_size > 8192:
                    f.seek(-4096, os.SEEK_END)
                    h.update(f.read(4096))
        except OSError:
            h.update(b"<missing>")
    for s in extra:
        h.update(s.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
