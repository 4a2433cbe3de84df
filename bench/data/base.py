"""Dataset records shared by every loader. Loaders return these; nothing else crosses the boundary.

Images are referenced by path and decoded lazily (by the runner's DataLoader workers), unless the
dataset asks for `on_bad_image: skip`: then `drop_unreadable` decodes each image once at load time
and removes the ones that fail, each together with its captions or labels (`subset`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
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
    # What loading changed, for results.json and the report: a sentence per event, and the counts.
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unreadable images dropped (on_bad_image: skip)
    skipped_captions: int = 0
    duplicates_dropped: int = 0

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

    def subset(self, keep: Sequence[int]) -> CaptionDataset:
        """The images at `keep` (in that order), each with its own captions and id."""
        keep = list(keep)
        return replace(self, image_paths=[self.image_paths[i] for i in keep],
                       captions=[self.captions[i] for i in keep],
                       image_ids=[self.image_ids[i] for i in keep] if self.image_ids else [],
                       notes=list(self.notes), skipped=list(self.skipped))


@dataclass
class LabelledDataset:
    """Images with class labels: single-label (labels: int array [N]) or multi-label
    (labels: 0/1 array [N, C])."""

    name: str
    image_paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    multilabel: bool = False
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unreadable images dropped (on_bad_image: skip)

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

    def subset(self, keep: Sequence[int]) -> LabelledDataset:
        """The images at `keep` (in that order), each with its own label row; the classes stay."""
        keep = list(keep)
        return replace(self, image_paths=[self.image_paths[i] for i in keep],
                       labels=self.labels[np.asarray(keep, dtype=np.int64)],
                       notes=list(self.notes), skipped=list(self.skipped))


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


ON_BAD_IMAGE = ("error", "skip")


def find_unreadable(paths: Sequence[Path], threads: int | None = None) -> list[tuple[int, str]]:
    """(index, one-line reason) of every image that `load_image` cannot decode.

    The same full decode the embedding does (a PIL `verify()` is ~50x cheaper but passes truncated
    JPEGs, which then fail mid-run): about 2.5 ms per 640x480 JPEG, 0.25 ms per demo image, spread
    over threads (PIL decodes without holding the GIL).
    """
    from concurrent.futures import ThreadPoolExecutor

    from bench.data.images import load_image
    from bench.errors import BenchError

    def check(i: int) -> tuple[int, str] | None:
        try:
            load_image(paths[i])
        except BenchError as e:
            return i, str(e)
        return None

    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return [r for r in pool.map(check, range(len(paths)), chunksize=64) if r is not None]


def drop_unreadable(ds, on_bad_image: str, source: str | Path = ""):
    """`on_bad_image` 'error': `ds` unchanged (a bad image fails the run where it is embedded).
    'skip': decode every image now and return the dataset without the unreadable ones, each removed
    together with its captions or labels (never misaligned), counted in `skipped` and `notes`."""
    from bench.errors import DataError

    if on_bad_image not in ON_BAD_IMAGE:
        raise DataError(f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {on_bad_image!r}")
    if on_bad_image == "error" or not len(ds):
        return ds
    bad = find_unreadable(ds.image_paths)
    if not bad:
        return ds
    where = f" of {source}" if source else ""
    if len(bad) == len(ds):
        raise DataError(f"dataset '{ds.name}': all {len(ds)} images{where} are unreadable "
                        f"(first: {bad[0][1]}); check the dataset's image folder")
    dropped = {i for i, _ in bad}
    out = ds.subset([i for i in range(len(ds)) if i not in dropped])
    out.skipped = list(ds.skipped) + [str(ds.image_paths[i]) for i, _ in bad]
    what = "image"
    if isinstance(ds, CaptionDataset):
        n_caps = sum(len(ds.captions[i]) for i in dropped)
        out.skipped_captions = ds.skipped_captions + n_caps
        what = f"image{'s' if len(bad) > 1 else ''} and {n_caps} caption{'s' if n_caps != 1 else ''}"
    else:
        what = f"image{'s' if len(bad) > 1 else ''} and {'their' if len(bad) > 1 else 'its'} labels"
    out.notes.append(f"dataset '{ds.name}': skipped {len(bad)} unreadable {what} (on_bad_image: skip), "
                     f"{len(out)} of {len(ds)} images kept; first: {bad[0][1]}")
    return out
