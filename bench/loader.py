"""Decode + preprocess images in DataLoader workers so that they overlap the model.

On a 2-core machine the model gets the cores (torch intra-op threads) and each worker runs
single-threaded, at idle priority while the model has data to work on (see `_Priority`), so decoding
never oversubscribes the CPU. `bench embed` starts the workers before the model loads
(`start_image_batches`), so decoding overlaps the imports and the weight load.
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


# A batch the model waited longer than this for means the workers are behind.
STARVED_S = 0.002


class _Priority:
    """The workers' CPU priority, set by the main process from whether the model waits for data.

    While batches are ready when asked for, the workers run SCHED_IDLE: a compute thread preempted by
    a decoder stalls its siblings at the next OpenMP barrier, which costs far more than the decode
    itself, so decoding only uses the gaps. When the model has to wait (a busy machine, where an idle
    worker gets no CPU at all, or decoding that costs more than the model), they run at normal
    priority: the model is not computing then, so they take nothing from it. The workers start at
    normal priority (they decode while the model loads). Where the system refuses a change back
    (unprivileged, some containers), they stay at normal priority.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.idle, self.checked = pids, False, False
        self.ok = bool(pids) and hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE")

    def _set(self, idle: bool) -> bool:
        policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
        try:
            for pid in self.pids:
                os.sched_setscheduler(pid, policy, os.sched_param(0))
        except OSError:  # not permitted, or a worker that has already exited
            return False
        self.idle = idle
        return True

    def after_wait(self, waited_s: float) -> None:
        """Called with how long the model just waited for a batch."""
        idle = waited_s <= STARVED_S
        if not self.ok or idle == self.idle:
            return
        if idle and not self.checked:  # once: can the workers come back from SCHED_IDLE?
            self.checked = True
            if not (self._set(True) and self._set(False)):
                self.ok = False
                return
        if not self._set(idle):
            self.ok = False


def image_batches(embedder, paths: Sequence[Path], batch_size: int, num_workers: int = 1,
                  pin_memory: bool = False):
    """Yield collated batches (embedder.collate output) for `paths`, in order."""
    yield from start_image_batches(embedder.preprocess, embedder.collate, paths, batch_size, num_workers,
                                   pin_memory=pin_memory)


# Decoded images a loader may hold ahead of the model when asked to read ahead (`prefetch_bytes`).
DEFAULT_PREFETCH_BYTES = 256 * 2**20


def start_image_batches(preprocess, collate, paths: Sequence[Path], batch_size: int, num_workers: int = 1, *,
                        pin_memory: bool = False, prefetch_bytes: int = 0):
    """An iterator of collated batches for `paths`, in order, whose workers start decoding now.

    `preprocess`/`collate` are the embedder's (an embedder's `image_pipeline` gives them before its
    model loads, so decoding overlaps the imports and the load). `prefetch_bytes` > 0 lets the workers
    read that many bytes of preprocessed items ahead (measured on the first image; at least DataLoader's
    usual 2 batches per worker), so a short folder is decoded while the model is still loading.
    """
    import torch
    from torch.utils.data import DataLoader

    ds = _ImageFiles(paths, preprocess)
    wrapped = _Collate(collate)
    if num_workers <= 0 or not ds.paths:
        return _in_process(ds, wrapped, batch_size)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=wrapped,
        worker_init_fn=_worker_init,
        pin_memory=pin_memory and torch.cuda.is_available(),
        prefetch_factor=_prefetch_factor(ds, batch_size, num_workers, prefetch_bytes),
        persistent_workers=False,
        multiprocessing_context="fork" if _fork_ok() else None,
    )
    batches = iter(loader)  # starts the workers and queues their first batches
    workers = getattr(batches, "_workers", [])
    return _unwrap(batches, _Priority([w.pid for w in workers if getattr(w, "pid", None)]))


def _prefetch_factor(ds: _ImageFiles, batch_size: int, num_workers: int, budget: int) -> int:
    """Batches each worker may hold ahead: 2 (DataLoader's default), or as many as `budget` bytes of
    preprocessed items allow (the size of the first item, preprocessed here), up to the whole list."""
    if budget <= 0:
        return 2
    item = ds[0]
    if isinstance(item, _Failed):
        return 2
    per_batch = max(1, _nbytes(item) * batch_size)
    batches = -(-len(ds) // batch_size)
    return max(2, min(budget // per_batch, -(-batches // num_workers)))


def _nbytes(item: Any) -> int:
    """Bytes of the tensors in a preprocessed item (a tensor, or a dict/list/tuple of them)."""
    if hasattr(item, "element_size") and hasattr(item, "numel"):
        return int(item.element_size() * item.numel())
    if isinstance(item, dict):
        return sum(_nbytes(v) for v in item.values())
    if isinstance(item, (list, tuple)):
        return sum(_nbytes(v) for v in item)
    return 0


def _in_process(ds: _ImageFiles, collate: _Collate, batch_size: int):
    for start in range(0, len(ds), batch_size):
        batch = collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
        if isinstance(batch, _Failed):
            batch.raise_()
        yield batch


def _unwrap(batches, priority: _Priority | None = None):
    import time

    while True:
        start = time.perf_counter()
        batch = next(batches, _END)
        if batch is _END:
            return
        if priority is not None:
            priority.after_wait(time.perf_counter() - start)
        if isinstance(batch, _Failed):
            batch.raise_()
        yield batch


_END = object()


def _fork_ok() -> bool:
    import multiprocessing as mp

    return "fork" in mp.get_all_start_methods()
