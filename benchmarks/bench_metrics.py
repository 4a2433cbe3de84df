"""Metric costs on 2 CPU threads, each printed next to its target:
- retrieval recall@k: 5,000 images x 25,000 captions x 1,024 dims, chunk 1024 (target < 3 s);
- linear probe: 10,000 train x 1,024 dims, 10 classes, full C sweep + retrain (target < 60 s);
- (information) multi-label probe, 5,000 x 512, 20 classes, and the chunk size's effect on retrieval.
Usage: python -m benchmarks.bench_metrics [--quick]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "2")

import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from benchmarks._common import report  # noqa: E402


def bench_retrieval(n_img: int = 5000, per: int = 5, dim: int = 1024, repeats: int = 3) -> None:
    import torch

    from bench.metrics.retrieval import recall_at_k

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=g), dim=1)
    owner = torch.arange(n_img * per) // per
    # noisy captions so that ranks are non-trivial (recall well below 100)
    txt = torch.nn.functional.normalize(img[owner] + 0.3 * torch.randn(n_img * per, dim, generator=g), dim=1)
    recall_at_k(img[:512], txt[: 512 * per], owner[: 512 * per])  # warm-up (thread pools, allocator)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        r = recall_at_k(img, txt, owner, chunk_size=1024)
        times.append(time.perf_counter() - t)
    best, med = min(times), statistics.median(times)
    report(f"retrieval recall@k {n_img}x{n_img * per}x{dim} (s, median of {repeats})", med, "< 3", med < 3.0,
           f"min {best:.2f} s; i2t@1 {r['i2t_recall@1']:.1f} t2i@1 {r['t2i_recall@1']:.1f}")
    for cs in (256, 2048):
        t = time.perf_counter()
        recall_at_k(img, txt, owner, chunk_size=cs)
        print(f"  chunk_size {cs}: {time.perf_counter() - t:.2f} s", flush=True)


def bench_probe(n_train: int = 10000, n_test: int = 2000, dim: int = 1024, classes: int = 10) -> None:
    import numpy as np

    from bench.metrics.linear_probe import linear_probe

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((classes, dim))
    y = rng.integers(0, classes, n_train + n_test)
    x = (centers[y] + 12.0 * rng.standard_normal((len(y), dim))).astype(np.float32)  # ~80 % top-1
    t = time.perf_counter()
    r = linear_probe(x[:n_train], y[:n_train], x[n_train:], y[n_train:], seed=0)
    dt = time.perf_counter() - t
    report(f"linear probe {n_train}x{dim}, {classes} classes, sweep + retrain (s)", dt, "< 60", dt < 60.0,
           f"{len(r.details['c_sweep'])} fits in the sweep; top1 {r.metrics['top1']:.1f}, "
           f"best_C {r.metrics['best_C']:.3g}")


def bench_probe_multilabel(n: int = 5000, dim: int = 512, classes: int = 20) -> None:
    import numpy as np

    from bench.metrics.linear_probe import linear_probe

    rng = np.random.default_rng(1)
    y = (rng.random((n, classes)) < 0.15).astype(np.uint8)
    w = rng.standard_normal((classes, dim))
    x = (y @ w + 12.0 * rng.standard_normal((n, dim))).astype(np.float32)
    split = int(n * 0.8)
    t = time.perf_counter()
    r = linear_probe(x[:split], y[:split], x[split:], y[split:], multilabel=True, seed=0)
    dt = time.perf_counter() - t
    print(f"  (info) multi-label probe {split}x{dim}, {classes} classes: {dt:.1f} s, "
          f"mAP {r.metrics['mAP']:.1f}",
          flush=True)


def main() -> None:
    import torch

    torch.set_num_threads(2)
    quick = "--quick" in sys.argv
    bench_retrieval(repeats=1 if quick else 3)
    bench_probe()
    if not quick:
        bench_probe_multilabel()


if __name__ == "__main__":
    main()
