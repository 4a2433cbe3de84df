"""Peak memory of a block of code.

CPU: the process's peak resident set size. The kernel's high-water mark (VmHWM) is reset by
writing "5" to /proc/self/clear_refs, then read back after the block; where that is not
possible, a thread samples RSS every 5 ms (which can miss short spikes).
CUDA: torch.cuda.reset_peak_memory_stats before; synchronize, max_memory_allocated and
max_memory_reserved after (as optimum-benchmark does).
"""

from __future__ import annotations

import threading
from pathlib import Path

MIB = 1024 * 1024


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mib() -> float:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib / 1024
    import psutil

    return psutil.Process().memory_info().rss / MIB


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


class PeakMemory:
    """Context manager; `.metrics()` after the block gives MiB figures."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.005) -> None:
        self.device = device
        self.cuda = str(device).startswith("cuda")
        self.interval_s = interval_s
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled_peak = 0.0
        self.start_rss_mib = 0.0
        self.peak_rss_mib = 0.0
        self.peak_allocated_mib: float | None = None
        self.peak_reserved_mib: float | None = None
        self.method = ""

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sampled_peak = max(self._sampled_peak, current_rss_mib())

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start_rss_mib = current_rss_mib()
        if _reset_hwm():
            self.method = "VmHWM"
        else:
            self.method = "sampling"
            self._sampled_peak = self.start_rss_mib
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.peak_rss_mib = max(self._sampled_peak, current_rss_mib())
        else:
            self.peak_rss_mib = (_status_kib("VmHWM") or 0) / 1024
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            self.peak_allocated_mib = torch.cuda.max_memory_allocated(self.device) / MIB
            self.peak_reserved_mib = torch.cuda.max_memory_reserved(self.device) / MIB

    def metrics(self) -> dict[str, float]:
        out = {"peak_rss_mib": self.peak_rss_mib,
               "peak_rss_delta_mib": max(0.0, self.peak_rss_mib - self.start_rss_mib)}
        if self.cuda:
            out["peak_allocated_mib"] = self.peak_allocated_mib
            out["peak_reserved_mib"] = self.peak_reserved_mib
        return out
