"""Cache (issue 6, target 5): a second run of the demo with cached embeddings takes at most 10%
of the first. Both runs in this process, fresh cache folder, no report rendering in either run
(rendering is the same fixed cost in both and is timed separately).
Usage: python benchmarks/bench_cache.py   (needs `make data models` first)
"""

from __future__ import annotations

import shutil
import time

from _common import ROOT, WORK, report


def main() -> None:
    from bench.config import load_config
    from bench.runner import run_benchmark

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    cache = WORK / "cache-bench"
    shutil.rmtree(cache, ignore_errors=True)
    cfg = cfg.model_copy(update={"cache_dir": cache, "output_dir": WORK / "runs"})
    times = []
    for i in range(2):
        t = time.perf_counter()
        run_benchmark(cfg, "configs/demo.yaml", progress=False, out_dir=WORK / "runs" / f"cache{i}", render=False)
        times.append(time.perf_counter() - t)
        print(f"run {i + 1}: {times[-1]:.1f} s", flush=True)
    ratio = times[1] / times[0]
    report("cache second_run/first_run", ratio, "<= 0.10", ratio <= 0.10,
           f"first {times[0]:.1f} s, second {times[1]:.1f} s (speed loops re-measure every run)")


if __name__ == "__main__":
    main()
