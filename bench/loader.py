"""Decode + preprocess images in DataLoader workers so that they overlap the model.

On a 2-core machine the model gets the cores (torch intra-op threads) and each worker runs
single-threaded, so decoding never oversubscribes the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.data.images import load_image


class _ImageFiles:
    def __init__(self, paths: Sequence[Path], preprocess) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        return self.preprocess(load_image(self.paths[i]))


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def image_batches(embedder, paths: Sequence[Path], batch_size: int, num_workers: int = 1,
                  pin_memory: bool = False):
    """Yield collated batches (embedder.collate output) for `paths`, in order."""
    import torch
    from torch.utils.data import DataLoader

    ds = _ImageFiles(paths, embedder.preprocess)
    if num_workers <= 0:
        for start in range(0, len(ds), batch_size):
            yield embedder.collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
        return
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=embedder.collate,
        worker_init_fn=_worker_init,
        pin_memory=pin_memory and torch.cuda.is_available(),
        prefetch_factor=2,
        persistent_workers=False,
        multiprocessing_context="fork" if _fork_ok() else None,
    )
    yield from loader


def _fork_ok() -> bool:
    import multiprocessing as mp

    return "fork" in mp.get_all_start_methods()
