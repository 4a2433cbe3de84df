"""Speed measurements built from raw values (optimum-benchmark style).

`measure_loop` calls `step()` `warmup` times (the first call is timed on its own: `cold_s`), then
keeps calling it until BOTH `min_iterations` calls and `min_time_s` seconds are reached. Every
call is timed with `time.perf_counter`; with `sync` (e.g. `torch.cuda.synchronize`) queued device
work is waited for before each timer read, so a call's time includes its GPU work.
Throughput = items / time spent inside the timed calls (not the loop's bookkeeping).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Real

import numpy as np


@dataclass
class Latency:
    """Seconds per call (per batch), one value per timed call."""

    values: list[float] = field(default_factory=list)

    @classmethod
    def from_values(cls, values: Sequence[float]) -> Latency:
        return cls([float(v) for v in values])

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def total(self) -> float:
        return float(math.fsum(self.values))

    def percentile(self, q: float) -> float:
        """numpy's default (linear interpolation) percentile; NaN when there are no values."""
        return float(np.percentile(self.values, q)) if self.values else float("nan")

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def mean(self) -> float:
        return float(statistics.fmean(self.values)) if self.values else float("nan")

    @property
    def stdev(self) -> float:
        """Sample standard deviation (n-1); 0 for a single value, NaN for none."""
        if not self.values:
            return float("nan")
        return float(statistics.stdev(self.values)) if len(self.values) > 1 else 0.0

    @property
    def min(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def max(self) -> float:
        return max(self.values) if self.values else float("nan")


@dataclass
class Throughput:
    """Items per second over a measured span."""

    items: float
    seconds: float
    unit: str = "items/s"

    @property
    def value(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class SpeedResult:
    """One measured loop. `items` is the total processed in the timed calls (None when unknown)."""

    latency: Latency
    cold_s: float | None
    items_per_step: float | None
    items: float | None = None
    exhausted: bool = False  # step() raised StopIteration before the loop's conditions were met

    @property
    def iterations(self) -> int:
        return self.latency.count

    @property
    def total_s(self) -> float:
        return self.latency.total

    @property
    def throughput(self) -> Throughput | None:
        if self.items is None or self.iterations == 0:
            return None
        return Throughput(self.items, self.total_s)

    @property
    def items_per_s(self) -> float | None:
        tp = self.throughput
        return None if tp is None or self.total_s <= 0 else tp.value

    def to_metrics(self, prefix: str) -> dict[str, float]:
        """Flat metrics: `{prefix}_per_s`, `{prefix}_batch_latency_{p50,p90,p99,mean}_ms`, `{prefix}_cold_ms`
        (throughput and cold time only when known)."""
        out: dict[str, float] = {}
        if self.items_per_s is not None:
            out[f"{prefix}_per_s"] = self.items_per_s
        for name in ("p50", "p90", "p99", "mean"):
            out[f"{prefix}_batch_latency_{name}_ms"] = getattr(self.latency, name) * 1e3
        if self.cold_s is not None:
            out[f"{prefix}_cold_ms"] = self.cold_s * 1e3
        return out


def device_sync(device: str) -> Callable[[], None] | None:
    """The `sync` to pass to measure_loop for a device string: torch.cuda.synchronize on CUDA, else None."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    dev = torch.device(device)
    return lambda: torch.cuda.synchronize(dev)


def measure_loop(
    step: Callable[[], object],
    *,
    warmup: int = 1,
    min_iterations: int = 5,
    min_time_s: float = 2.0,
    sync: Callable[[], object] | None = None,
    items_per_step: float | None = None,
    max_time_s: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> SpeedResult:
    """Warm up, then time `step()` until both `min_iterations` and `min_time_s` are reached.

    Items: `items_per_step` when given; otherwise, when every timed call returns a number, the sum
    of the returned numbers (a step may return its batch size); otherwise unknown (None).
    `max_time_s` (optional) stops the loop early once that much time passed (at least one timed
    call is always made), for models too slow to reach `min_iterations`. A step that raises
    StopIteration ends the loop (`exhausted=True`). `clock` is injectable for tests.
    """
    if warmup < 0 or min_iterations < 0 or min_time_s < 0:
        raise ValueError(f"warmup, min_iterations, min_time_s must be >= 0, got {warmup}, {min_iterations}, "
                         f"{min_time_s}")

    def timed() -> tuple[float, object]:
        if sync is not None:
            sync()
        t0 = clock()
        out = step()
        if sync is not None:
            sync()
        return clock() - t0, out

    cold: float | None = None
    exhausted = False
    try:
        for i in range(warmup):
            dt, _ = timed()
            if i == 0:
                cold = dt
    except StopIteration:
        exhausted = True

    values: list[float] = []
    returned: list[object] = []
    if not exhausted:
        start = clock()
        while True:
            elapsed = clock() - start
            if len(values) >= min_iterations and elapsed >= min_time_s:
                break
            if max_time_s is not None and values and elapsed >= max_time_s:
                break
            try:
                dt, out = timed()
            except StopIteration:
                exhausted = True
                break
            values.append(dt)
            returned.append(out)

    if items_per_step is not None:
        items: float | None = float(items_per_step) * len(values)
    elif returned and all(isinstance(r, Real) and not isinstance(r, bool) for r in returned):
        items = float(sum(returned))  # type: ignore[arg-type]
    else:
        items = None
    return SpeedResult(Latency.from_values(values), cold, items_per_step, items, exhausted)
