"""measure_loop with a fake clock (exact numbers), plus one short real-sleep run; Latency vs numpy."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from bench.metrics.speed import Latency, SpeedResult, Throughput, device_sync, measure_loop


class FakeClock:
    """A clock that only moves when a step says so; records every event in order."""

    def __init__(self, durations):
        self.now = 0.0
        self.durations = list(durations)
        self.events: list[str] = []
        self.calls = 0

    def clock(self) -> float:
        self.events.append("t")
        return self.now

    def step(self):
        self.events.append("step")
        self.now += self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1


def test_time_bound_loop_runs_until_min_time():
    fc = FakeClock([0.5, 0.3, 0.1])  # cold warm-up 0.5 s, second warm-up 0.3 s, then 0.1 s each
    r = measure_loop(fc.step, warmup=2, min_iterations=3, min_time_s=1.0, clock=fc.clock, items_per_step=8)
    assert r.cold_s == pytest.approx(0.5)
    assert fc.calls == 2 + 10 and r.iterations == 10  # 10 x 0.1 s reaches 1.0 s; 3 iterations would not
    assert r.latency.values == pytest.approx([0.1] * 10)  # warm-ups are not in the timed values
    assert r.items_per_s == pytest.approx(80.0)
    assert r.throughput == Throughput(80.0, pytest.approx(1.0))


def test_iteration_bound_loop_runs_until_min_iterations():
    fc = FakeClock([0.25])
    r = measure_loop(fc.step, warmup=1, min_iterations=7, min_time_s=0.5, clock=fc.clock)
    assert r.iterations == 7  # 0.5 s is reached after 2 calls, iterations keep it going
    assert r.items_per_s is None and r.throughput is None


def test_no_warmup_means_no_cold_time_and_zero_minimums_still_time_nothing():
    fc = FakeClock([0.1])
    r = measure_loop(fc.step, warmup=0, min_iterations=4, min_time_s=0.0, clock=fc.clock)
    assert r.cold_s is None and r.iterations == 4
    r = measure_loop(fc.step, warmup=0, min_iterations=0, min_time_s=0.0, clock=fc.clock)
    assert r.iterations == 0 and np.isnan(r.latency.p50)


def test_sync_is_called_before_every_timer_read():
    fc = FakeClock([0.1])

    def sync():
        fc.events.append("sync")

    measure_loop(fc.step, warmup=1, min_iterations=2, min_time_s=0.0, sync=sync, clock=fc.clock)
    timed_call = ["sync", "t", "step", "sync", "t"]
    # warm-up call, loop start read, then per iteration: condition read + timed call
    assert fc.events == timed_call + ["t"] + ["t"] + timed_call + ["t"] + timed_call + ["t"]


def test_items_from_step_return_values():
    sizes = iter([16, 16, 16, 4, 16, 16])
    fc = FakeClock([0.1])

    def step():
        fc.step()
        return next(sizes)

    r = measure_loop(step, warmup=1, min_iterations=4, min_time_s=0.0, clock=fc.clock)
    assert r.items == 16 + 16 + 4 + 16  # the warm-up batch is not counted
    assert r.items_per_s == pytest.approx(52 / 0.4)


def test_stop_iteration_ends_the_loop_and_max_time_caps_it():
    left = [3]
    fc = FakeClock([0.1])

    def step():
        if left[0] == 0:
            raise StopIteration
        left[0] -= 1
        fc.step()

    r = measure_loop(step, warmup=1, min_iterations=10, min_time_s=0.0, clock=fc.clock, items_per_step=2)
    assert r.exhausted and r.iterations == 2 and r.items == 4
    fc = FakeClock([1.0])
    r = measure_loop(fc.step, warmup=0, min_iterations=100, min_time_s=0.0, max_time_s=2.5, clock=fc.clock)
    assert r.iterations == 3 and not r.exhausted


def test_real_clock_with_sleep():
    t0 = time.perf_counter()
    r = measure_loop(lambda: time.sleep(0.01), warmup=1, min_iterations=3, min_time_s=0.1, items_per_step=1)
    wall = time.perf_counter() - t0
    assert r.iterations >= 3 and r.total_s >= 0.1 - 0.011  # the last call may end just past 0.1 s
    assert min(r.latency.values) >= 0.0095 and wall < 2.0
    assert 10 < r.items_per_s <= 101


def test_latency_statistics_match_numpy_and_statistics():
    vals = list(np.random.default_rng(0).gamma(2.0, 0.01, size=37))
    lat = Latency.from_values(vals)
    for q in (50, 90, 99):
        assert getattr(lat, f"p{q}") == pytest.approx(np.percentile(vals, q))
    assert lat.mean == pytest.approx(np.mean(vals))
    assert lat.stdev == pytest.approx(np.std(vals, ddof=1)) == pytest.approx(statistics.stdev(vals))
    assert lat.total == pytest.approx(sum(vals)) and lat.count == 37
    assert lat.min == min(vals) and lat.max == max(vals)
    assert Latency.from_values([0.2]).stdev == 0.0


def test_to_metrics_keys_and_units():
    r = SpeedResult(Latency.from_values([0.1, 0.2, 0.3, 0.4]), cold_s=1.5, items_per_step=8, items=32)
    m = r.to_metrics("images")
    assert m["images_per_s"] == pytest.approx(32 / 1.0)
    assert m["images_batch_latency_p50_ms"] == pytest.approx(250.0)
    assert m["images_batch_latency_p90_ms"] == pytest.approx(np.percentile([100, 200, 300, 400], 90))
    assert m["images_batch_latency_p99_ms"] == pytest.approx(np.percentile([100, 200, 300, 400], 99))
    assert m["images_batch_latency_mean_ms"] == pytest.approx(250.0)
    assert m["images_cold_ms"] == pytest.approx(1500.0)
    bare = SpeedResult(Latency.from_values([0.1]), cold_s=None, items_per_step=None).to_metrics("m")
    assert "m_per_s" not in bare and "m_cold_ms" not in bare


def test_device_sync_and_bad_arguments():
    assert device_sync("cpu") is None
    assert callable(device_sync("cuda:0"))  # built lazily; not called here
    with pytest.raises(ValueError):
        measure_loop(lambda: None, warmup=-1)
