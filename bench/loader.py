"""Decode + preprocess images in DataLoader workers so that they overlap the model.

On a 2-core machine the model gets the cores (torch intra-op threads) and each worker runs
single-threaded, so decoding never oversubscribes the CPU.
"""

from __future__ import annotations

import os

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.data.images import load_image
from bench.errors import BenchError


class _Failed:
    """A user-facing error raised in a worker, carried to the main process as data.

    DataLoader would re-raise it with the worker's traceback glued into the message; we want
    the one-line message itself.
    """

    def __init__(self, error: BenchError) -> None:
        self.error_type = type(error)
        self.message = str(error)

    def raise_(self):
        raise self.error_type(self.message)


class _Collate:
    def __init__(self, collate) -> None:
        self.collate = collate

    def __call__(self, items: list[Any]) -> Any:
        for it in items:
            if isinstance(it, _Failed):
                return it
        return self.collate(items)


class _ImageFiles:
    def __init__(self, paths: Sequence[Path], preprocess) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        try:
            return self.preprocess(load_image(self.paths[i]))
        except BenchError as e:
            return _Failed(e)


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)
    # Decoding yields the cores to the model: a compute thread preempted by a decoder stalls its
    # siblings at the next OpenMP barrier, which costs far more than the decode itself. SCHED_IDLE
    # runs the worker in the gaps (and at full speed whenever the model waits for data).
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:  # not permitted in some containers: run at normal priority
            pass


def image_batches(embedder, paths: Sequence[Path], batch_size: int, num_workers: int = 1,
                  pin_memory: bool = False):
    """Yield collated batches (embedder.collate output) for `paths`, in order."""
    import torch
    from torch.utils.data import DataLoader

    ds = _ImageFiles(paths, embedder.preprocess)
    collate = _Collate(embedder.collate)
    if num_workers <= 0:
        for start in range(0, len(ds), batch_size):
            batch = collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
            if isinstance(batch, _Failed):
                batch.raise_()
            yield batch
        return
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=_worker_init,
        pin_memory=pin_memory and torch.cuda.is_available(),
        prefetch_factor=2,
        persistent_workers=False,
        multiprocessing_context="fork" if _fork_ok() else None,
    )
    for batch in loader:
        if isinstance(batch, _Failed):
            batch.raise_()
        yield batch


def _fork_ok() -> bool:
    import multiprocessing as mp

    return "fork" in mp.get_all_start_methods()
