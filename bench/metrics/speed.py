"""Speed measurements built from raw values (optimum-benchmark style).

measure_loop: warm-up calls (the first one timed separately as the cold call), then a timed loop
that runs until BOTH a minimum number of iterations and a minimum time are reached. With `sync`
(torch.cuda.synchronize on CUDA) every timer read waits for queued device work.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Latency:
    values: list[float] = field(default_factory=list)  # seconds per call

    @classmethod
    def from_values(cls, values) -> Latency:
        return cls([float(v) for v in values])

    def _q(self, q: float) -> float:
        return float(np.percentile(self.values, q)) if self.values else float("nan")

    @property
    def p50(self) -> float:
        return self._q(50)

    @property
    def p90(self) -> float:
        return self._q(90)

    @property
    def p99(self) -> float:
        return self._q(99)

    @property
    def mean(self) -> float:
        return float(statistics.fmean(self.values)) if self.values else float("nan")

    @property
    def stdev(self) -> float:
        return float(statistics.stdev(self.values)) if len(self.values) > 1 else 0.0

    @property
    def total(self) -> float:
        return float(sum(self.values))


@dataclass
class SpeedResult:
    latency: Latency
    cold_s: float | None
    items_per_step: float | None

    @property
    def iterations(self) -> int:
        return len(self.latency.values)

    @property
    def total_s(self) -> float:
        return self.latency.total

    @property
    def items_per_s(self) -> float | None:
        if self.items_per_step is None or self.total_s <= 0:
            return None
        return self.items_per_step * self.iterations / self.total_s

    def to_metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}_latency_p50_ms": self.latency.p50 * 1e3, f"{prefix}_latency_p90_ms": self.latency.p90 * 1e3,
               f"{prefix}_latency_p99_ms": self.latency.p99 * 1e3}
        if self.items_per_s is not None:
            out[f"{prefix}_per_s"] = self.items_per_s
        if self.cold_s is not None:
            out[f"{prefix}_cold_ms"] = self.cold_s * 1e3
        return out


def measure_loop(step: Callable[[], object], *, warmup: int = 1, min_iterations: int = 5, min_time_s: float = 2.0,
                 sync: Callable[[], object] | None = None, items_per_step: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> SpeedResult:
    def timed() -> float:
        if sync:
            sync()
        t0 = clock()
        step()
        if sync:
            sync()
        return clock() - t0

    cold = None
    for i in range(warmup):
        dt = timed()
        if i == 0:
            cold = dt
    values: list[float] = []
    start = clock()
    while len(values) < min_iterations or clock() - start < min_time_s:
        values.append(timed())
    return SpeedResult(Latency.from_values(values), cold, items_per_step)
