"""Speed and memory: throughput end to end and model-only, batch latency percentiles, peak memory.

Timed calls are bracketed by the one device-aware synchronize (bench.metrics.speed.device_sync), so
queued CUDA kernels are inside the time.
"""

from __future__ import annotations

from typing import Literal

from bench.params import Float, Int, TaskParams
from bench.results import Metric
from bench.tasks.base import MetricSpec, TaskInputs

IMAGES_PER_S = MetricSpec("speed/images_per_s", "img/s", True, "speed",
                          "end to end: decode + preprocess + model; {setup}")
MODEL_IMAGES_PER_S = MetricSpec("speed/model_images_per_s", "img/s", True, "speed",
                                "model only, pre-made batches; {setup}")
# q: p50, p90, p99
BATCH_LATENCY = MetricSpec("speed/batch_latency_{q}_ms", "ms", False, "speed", "model only; {setup}")
COLD_BATCH = MetricSpec("speed/cold_batch_ms", "ms", False, "speed",
                        "first batch after loading (includes lazy initialisation)")
TEXTS_PER_S = MetricSpec("speed/texts_per_s", "text/s", True, "speed", "tokenize + text model; {setup}")
PEAK_MEMORY = MetricSpec("memory/{name}", "MiB", False, "memory", "peak during the speed loops: {how}")
METRICS = (IMAGES_PER_S, MODEL_IMAGES_PER_S, BATCH_LATENCY, COLD_BATCH, TEXTS_PER_S, PEAK_MEMORY)


class SpeedParams(TaskParams):
    type: Literal["speed"]
    dataset: str
    num_images: Int(ge=1) = 64
    warmup_batches: Int(ge=0) = 1
    min_iterations: Int(ge=1) = 3
    min_time_s: Float(ge=0) = 2.0
    batch_size: Int(ge=1) | None = None  # default: runtime.batch_size


def run(inputs: TaskInputs, task: SpeedParams) -> list[Metric]:
    """Throughput end to end (decode + preprocess + model, through the real loader) and model-only
    (pre-made batches), batch latency percentiles, peak memory."""
    from bench import loader
    from bench.metrics.memory import PeakMemory
    from bench.metrics.speed import device_sync, measure_loop

    ds = inputs.dataset(task.dataset)
    rt = inputs.runtime
    bs = task.batch_size or rt.batch_size
    n = task.num_images
    paths = [ds.image_paths[i % len(ds)] for i in range(n)]
    emb = inputs.embedder
    device = inputs.device
    cuda = device.startswith("cuda")
    sync = device_sync(device)
    setup = (f"warm-up {task.warmup_batches} batch(es), then at least {task.min_iterations} passes and "
             f"{task.min_time_s:g} s; batch size {bs}; {device}, {rt.dtype}")

    def e2e_pass() -> None:
        for batch in loader.image_batches(emb, paths, bs, rt.num_workers, pin_memory=cuda):
            emb.embed_image_batch(batch)

    # Pre-made batches for the model-only loop.
    batches = list(loader.image_batches(emb, paths, bs, num_workers=0))
    state = {"i": 0}

    def model_step() -> None:
        emb.embed_image_batch(batches[state["i"] % len(batches)])
        state["i"] += 1

    with inputs.timed(f"speed/{task.dataset}"), PeakMemory(device) as mem:
        model = measure_loop(model_step, warmup=task.warmup_batches, min_iterations=max(task.min_iterations,
                             len(batches)), min_time_s=task.min_time_s, sync=sync,
                             items_per_step=len(paths) / len(batches))
        e2e = measure_loop(e2e_pass, warmup=min(task.warmup_batches, 1), min_iterations=task.min_iterations,
                           min_time_s=task.min_time_s, sync=sync, items_per_step=len(paths))
    rec = {"label": inputs.label, "task": "speed", "dataset": task.dataset}
    out = [IMAGES_PER_S.record(**rec, value=e2e.items_per_s, setup=setup),
           MODEL_IMAGES_PER_S.record(**rec, value=model.items_per_s, setup=setup)]
    for q in ("p50", "p90", "p99"):
        out.append(BATCH_LATENCY.record(**rec, value=getattr(model.latency, q) * 1000, q=q, setup=setup))
    out.append(COLD_BATCH.record(**rec, value=model.cold_s * 1000 if model.cold_s is not None else None))
    if emb.supports_text and hasattr(ds, "flat_captions"):
        texts = ds.flat_captions()[0][: max(bs * 4, 64)]
        txt = measure_loop(lambda: emb.embed_texts(texts), warmup=1, min_iterations=task.min_iterations,
                           min_time_s=task.min_time_s / 2, sync=sync, items_per_step=len(texts))
        out.append(TEXTS_PER_S.record(**rec, value=txt.items_per_s, setup=setup))
    how = ("torch.cuda max_memory_allocated/reserved after a reset" if cuda else
           "process resident set size (VmHWM after a reset)")
    for key, value in mem.metrics().items():
        out.append(PEAK_MEMORY.record(**rec, value=value, name=key, how=how))
    inputs.detail(f"speed/{task.dataset}", {"batch_size": bs, "num_images": n,
                                           "model_latencies_s": list(model.latency.values),
                                           "e2e_pass_s": list(e2e.latency.values)})
    return out
