"""Torch's intra-op thread count, chosen batch by batch from the measured time per image.

On a quiet machine the model is fastest on every core; on a busy one (other processes on the cores,
or the loader's decoding) a compute thread that is preempted stalls its siblings at every OpenMP
barrier, and fewer threads run faster: measured here (2 cores, load average ~8.7, ViT-B/32, batch 16),
1 thread gave 36-48 images/s in bf16 against 7.5-13 with 2, and 8.7-12 against 3.5-6 in float32;
on a quiet machine 2 threads win (~110 against ~80 in bf16). The best count cannot be read from the
core count, so the loop measures it: the first batch runs on the fewer threads (warm-up, not timed: on a
busy machine a batch on every thread is the expensive one), each candidate then runs one batch, and the fastest per image runs until the next probe of the other one
(every `probe_every` batches), so a change of load is followed. A cycle is timed from asking the loader
for a batch to the batch's vectors, so the decoder's share of the cores counts too. The thread count
does not change the vectors (each output element is reduced in the same order whatever the split;
checked bit for bit in tests/test_embed_cli.py).
"""

from __future__ import annotations

import time


class ThreadTuner:
    """Call `before()` before asking for a batch and `after(n)` once its `n` vectors exist."""

    def __init__(self, max_threads: int | None = None, probe_every: int = 16) -> None:
        import torch

        self.max = max(1, int(max_threads or torch.get_num_threads()))
        self.candidates = sorted({self.max, max(1, (self.max + 1) // 2)}, reverse=True)
        self.probe_every = probe_every
        self.per_item: dict[int, float] = {}  # threads -> smoothed seconds per image
        self.batches = 0
        self.current = self.max
        self.history: list[int] = []  # threads used per batch, for tests and reports
        self._start = 0.0

    def best(self) -> int:
        return min(self.per_item, key=self.per_item.__getitem__) if self.per_item else self.max

    def _choose(self) -> int:
        if len(self.candidates) == 1:
            return self.max
        if self.batches == 0:  # warm-up on the fewer threads: on a busy machine the more costs most
            return self.candidates[-1]
        untried = [c for c in reversed(self.candidates) if c not in self.per_item]
        if untried:
            return untried[0]
        best = self.best()
        if self.batches % self.probe_every == 0:
            return next(c for c in self.candidates if c != best)
        return best

    def before(self) -> None:
        import torch

        threads = self._choose()
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.current = threads
        self._start = time.perf_counter()

    def after(self, n: int) -> None:
        took = time.perf_counter() - self._start
        if self.batches > 0 and n > 0:  # the first batch allocates and waits for the first decode
            sample = took / n
            old = self.per_item.get(self.current)
            self.per_item[self.current] = sample if old is None else 0.5 * old + 0.5 * sample
        self.history.append(self.current)
        self.batches += 1

    def restore(self) -> None:
        """Put torch's thread count back to what it was."""
        import torch

        torch.set_num_threads(self.max)
