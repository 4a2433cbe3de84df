"""Training pairs as a `datasets.Dataset`, with a data order that does not depend on the process count.

Columns: `image` (the `datasets.Image` feature over file paths: decoded lazily, on access), `captions`
(all captions of the image) and `idx`. `with_transform(PairTransform)` turns a batch of rows into CLIP
inputs with bench's own CLIP preprocessing and the checkpoint's tokenizer.

Determinism: epoch e visits the images in the permutation `default_rng([seed, 0, e])`, cut into global
batches of `batch_size` (the last partial batch of an epoch is dropped); micro-batch m of the whole run
is therefore a fixed list of indices for any number of processes, and process r of W takes the r-th
contiguous slice of it. The caption of image i in epoch e is `default_rng([seed, 1, e, i])`'s pick among
its captions: one random caption per image per epoch, a pure function of (seed, epoch, index).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.data.base import CaptionDataset
from bench.errors import ConfigError, DataError


def merge_caption_sets(sets: Sequence[CaptionDataset]) -> tuple[list[str], list[list[str]]]:
    """Image paths and caption lists of several caption datasets, concatenated in order."""
    paths: list[str] = []
    captions: list[list[str]] = []
    for ds in sets:
        for p, caps in zip(ds.image_paths, ds.captions):
            caps = [c for c in caps if c.strip()]
            if caps:
                paths.append(str(p))
                captions.append(list(caps))
    if not paths:
        raise DataError(f"no captioned images in the training data ({', '.join(d.name for d in sets)})")
    return paths, captions


def pairs_dataset(paths: Sequence[str], captions: Sequence[Sequence[str]]):
    """A `datasets.Dataset` of (image, captions, idx); images stay paths until a row is read."""
    import datasets

    ds = datasets.Dataset.from_dict({"image": [str(p) for p in paths],
                                     "captions": [list(c) for c in captions],
                                     "idx": list(range(len(paths)))})
    return ds.cast_column("image", datasets.Image(decode=True))


def caption_index(seed: int, epoch: int, idx: int, num_captions: int) -> int:
    """Which caption of image `idx` is used in `epoch` (seeded, independent of batch and process)."""
    return int(np.random.default_rng([seed, 1, epoch, idx]).integers(num_captions))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, 0, epoch]).permutation(n)


class BatchPlan:
    """Global micro-batch m -> (epoch, image indices); `local` cuts a process's slice of it."""

    def __init__(self, n: int, batch_size: int, seed: int, world_size: int = 1) -> None:
        if batch_size > n:
            raise ConfigError(f"finetune: batch_size {batch_size} exceeds the {n} training images")
        if batch_size % world_size:
            raise ConfigError(f"finetune: batch_size {batch_size} is not divisible by the {world_size} "
                              f"processes")
        self.n, self.batch_size, self.seed, self.world_size = n, batch_size, seed, world_size
        self.per_epoch = n // batch_size
        self._cache: tuple[int, np.ndarray] | None = None

    def global_batch(self, m: int) -> tuple[int, np.ndarray]:
        epoch, b = divmod(m, self.per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, epoch_order(self.n, self.seed, epoch))
        return epoch, self._cache[1][b * self.batch_size:(b + 1) * self.batch_size]

    def local(self, m: int, rank: int) -> tuple[int, np.ndarray]:
        epoch, idx = self.global_batch(m)
        k = self.batch_size // self.world_size
        return epoch, idx[rank * k:(rank + 1) * k]


class PairTransform:
    """`with_transform` function: rows -> pixel_values, input_ids, attention_mask (+ idx).

    Set `epoch` before reading a batch: it picks each image's caption for that epoch. `caption=None`
    (validation) always uses the first caption.
    """

    def __init__(self, preprocess: Any, tokenizer: Any, max_tokens: int, seed: int = 0) -> None:
        self.preprocess, self.tokenizer, self.max_tokens, self.seed = preprocess, tokenizer, max_tokens, seed
        self.epoch: int | None = 0

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        import torch

        pixels = torch.stack([self.preprocess(im) for im in batch["image"]])
        texts = []
        for i, caps in zip(batch["idx"], batch["captions"]):
            j = 0 if self.epoch is None else caption_index(self.seed, self.epoch, int(i), len(caps))
            texts.append(caps[j])
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        return {"pixel_values": pixels, "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"], "idx": list(batch["idx"])}


def fetch(ds: Any, transform: PairTransform, indices: np.ndarray, epoch: int | None) -> dict[str, Any]:
    """Rows `indices` of a with_transform dataset, in that order, for `epoch`."""
    transform.epoch = epoch
    try:
        return ds[[int(i) for i in indices]]
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"cannot read a training image: {e}") from None


def build(paths: Sequence[str], captions: Sequence[Sequence[str]], preprocess: Any, tokenizer: Any,
          max_tokens: int, seed: int) -> tuple[Any, PairTransform]:
    """The training Dataset with its transform attached."""
    transform = PairTransform(preprocess, tokenizer, max_tokens, seed)
    return pairs_dataset(paths, captions).with_transform(transform), transform
