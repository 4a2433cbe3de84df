"""Metrics at scale (issue 6, target 6): recall@k on 5,000 images x 25,000 captions (1,024-d) in
under 3 s; the linear probe with its C sweep on 10,000 x 1,024 features (10 classes) in under 60 s.
Usage: python benchmarks/bench_metrics.py
"""

from __future__ import annotations

import time

from _common import median, report


def main() -> None:
    import numpy as np
    import torch

    from bench.metrics.linear_probe import linear_probe
    from bench.metrics.retrieval import recall_at_k

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5000, 1024, generator=g), dim=1)
    owner = np.repeat(np.arange(5000), 5)
    txt = torch.nn.functional.normalize(img[owner] + 1.5 * torch.randn(25000, 1024, generator=g) / 32, dim=1)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        r = recall_at_k(img, txt, owner)
        times.append(time.perf_counter() - t)
    print(f"recall: {r}")
    report("recall@k 5k x 25k seconds", median(times), "< 3", median(times) < 3,
           f"median of 3, spread {min(times):.2f}-{max(times):.2f} s")

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((10, 1024)).astype(np.float32)
    y = rng.integers(0, 10, 12000)
    x = centers[y] * 0.0015 + rng.standard_normal((12000, 1024)).astype(np.float32) * 0.04  # overlapping classes
    t = time.perf_counter()
    res = linear_probe(x[:10000], y[:10000], x[10000:], y[10000:], seed=0)
    dt = time.perf_counter() - t
    print(f"probe: {res.metrics}, {len(res.details['c_sweep'])} fits in the sweep")
    report("linear probe 10k x 1024 seconds", dt, "< 60", dt < 60, f"top1 {res.metrics['top1']:.1f}%")


if __name__ == "__main__":
    main()
