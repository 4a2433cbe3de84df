"""Tasks: take embeddings from the run context, call the metric functions, return Metric records.

One function per task type (registered in bench.registry). A metric an embedder cannot serve
(text for an image-only model) is recorded as n/a with the reason, never as a failure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.results import Metric

if TYPE_CHECKING:
    from bench.runner import EmbedderRun, RunContext

RECALL_PROTOCOL = ("recall@k, 'hit' definition (CLIP paper, CLIP_benchmark): a query hits at k when a "
                   "correct item is in its top k; ties counted against the query")
PROBE_PROTOCOL = ("logistic regression on frozen L2-normalized image embeddings; C swept on the "
                  "validation split, retrained on train+val, scored on test")
ZEROSHOT_PROTOCOL = "class names through prompt templates, averaged per class; cosine similarity"


def check_tasks_against_data(ctx: RunContext) -> None:
    """Load every dataset the tasks use, and check what only the data can tell, before any output.

    Retrieval: every k must be below the number of images. At k >= N, t2i recall@k is 100% whatever
    the model (the whole gallery is in the top k), so a typo like ks [1, 5, 1000] on a 100-image
    set would report a perfect score; it is refused instead (exit 2, naming the task and the k).
    """
    from bench.errors import ConfigError

    for i, task in enumerate(ctx.cfg.tasks):
        for field_name in ("dataset", "train", "val", "test"):
            ref = getattr(task, field_name, None)
            if ref is not None:
                ctx.dataset(ref)
        if task.type == "retrieval":
            n = len(ctx.dataset(task.dataset))
            too_big = [k for k in task.ks if k >= n]
            if too_big:
                k = too_big[0]
                raise ConfigError(f"tasks[{i}].ks: k={k} is not below the {n} images of dataset "
                                  f"'{task.dataset}', so recall@{k} would be 100% whatever the model; "
                                  f"use ks below {n}")


def num_items(key: str, labels: Any, multilabel: bool) -> int | None:
    """Resolution of a classification metric in evaluated items: one item changes it by at most
    100/num_items points (bench.regression's tolerance floor). top-k accuracy: the N test images.
    mean_per_class_recall: classes present x the smallest class's count (one image of the smallest
    class moves its class recall by 100/n_min, the mean by 1/classes of that). mAP: classes with a
    positive x the fewest positives, the same count: AP of a class is the mean over its P
    positives of a precision in [0, 1], so one positive's precision term moves mAP by at most
    100/(classes x P); a near-tie flip of two adjacent items moves it by at most half of that."""
    import numpy as np

    y = np.asarray(labels)
    if len(y) == 0:
        return None
    name = key.rsplit("/", 1)[-1]
    if name in ("top1", "top5"):
        return int(len(y))
    if multilabel and name == "mAP":
        pos = y.sum(0)
        pos = pos[pos > 0]
        return int(len(pos) * pos.min()) if len(pos) else None
    if not multilabel and name == "mean_per_class_recall":
        counts = np.bincount(y.astype(np.int64))
        counts = counts[counts > 0]
        return int(len(counts) * counts.min())
    return None


def _na(run: EmbedderRun, task: str, dataset: str, keys: list[tuple[str, str, bool]], reason: str) -> list[Metric]:
    return [Metric(run.label, task, dataset, k, None, unit, hib, "quality", "", reason) for k, unit, hib in keys]


def run_retrieval(run: EmbedderRun, task) -> list[Metric]:
    from bench.metrics.retrieval import recall_at_k

    keys = [(f"retrieval/{d}_recall@{k}", "%", True) for d in ("i2t", "t2i") for k in task.ks]
    if not run.embedder.supports_text:
        return _na(run, "retrieval", task.dataset, keys,
                   f"'{run.embedder.kind}' embeds images only: no text embeddings for cross-modal retrieval")
    ds = run.ctx.dataset(task.dataset)
    _, owner = ds.flat_captions()
    img = run.image_embeddings(task.dataset)
    txt = run.text_embeddings(task.dataset)
    with run.timed(f"retrieval/{task.dataset}"):
        scores = recall_at_k(img, txt, owner, ks=tuple(task.ks), chunk_size=task.chunk_size)
    run.detail(f"retrieval/{task.dataset}", {"ks": list(task.ks),
                                            "i2t": [scores[f"i2t_recall@{k}"] for k in task.ks],
                                            "t2i": [scores[f"t2i_recall@{k}"] for k in task.ks],
                                            "num_images": len(ds), "num_captions": len(owner)})
    # Queries: image->text counts the images that own a caption, text->image every caption.
    n_queries = {"i2t": len(set(int(i) for i in owner)), "t2i": len(owner)}
    return [Metric(run.label, "retrieval", task.dataset, f"retrieval/{name}", float(v), "%", True, "quality",
                   RECALL_PROTOCOL, num_items=n_queries[name[:3]]) for name, v in scores.items()]


def run_linear_probe(run: EmbedderRun, task) -> list[Metric]:
    from bench.metrics.linear_probe import linear_probe

    train, test = run.ctx.dataset(task.train), run.ctx.dataset(task.test)
    if train.class_names != test.class_names:
        from bench.errors import DataError

        raise DataError(f"linear_probe: '{task.train}' and '{task.test}' have different class lists "
                        f"({len(train.class_names)} vs {len(test.class_names)} classes)")
    val_x = val_y = None
    if task.val:
        val = run.ctx.dataset(task.val)
        val_x, val_y = run.image_embeddings(task.val).numpy(), val.labels
    with run.timed(f"linear_probe/{task.test}"):
        res = linear_probe(run.image_embeddings(task.train).numpy(), train.labels,
                           run.image_embeddings(task.test).numpy(), test.labels, val_x, val_y,
                           multilabel=train.multilabel, seed=run.ctx.cfg.runtime.seed,
                           val_fraction=task.val_fraction, max_iter=task.max_iter,
                           num_classes=len(train.class_names))
    details = dict(res.details)
    details["class_names"] = train.class_names
    run.detail(f"linear_probe/{task.test}", details)
    out = []
    for name, v in res.metrics.items():
        unit, kind = ("", "quality") if name == "best_C" else ("%", "quality")
        if name == "best_C":
            continue  # a setting, not a score: kept in details
        out.append(Metric(run.label, "linear_probe", task.test, f"probe/{name}", float(v), unit, True, kind,
                          PROBE_PROTOCOL, num_items=num_items(name, test.labels, test.multilabel)))
    return out


def run_zeroshot(run: EmbedderRun, task) -> list[Metric]:
    from bench.metrics.zeroshot import DEFAULT_TEMPLATES, class_text_embeddings, zeroshot_classify

    ds = run.ctx.dataset(task.dataset)
    keys = ([("zeroshot/mAP", "%", True)] if ds.multilabel else
            [(f"zeroshot/{k}", "%", True) for k in ("top1", "top5", "mean_per_class_recall")])
    if not run.embedder.supports_text:
        return _na(run, "zeroshot", task.dataset, keys,
                   f"'{run.embedder.kind}' embeds images only: it cannot embed class-name prompts")
    names = [(task.class_names or {}).get(c, c).replace("_", " ") for c in ds.class_names]
    templates = task.templates or DEFAULT_TEMPLATES
    def embed_prompts(prompts: list[str]):
        from bench.embedders.base import check_finite

        return check_finite(run.embedder.embed_texts(prompts), run.label, lambda i: f"prompt {prompts[i]!r}",
                            f"the zero-shot prompts of dataset '{task.dataset}'", run.ctx.cfg.runtime.dtype)

    with run.timed(f"zeroshot/{task.dataset}"):
        class_emb = class_text_embeddings(embed_prompts, names, templates)
        scores = zeroshot_classify(run.image_embeddings(task.dataset), class_emb, ds.labels,
                                   multilabel=ds.multilabel)
    run.detail(f"zeroshot/{task.dataset}", {"class_names": ds.class_names, "templates": list(templates),
                                           **{k: v for k, v in scores.items() if not isinstance(v, float)}})
    return [Metric(run.label, "zeroshot", task.dataset, f"zeroshot/{k}", float(v), "%", True, "quality",
                   ZEROSHOT_PROTOCOL, num_items=num_items(k, ds.labels, ds.multilabel))
            for k, v in scores.items() if isinstance(v, (int, float))]


def run_speed(run: EmbedderRun, task) -> list[Metric]:
    """Throughput end to end (decode + preprocess + model, through the real loader) and model-only
    (pre-made batches), batch latency percentiles, peak memory."""
    import torch

    from bench.loader import image_batches
    from bench.metrics.memory import PeakMemory
    from bench.metrics.speed import measure_loop

    ctx = run.ctx
    ds = ctx.dataset(task.dataset)
    bs = task.batch_size or ctx.cfg.runtime.batch_size
    n = task.num_images
    paths = [ds.image_paths[i % len(ds)] for i in range(n)]
    emb = run.embedder
    device = ctx.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    proto = (f"warm-up {task.warmup_batches} batch(es), then at least {task.min_iterations} passes and "
             f"{task.min_time_s:g} s; batch size {bs}; {device}, {ctx.cfg.runtime.dtype}")

    def e2e_pass() -> None:
        for batch in image_batches(emb, paths, bs, ctx.cfg.runtime.num_workers,
                                   pin_memory=device.startswith("cuda")):
            emb.embed_image_batch(batch)

    # Pre-made batches for the model-only loop.
    batches = list(image_batches(emb, paths, bs, num_workers=0))
    state = {"i": 0}

    def model_step() -> None:
        emb.embed_image_batch(batches[state["i"] % len(batches)])
        state["i"] += 1

    with run.timed(f"speed/{task.dataset}"), PeakMemory(device) as mem:
        model = measure_loop(model_step, warmup=task.warmup_batches, min_iterations=max(task.min_iterations,
                             len(batches)), min_time_s=task.min_time_s, sync=sync,
                             items_per_step=len(paths) / len(batches))
        e2e = measure_loop(e2e_pass, warmup=min(task.warmup_batches, 1), min_iterations=task.min_iterations,
                           min_time_s=task.min_time_s, sync=sync, items_per_step=len(paths))
    out = [
        Metric(run.label, "speed", task.dataset, "speed/images_per_s", e2e.items_per_s, "img/s", True, "speed",
               "end to end: decode + preprocess + model; " + proto),
        Metric(run.label, "speed", task.dataset, "speed/model_images_per_s", model.items_per_s, "img/s", True,
               "speed", "model only, pre-made batches; " + proto),
    ]
    for q in ("p50", "p90", "p99"):
        out.append(Metric(run.label, "speed", task.dataset, f"speed/batch_latency_{q}_ms",
                          getattr(model.latency, q) * 1000, "ms", False, "speed", "model only; " + proto))
    out.append(Metric(run.label, "speed", task.dataset, "speed/cold_batch_ms", model.cold_s * 1000
                      if model.cold_s is not None else None, "ms", False, "speed",
                      "first batch after loading (includes lazy initialisation)"))
    if emb.supports_text and hasattr(ds, "flat_captions"):
        texts = ds.flat_captions()[0][: max(bs * 4, 64)]
        txt = measure_loop(lambda: emb.embed_texts(texts), warmup=1, min_iterations=task.min_iterations,
                           min_time_s=task.min_time_s / 2, sync=sync, items_per_step=len(texts))
        out.append(Metric(run.label, "speed", task.dataset, "speed/texts_per_s", txt.items_per_s, "text/s", True,
                          "speed", "tokenize + text model; " + proto))
    for key, value in mem.metrics().items():
        out.append(Metric(run.label, "speed", task.dataset, f"memory/{key}", value, "MiB", False, "memory",
                          "peak during the speed loops: " + ("torch.cuda max_memory_allocated/reserved after a reset"
                                                             if device.startswith("cuda") else
                                                             "process resident set size (VmHWM after a reset)")))
    run.detail(f"speed/{task.dataset}", {"batch_size": bs, "num_images": n,
                                        "model_latencies_s": list(model.latency.values),
                                        "e2e_pass_s": list(e2e.latency.values)})
    return out
