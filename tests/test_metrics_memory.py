"""PeakMemory: real 200 MiB allocations on CPU (both methods), nesting, and the CUDA branch with mocks."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from bench.metrics import memory
from bench.metrics.memory import PeakMemory, current_rss_mib

MB200 = 200 * 1024 * 1024
needs_hwm = pytest.mark.skipif(not memory._reset_hwm(), reason="/proc/self/clear_refs not writable here")


def _touch_200_mib(hold_s: float = 0.0) -> None:
    a = np.ones(MB200 // 8)  # np.ones writes every page, so all of it becomes resident
    time.sleep(hold_s)
    del a


def test_current_rss_agrees_with_psutil():
    import psutil

    assert current_rss_mib() == pytest.approx(psutil.Process().memory_info().rss / 2**20, abs=16)


@needs_hwm
def test_hwm_method_sees_a_freed_200_mib_allocation():
    with PeakMemory("cpu") as m:
        _touch_200_mib()
    got = m.metrics()
    assert m.method == "VmHWM"
    assert got["peak_rss_delta_mib"] >= 190, got
    assert got["peak_rss_mib"] >= current_rss_mib() + 150  # freed again: only the peak remembers it
    assert set(got) == {"peak_rss_mib", "peak_rss_delta_mib"}


@needs_hwm
def test_hwm_is_reset_on_entry():
    _touch_200_mib()  # a peak BEFORE the block must not be reported
    with PeakMemory("cpu") as m:
        pass
    assert m.metrics()["peak_rss_delta_mib"] < 50, m.metrics()


def test_sampling_fallback_when_clear_refs_is_not_writable(monkeypatch):
    monkeypatch.setattr(memory, "_reset_hwm", lambda: False)
    with PeakMemory("cpu", interval_s=0.005) as m:
        _touch_200_mib(hold_s=0.1)  # held for ~20 sampling intervals
    assert m.method == "sampling"
    assert m.metrics()["peak_rss_delta_mib"] >= 190, m.metrics()
    assert m._sampler is None  # thread stopped and joined


@needs_hwm
def test_nested_blocks_keep_the_outer_peak():
    with PeakMemory() as outer:
        _touch_200_mib()  # outer's peak, reached before the inner block resets the mark
        with PeakMemory() as inner:
            pass
    assert inner.metrics()["peak_rss_delta_mib"] < 50
    assert outer.metrics()["peak_rss_delta_mib"] >= 190, outer.metrics()
    with PeakMemory() as outer2:
        with PeakMemory() as inner2:
            _touch_200_mib()
    assert inner2.metrics()["peak_rss_delta_mib"] >= 190
    assert outer2.metrics()["peak_rss_delta_mib"] >= 190
    assert memory._ACTIVE == []


class _FakeCuda:
    def __init__(self, monkeypatch, fail_sync_at: int | None = None):
        self.calls: list[tuple[str, object]] = []
        self.fail_sync_at = fail_sync_at
        monkeypatch.setattr(torch.cuda, "synchronize", self.sync)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                            lambda d=None: self.calls.append(("reset", d)))
        monkeypatch.setattr(torch.cuda, "max_memory_allocated",
                            lambda d=None: self.calls.append(("allocated", d)) or 300 * 2**20)
        monkeypatch.setattr(torch.cuda, "max_memory_reserved",
                            lambda d=None: self.calls.append(("reserved", d)) or 512 * 2**20)

    def sync(self, d=None):
        self.calls.append(("sync", d))
        if self.fail_sync_at is not None and sum(c[0] == "sync" for c in self.calls) == self.fail_sync_at:
            raise RuntimeError("CUDA error: device-side assert")


def test_cuda_branch_order_values_and_device(monkeypatch):
    fake = _FakeCuda(monkeypatch)
    with PeakMemory("cuda:1") as m:
        fake.calls.append(("block", None))
    names = [c[0] for c in fake.calls]
    assert names == ["sync", "reset", "block", "sync", "allocated", "reserved"]
    assert all(d == torch.device("cuda:1") for n, d in fake.calls if n != "block")
    got = m.metrics()
    assert got["peak_allocated_mib"] == 300.0 and got["peak_reserved_mib"] == 512.0
    assert "peak_rss_mib" in got  # host memory is measured as well


def test_cuda_error_inside_block_is_not_masked(monkeypatch):
    _FakeCuda(monkeypatch, fail_sync_at=2)  # the exit synchronize fails too
    with pytest.raises(ValueError, match="from the block"):
        with PeakMemory("cuda"):
            raise ValueError("from the block")
    _FakeCuda(monkeypatch, fail_sync_at=2)
    with pytest.raises(RuntimeError, match="device-side"):  # a clean block still reports the failure
        with PeakMemory("cuda"):
            pass


def test_cpu_device_never_touches_cuda(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("cuda called for a cpu block")

    monkeypatch.setattr(torch.cuda, "synchronize", boom)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", boom)
    with PeakMemory("cpu") as m:
        pass
    with PeakMemory(None):
        pass
    assert "peak_allocated_mib" not in m.metrics()
