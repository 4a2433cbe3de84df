"""Compute efficiency: FLOPs per item, the device's peak, and the achieved fraction of it.

FLOPs are what `torch.utils.flop_counter.FlopCounterMode` counts on one forward: the matmul family
(mm, addmm, bmm, baddbmm), convolutions and scaled-dot-product attention (forward kernels; the CPU
kernel added here, see count_flops), each as 2 x multiply-accumulates. Elementwise ops, norms,
softmax, activations and data movement count zero, so the figure is the model's dense compute, the
convention of published model FLOPs (a ViT-B/32 image is ~8.7 GFLOP). Counted once per embedder on one preprocessed batch (per item = total / batch
size) and cached on disk by the embedder's fingerprint: <cache_dir>/flops/<key>.json.

Peak: the best time of a square matmul per dtype on the device (float32, bfloat16 where the device
runs it, float16 on CUDA), measured once per hardware fingerprint and cached:
<cache_dir>/peak/<hardware_fp>-<dtype>.json. It is what torch reaches on a large GEMM here, a
realistic ceiling for a transformer's matmuls. On CUDA the vendor's published dense (non-sparse) peak
of known parts is reported next to it as a second reference (`published_peak_tflops`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.io import write_json_atomic

log = logging.getLogger(__name__)
FLOPS_VERSION = 1
_PEAK_MEMO: dict[tuple[str, str], dict[str, Any]] = {}

# Vendor-published dense peaks in TFLOP/s (datasheets; the "with sparsity" figures are 2x these and NOT
# used). fp32 is the CUDA-core (non-tensor) rate; tf32 is the tensor-core rate torch uses for float32
# matmuls only when torch.backends.cuda.matmul.allow_tf32 is on. First matching substring wins.
PUBLISHED_PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200 NVL", {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5, "float16": 835.5}),
    ("H200", {"float32": 67.0, "tf32": 494.5, "bfloat16": 989.5, "float16": 989.5}),  # SXM
    ("H100 NVL", {"float32": 60.0, "tf32": 417.5, "bfloat16": 835.5, "float16": 835.5}),
    ("H100 PCIe", {"float32": 51.0, "tf32": 378.0, "bfloat16": 756.0, "float16": 756.0}),
    ("H100", {"float32": 67.0, "tf32": 494.5, "bfloat16": 989.5, "float16": 989.5}),  # SXM (HBM3)
    ("A100", {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0, "float16": 312.0}),
    ("L40S", {"float32": 91.6, "tf32": 183.0, "bfloat16": 362.0, "float16": 362.0}),
    ("L4", {"float32": 30.3, "tf32": 60.0, "bfloat16": 121.0, "float16": 121.0}),
    ("A10G", {"float32": 31.2, "tf32": 62.5, "bfloat16": 125.0, "float16": 125.0}),  # A10 datasheet
    ("A10", {"float32": 31.2, "tf32": 62.5, "bfloat16": 125.0, "float16": 125.0}),
    ("V100", {"float32": 15.7, "float16": 125.0}),  # SXM2; no bf16 tensor cores
    ("T4", {"float32": 8.1, "float16": 65.0}),
)


def published_peak_tflops(device_name: str | None, dtype: str) -> float | None:
    """The vendor's dense peak for a CUDA device name (e.g. "NVIDIA H100 80GB HBM3") and dtype, or None."""
    if not device_name:
        return None
    for part, peaks in PUBLISHED_PEAK_TFLOPS:
        if part.lower() in device_name.lower():
            return peaks.get(dtype)
    return None


# ---- FLOP counting ------------------------------------------------------------------------------
def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs torch's flop counter sees while `fn()` runs (forward ops only, no grad needed).

    torch (2.13) registers the CUDA attention kernels but not the CPU one that
    scaled_dot_product_attention dispatches to (_scaled_dot_product_flash_attention_for_cpu), so on
    CPU attention would count zero; it is mapped to torch's own SDPA formula (QK^T and AV as dense bmm,
    no causal discount, as on CUDA)."""
    import torch
    from torch.utils import flop_counter

    extra = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    known = flop_counter.flop_registry
    if cpu_sdpa is not None and hasattr(flop_counter, "sdpa_flop_count") and cpu_sdpa not in known:
        extra[cpu_sdpa] = _cpu_sdpa_flops
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=extra)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None,
                    **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flops_key(embedder_fp: dict[str, Any], what: str) -> str:
    """Cache key: the embedder fingerprint (model files + every output-changing setting) and `what`
    (modality and the input the count was made on, e.g. the data fingerprint)."""
    blob = json.dumps({"v": FLOPS_VERSION, "embedder": embedder_fp, "what": what}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def flops_per_item(fn: Callable[[], Any], n_items: int, key: str, cache_dir: str | Path | None,
                   counter: Callable[[Callable[[], Any]], int] | None = None) -> float:
    """FLOPs per item of `fn()` (which processes `n_items`), from <cache_dir>/flops/<key>.json when
    there, else counted (with `counter`, default count_flops) and written there."""
    path = Path(cache_dir) / "flops" / f"{key}.json" if cache_dir is not None else None
    cached = _read(path)
    if cached is not None and "flops_per_item" in cached:
        return float(cached["flops_per_item"])
    total = (counter or count_flops)(fn)
    per = total / max(n_items, 1)
    if path is not None:
        _write(path, {"flops_per_item": per, "total_flops": total, "items": n_items, "v": FLOPS_VERSION})
    return per


# ---- device peak --------------------------------------------------------------------------------
def peak_dtypes(device: str) -> list[str]:
    """The dtypes whose matmul peak is measured on `device`."""
    import torch

    if str(device).startswith("cuda"):
        out = ["float32", "float16"]
        if torch.cuda.is_bf16_supported():
            out.insert(1, "bfloat16")
        return out
    return ["float32", "bfloat16"]


def matmul_peak(device: str, dtype: str, n: int | None = None, min_time_s: float = 0.3) -> dict[str, Any]:
    """Best achieved FLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs) on `device` in `dtype`.

    n defaults to 2048 on CPU (about 0.1 s per matmul in float32 on two AVX-512 cores; the whole
    measurement takes ~0.5 s) and 8192 on CUDA. Timed through measure_loop with the device-aware sync.
    """
    import torch

    from bench.metrics.speed import device_sync, measure_loop

    cuda = str(device).startswith("cuda")
    n = n or (8192 if cuda else 2048)
    tdtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=tdtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=tdtype)
    with torch.inference_mode():
        res = measure_loop(lambda: torch.mm(a, b), warmup=2, min_iterations=3, min_time_s=min_time_s,
                           sync=device_sync(device), max_time_s=max(min_time_s * 4, 1.0))
    best = res.latency.min
    flops = 2.0 * n ** 3
    return {"dtype": dtype, "n": n, "best_s": best,
            "gflops": flops / best / 1e9 if best > 0 else float("nan"),
            "iterations": res.iterations, "tf32": bool(cuda and torch.backends.cuda.matmul.allow_tf32)}


def device_peak(device: str, dtype: str, hardware_fp: str, cache_dir: str | Path | None,
                measure: Callable[[str, str], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The measured matmul peak for (hardware fingerprint, dtype), from <cache_dir>/peak/ when there,
    else measured (with `measure`, default matmul_peak) and cached. Adds the published peak on CUDA."""
    path = Path(cache_dir) / "peak" / f"{hardware_fp}-{dtype}.json" if cache_dir is not None else None
    out = _read(path) if path is not None else _PEAK_MEMO.get((hardware_fp, dtype))
    if out is None or not math.isfinite(float(out.get("gflops", float("nan")))):
        out = dict((measure or matmul_peak)(device, dtype))
        out["hardware_fingerprint"] = hardware_fp
        if str(device).startswith("cuda"):
            import torch

            name = torch.cuda.get_device_name(torch.device(device))
            out["device_name"] = name
            out["published_peak_tflops"] = published_peak_tflops(name, "tf32" if out.get("tf32") else dtype)
        if path is not None:
            _write(path, out)
        else:  # no cache folder (cache off): measured once per process
            _PEAK_MEMO[(hardware_fp, dtype)] = out
    return out


# ---- achieved figures ---------------------------------------------------------------------------
def achieved(items_per_s: float | None, flops_per_item: float | None) -> float | None:
    """GFLOP/s achieved at `items_per_s` for `flops_per_item`; None when either is unknown."""
    if items_per_s is None or flops_per_item is None or not math.isfinite(items_per_s):
        return None
    return items_per_s * flops_per_item / 1e9


def peak_fraction(gflops: float | None, peak_gflops: float | None) -> float | None:
    """Achieved / peak in percent; None when unknown."""
    if gflops is None or not peak_gflops or not math.isfinite(peak_gflops):
        return None
    return 100.0 * gflops / peak_gflops


def _read(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable %s (%s); recomputing", path, e)
        return None
    return data if isinstance(data, dict) else None


def _write(path: Path, data: dict[str, Any]) -> None:
    try:
        write_json_atomic(path, data, map_errors=False)
    except OSError as e:  # a cache that cannot be written is not fatal: the figure is still reported
        log.warning("cannot cache %s (%s)", path, e)
