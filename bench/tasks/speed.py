"""Speed and memory: throughput end to end and model-only, batch latency percentiles, peak memory.

Timed calls are bracketed by the one device-aware synchronize (bench.metrics.speed.device_sync), so
queued CUDA kernels are inside the time.

Compute efficiency (params `flops: true`, the default): FLOPs per image and per text as torch's flop
counter counts them on one batch (bench.metrics.flops: matmul/conv/attention, 2 per multiply-add),
cached by the embedder fingerprint; achieved GFLOP/s end to end and model-only (= items/s x GFLOP per
item); and model-only GFLOP/s as a percentage of the device's measured matmul peak in the model's
dtype (cached per hardware fingerprint). Counting runs after the timed loops, so it never warms them.

Fidelity (params `fidelity_images`, default 64; 0: off): in a fast mode (bfloat16, float16, compile), the
cosine and rank agreement of the run's vectors with float32's on a seeded sample (bench.tasks.speed_fidelity).
"""

from __future__ import annotations

from typing import Literal

from bench.params import Float, Int, TaskParams
from bench.results import Metric
from bench.tasks import speed_fidelity
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
_FLOPS = "torch FlopCounterMode on one batch (matmul/conv/attention, 2 FLOPs per multiply-add)"
GFLOP_PER_IMAGE = MetricSpec("speed/gflop_per_image", "GFLOP", False, "speed", _FLOPS)
GFLOPS = MetricSpec("speed/gflops", "GFLOP/s", True, "speed", "end to end: img/s x GFLOP/image; {setup}")
MODEL_GFLOPS = MetricSpec("speed/model_gflops", "GFLOP/s", True, "speed",
                          "model only: img/s x GFLOP/image; {setup}")
PEAK_GFLOPS = MetricSpec("speed/peak_gflops", "GFLOP/s", True, "speed",
                         "device peak: best {n}x{n} matmul in {dtype}, measured once per hardware{published}")
PEAK_FRACTION = MetricSpec("speed/peak_fraction", "%", True, "speed",
                           "model-only GFLOP/s / measured {dtype} matmul peak; {setup}")
GFLOP_PER_TEXT = MetricSpec("speed/gflop_per_text", "GFLOP", False, "speed", _FLOPS)
TEXT_GFLOPS = MetricSpec("speed/text_gflops", "GFLOP/s", True, "speed", "text/s x GFLOP/text; {setup}")
TEXT_PEAK_FRACTION = MetricSpec("speed/text_peak_fraction", "%", True, "speed",
                                "text GFLOP/s / measured {dtype} matmul peak; {setup}")
METRICS = (IMAGES_PER_S, MODEL_IMAGES_PER_S, BATCH_LATENCY, COLD_BATCH, TEXTS_PER_S, PEAK_MEMORY,
           GFLOP_PER_IMAGE, GFLOPS, MODEL_GFLOPS, PEAK_GFLOPS, PEAK_FRACTION, GFLOP_PER_TEXT, TEXT_GFLOPS,
           TEXT_PEAK_FRACTION, *speed_fidelity.METRICS)


class SpeedParams(TaskParams):
    type: Literal["speed"]
    dataset: str
    num_images: Int(ge=1) = 64
    warmup_batches: Int(ge=0) = 1
    min_iterations: Int(ge=1) = 3
    min_time_s: Float(ge=0) = 2.0
    batch_size: Int(ge=1) | None = None  # default: runtime.batch_size
    flops: bool = True  # FLOPs per item, achieved GFLOP/s and % of the device peak (off: skip counting)
    fidelity_images: Int(ge=0) = 64  # fast modes: sample size of the comparison with float32 (0: off)


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
    txt = texts = None
    if emb.supports_text and hasattr(ds, "flat_captions"):
        texts = ds.flat_captions()[0][: max(bs * 4, 64)]
        txt = measure_loop(lambda: emb.embed_texts(texts), warmup=1, min_iterations=task.min_iterations,
                           min_time_s=task.min_time_s / 2, sync=sync, items_per_step=len(texts))
        out.append(TEXTS_PER_S.record(**rec, value=txt.items_per_s, setup=setup))
    if task.flops:
        with inputs.timed(f"speed/{task.dataset}/flops"):
            out += _efficiency(inputs, ds, batches, texts, e2e.items_per_s, model.items_per_s,
                               txt.items_per_s if txt is not None else None, rec, setup)
    how = ("torch.cuda max_memory_allocated/reserved after a reset" if cuda else
           "process resident set size (VmHWM after a reset)")
    for key, value in mem.metrics().items():
        out.append(PEAK_MEMORY.record(**rec, value=value, name=key, how=how))
    with inputs.timed(f"speed/{task.dataset}/fidelity"):
        out += speed_fidelity.measure(inputs, ds, task.fidelity_images, bs, rec)
    inputs.detail(f"speed/{task.dataset}", {"batch_size": bs, "num_images": n,
                                           "model_latencies_s": list(model.latency.values),
                                           "e2e_pass_s": list(e2e.latency.values)})
    return out


def _efficiency(inputs: TaskInputs, ds, batches: list, texts: list[str] | None, e2e_ips: float | None,
                model_ips: float | None, text_ips: float | None, rec: dict, setup: str) -> list[Metric]:
    """GFLOP per item, achieved GFLOP/s and % of the measured peak (bench.metrics.flops)."""
    from bench.environment import device_info, hardware_fingerprint
    from bench.metrics import flops as fl

    emb, cache_dir = inputs.embedder, inputs.cache_dir
    fp = emb.fingerprint()
    n0 = emb.batch_size_of(batches[0])
    per_image = fl.flops_per_item(lambda: emb.embed_image_batch(batches[0]), n0,
                                  fl.flops_key(fp, f"image:{ds.fingerprint()}:{n0}"), cache_dir)
    dtype = str(getattr(emb, "_torch_dtype", None) or "float32").removeprefix("torch.")
    peak = fl.device_peak(inputs.device, dtype, hardware_fingerprint(device_info(inputs.device)), cache_dir)
    pub = peak.get("published_peak_tflops")
    published = f"; published dense peak {pub:g} TFLOP/s ({peak.get('device_name')})" if pub else ""
    model_gflops = fl.achieved(model_ips, per_image)
    out = [GFLOP_PER_IMAGE.record(**rec, value=per_image / 1e9),
           GFLOPS.record(**rec, value=fl.achieved(e2e_ips, per_image), setup=setup),
           MODEL_GFLOPS.record(**rec, value=model_gflops, setup=setup),
           PEAK_GFLOPS.record(**rec, value=peak["gflops"], n=peak.get("n"), dtype=dtype, published=published),
           PEAK_FRACTION.record(**rec, value=fl.peak_fraction(model_gflops, peak["gflops"]), dtype=dtype,
                                setup=setup)]
    if texts:
        per_text = fl.flops_per_item(lambda: emb.embed_texts(texts), len(texts),
                                     fl.flops_key(fp, f"text:{ds.fingerprint()}:{len(texts)}"), cache_dir)
        text_gflops = fl.achieved(text_ips, per_text)
        out += [GFLOP_PER_TEXT.record(**rec, value=per_text / 1e9),
                TEXT_GFLOPS.record(**rec, value=text_gflops, setup=setup),
                TEXT_PEAK_FRACTION.record(**rec, value=fl.peak_fraction(text_gflops, peak["gflops"]),
                                          dtype=dtype, setup=setup)]
    inputs.detail(f"speed/{rec['dataset']}/peak", peak)
    return out
