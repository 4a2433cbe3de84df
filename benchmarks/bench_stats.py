"""Cost of the per-query records and the bootstrap at COCO size (issue 15), on 2 CPU threads:
- per-query ranks, 5,000 images x 25,000 captions x 768 dims (random normalized vectors), chunk 1024,
  next to recall_at_k on the same inputs (target: ranks < 3x recall_at_k);
- 95% intervals (1,000 resamples) of every retrieval measure, both directions (18 metrics), and the
  paired intervals of two embedders for the same 18 (target < 30 s each);
- the .npz record size (target < 1 MB), and (info) mAP intervals for 5,000 images x 80 classes;
- what a run pays through the wiring (bench.significance.annotate: intervals + chance on the Metric
  records, then the per_query.npz written atomically): the default measures (6 recall@k) and all 18.
Usage: python -m benchmarks.bench_stats [--quick]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "2")

import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from benchmarks._common import report  # noqa: E402

ALL = ("recall", "true_recall", "mrr", "ndcg", "median_rank")


def _embeddings(n_img: int, per: int, dim: int, noise: float | None, seed: int):
    """Normalized random images; captions independent random vectors (noise None) or their image
    plus Gaussian noise."""
    import torch

    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=g), dim=1)
    owner = torch.arange(n_img * per) // per
    txt = torch.randn(n_img * per, dim, generator=g)
    if noise is not None:
        txt = img[owner] + noise * txt
    return img, torch.nn.functional.normalize(txt, dim=1), owner


def main() -> None:
    import numpy as np
    import torch

    from bench.metrics.ranking import retrieval_intervals, retrieval_keys, retrieval_paired, retrieval_scores
    from bench.metrics.records import retrieval_record, save_per_query
    from bench.metrics.retrieval import recall_at_k, retrieval_ranks
    from bench.metrics.stats import bootstrap, map_stat

    torch.set_num_threads(2)
    quick = "--quick" in sys.argv
    n_img, per, dim = (1000, 5, 768) if quick else (5000, 5, 768)
    # Two "embedders": random vectors give ranks spread over the whole gallery (worst case for the
    # record size); a noisy-caption one gives realistic recall.
    img, txt, owner = _embeddings(n_img, per, dim, noise=None, seed=0)
    img2, txt2, _ = _embeddings(n_img, per, dim, noise=0.3, seed=1)
    retrieval_ranks(img[:256], txt[: 256 * per], owner[: 256 * per])  # warm-up

    # CPU seconds beside the wall clock: on a shared machine they say what the work costs
    t, c = time.perf_counter(), time.process_time()
    ranks = retrieval_ranks(img, txt, owner)
    t_ranks, c_ranks = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    recall_at_k(img, txt, owner)
    t_recall, c_recall = time.perf_counter() - t, time.process_time() - c
    report(f"per-query ranks {n_img}x{n_img * per}x{dim} (s)", t_ranks,
           f"< 3x recall_at_k ({t_recall:.2f} s)", t_ranks < 3 * t_recall,
           f"ratio {t_ranks / t_recall:.2f}; cpu {c_ranks:.1f} s vs {c_recall:.1f} s")
    ranks2 = retrieval_ranks(img2, txt2, owner)

    keys = retrieval_keys(ALL, (1, 5, 10))
    t, c = time.perf_counter(), time.process_time()
    ci = retrieval_intervals(ranks2, keys, n_resamples=1000, seed=0)
    t_ci, c_ci = time.perf_counter() - t, time.process_time() - c
    report(f"bootstrap 95% CI of {len(keys)} retrieval metrics, 1000 resamples (s)", t_ci, "< 30", t_ci < 30,
           f"i2t_recall@1 {ci['i2t_recall@1'].estimate:.1f} [{ci['i2t_recall@1'].low:.1f}, "
           f"{ci['i2t_recall@1'].high:.1f}], t2i_ndcg@10 {ci['t2i_ndcg@10'].estimate:.1f} "
           f"[{ci['t2i_ndcg@10'].low:.1f}, {ci['t2i_ndcg@10'].high:.1f}]; cpu {c_ci:.1f} s")
    t, c = time.perf_counter(), time.process_time()
    pc = retrieval_paired(ranks2, ranks, keys, n_resamples=1000, seed=0)
    t_pair, c_pair = time.perf_counter() - t, time.process_time() - c
    report(f"paired bootstrap of {len(keys)} retrieval metrics, 1000 resamples (s)", t_pair, "< 30",
           t_pair < 30,
           f"i2t_recall@1 diff {pc['i2t_recall@1'].diff:.1f} [{pc['i2t_recall@1'].low:.1f}, "
           f"{pc['i2t_recall@1'].high:.1f}]; cpu {c_pair:.1f} s")

    with tempfile.TemporaryDirectory() as d:
        size = save_per_query(os.path.join(d, "pq.npz"), {"retrieval/random": retrieval_record(ranks)})
        size2 = save_per_query(os.path.join(d, "pq2.npz"), {"retrieval/noisy": retrieval_record(ranks2)})
    report("per-query record .npz, one retrieval task (KB)", size / 1024, "< 1024", size < 2**20,
           f"random ranks; {size2 / 1024:.0f} KB for the noisy embedder "
           f"(i2t_recall@1 {retrieval_scores(ranks2, ['i2t_recall@1'])['i2t_recall@1']:.1f})")

    _wiring(ranks2, keys)

    rng = np.random.default_rng(0)
    n, n_cls = (1000, 80) if quick else (5000, 80)
    labels = (rng.random((n, n_cls)) < 0.04).astype(np.uint8)
    scores = (labels + 1.5 * rng.standard_normal((n, n_cls))).astype(np.float32)
    t, c = time.perf_counter(), time.process_time()
    m = bootstrap(n, map_stat(labels, scores), n_resamples=1000, seed=0)
    t_map, c_map = time.perf_counter() - t, time.process_time() - c
    report(f"(info) mAP 95% CI, {n} images x {n_cls} classes, 1000 resamples (s)", t_map, "(info)", True,
           f"mAP {m.estimate:.1f} [{m.low:.1f}, {m.high:.1f}]; cpu {c_map:.1f} s")


def _wiring(ranks, keys: list[str]) -> None:
    """The run's own path: annotate the Metric records of one embedder, save its records."""
    from bench import significance
    from bench.metrics.ranking import retrieval_scores
    from bench.metrics.records import retrieval_record
    from bench.results import Metric

    scores = retrieval_scores(ranks, keys)
    rec = retrieval_record(ranks, embedder="e", task="retrieval", dataset="coco")
    recall = [k for k in keys if "_recall@" in k and "true" not in k]
    for name, ks in (("default measures (recall@1/5/10, both directions)", recall), ("all 18 measures", keys)):
        metrics = [Metric("e", "retrieval", "coco", f"retrieval/{k}", scores[k], "%", True, "quality")
                   for k in ks]
        t, c = time.perf_counter(), time.process_time()
        significance.annotate(metrics, {("e", "retrieval", "coco"): rec}, {"resamples": 1000, "seed": 0})
        t_a, c_a = time.perf_counter() - t, time.process_time() - c
        report(f"run wiring: intervals + chance of {len(ks)} metrics, {name} (s)", t_a, "< 30", t_a < 30,
               f"cpu {c_a:.1f} s; {metrics[0].key} {metrics[0].value:.1f} [{metrics[0].ci_low:.1f}, "
               f"{metrics[0].ci_high:.1f}], chance {metrics[0].chance:.3f}")
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        path = os.path.join(d, "per_query.npz")
        size = significance.save_records(path, {("e", "retrieval", "coco"): rec}, {})
        report("run wiring: per_query.npz of one retrieval task, atomic write (KB)", size / 1024, "< 1024",
               size < 2**20, f"{time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
