"""Peak memory of a block of code.

CPU (always measured): the peak resident set size of THIS process (DataLoader worker processes
are not included). The kernel's high-water mark is reset on entry by writing "5" to
/proc/self/clear_refs (Linux) and VmHWM is read from /proc/self/status on exit. Where that is
not possible, a thread samples RSS every `interval_s` (it can miss spikes shorter than that).
Nested blocks are supported: a reset by an inner block first folds the high-water mark reached
so far into every enclosing block.

CUDA (when `device` is a CUDA device), as optimum-benchmark does: synchronize and
torch.cuda.reset_peak_memory_stats on entry; synchronize, max_memory_allocated and
max_memory_reserved on exit. These count PyTorch's caching allocator only, not other CUDA
contexts or libraries.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
_ACTIVE: list[PeakMemory] = []  # open blocks, outermost first
_LOCK = threading.Lock()


def _status_kib(field: str) -> int | None:
    """A `field: N kB` line of /proc/self/status in KiB, or None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_mib() -> float:
    """Resident set size of this process now, MiB."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib / 1024
    import psutil

    return psutil.Process().memory_info().rss / MIB


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS; False where that is not possible."""
    if _status_kib("VmHWM") is None:
        return False
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _is_cuda(device: Any) -> bool:
    return device is not None and str(device).startswith("cuda")


class PeakMemory:
    """`with PeakMemory(device) as m: ...`; then `m.metrics()` -> MiB figures:
    peak_rss_mib, peak_rss_delta_mib (peak over the RSS at entry), and on CUDA also
    peak_allocated_mib, peak_reserved_mib."""

    def __init__(self, device: Any = "cpu", interval_s: float = 0.005, force_sampling: bool = False) -> None:
        self.device = device
        self.cuda = _is_cuda(device)
        self.interval_s = interval_s
        self.force_sampling = force_sampling
        self.method = ""  # "VmHWM" or "sampling"
        self.start_rss_mib = 0.0
        self.peak_rss_mib = 0.0
        self.peak_allocated_mib: float | None = None
        self.peak_reserved_mib: float | None = None
        self._folded_kib = 0  # high-water marks handed over by inner blocks before they reset
        self._sampled_peak = 0.0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    # ---- CPU ----------------------------------------------------------------------------------
    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sampled_peak = max(self._sampled_peak, current_rss_mib())

    def _start_cpu(self) -> None:
        self.start_rss_mib = current_rss_mib()
        with _LOCK:
            hwm = _status_kib("VmHWM")
            if hwm is not None:  # enclosing blocks keep what was reached so far
                for outer in _ACTIVE:
                    outer._folded_kib = max(outer._folded_kib, hwm)
            ok = not self.force_sampling and _reset_hwm()
            _ACTIVE.append(self)
        if ok:
            self.method = "VmHWM"
            return
        self.method = "sampling"
        self._sampled_peak = self.start_rss_mib
        self._stop.clear()
        self._sampler = threading.Thread(target=self._sample, name="PeakMemory-sampler", daemon=True)
        self._sampler.start()

    def _stop_cpu(self) -> None:
        with _LOCK:
            if self in _ACTIVE:
                _ACTIVE.remove(self)
        now = current_rss_mib()
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self._sampler = None
            self.peak_rss_mib = max(self._sampled_peak, now)
        else:
            hwm = _status_kib("VmHWM") or 0
            self.peak_rss_mib = max(hwm, self._folded_kib) / 1024
        self.peak_rss_mib = max(self.peak_rss_mib, now, self.start_rss_mib)

    # ---- CUDA ---------------------------------------------------------------------------------
    def _torch_device(self):
        import torch

        return torch.device(self.device)

    def _start_cuda(self) -> None:
        import torch

        dev = self._torch_device()
        torch.cuda.synchronize(dev)  # earlier queued work must not land inside the block
        torch.cuda.reset_peak_memory_stats(dev)

    def _stop_cuda(self) -> None:
        import torch

        dev = self._torch_device()
        torch.cuda.synchronize(dev)  # the block's kernels (and their allocations) are done
        self.peak_allocated_mib = torch.cuda.max_memory_allocated(dev) / MIB
        self.peak_reserved_mib = torch.cuda.max_memory_reserved(dev) / MIB

    # ---- context manager ----------------------------------------------------------------------
    def __enter__(self) -> PeakMemory:
        if self.cuda:
            self._start_cuda()
        self._start_cpu()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._stop_cpu()
        if self.cuda:
            try:
                self._stop_cuda()
            except Exception:
                if exc_type is None:
                    raise
                # the block already failed (maybe a CUDA error): keep its exception, not ours
        return False

    def metrics(self) -> dict[str, float]:
        """MiB figures of the last block."""
        out = {
            "peak_rss_mib": self.peak_rss_mib,
            "peak_rss_delta_mib": max(0.0, self.peak_rss_mib - self.start_rss_mib),
        }
        if self.cuda and self.peak_allocated_mib is not None:
            out["peak_allocated_mib"] = self.peak_allocated_mib
            out["peak_reserved_mib"] = self.peak_reserved_mib  # type: ignore[assignment]
        return out
