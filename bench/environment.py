"""What a result needs to describe itself: versions, git commit, device, hardware fingerprint."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("bench", "torch", "transformers", "tokenizers", "safetensors", "numpy", "scikit-learn",
            "pandas", "pillow", "accelerate", "datasets", "huggingface_hub", "pydantic", "matplotlib")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_info(cwd: str | Path = ".") -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_device(requested: str) -> str:
    """auto -> cuda when available, else cpu; "cpu", "cuda" and "cuda:N" as given. Asking for cuda
    without one, or for a GPU number the machine does not have, is a clear error."""
    import torch

    from bench.errors import ConfigError

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("runtime.device: 'cuda' requested but no CUDA device is available "
                          "(use device: auto or cpu)")
    if requested.startswith("cuda:") and int(requested[5:]) >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ConfigError(f"runtime.device: '{requested}' but this machine has {n} CUDA device(s) "
                          f"(cuda:0 to cuda:{n - 1})")
    return requested


def device_info(device: str) -> dict[str, Any]:
    import os

    import torch

    info: dict[str, Any] = {
        "type": "cuda" if device.startswith("cuda") else "cpu",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # ATen's SIMD kernel level (AVX512, AVX2, DEFAULT...; ATEN_CPU_CAPABILITY lowers it): float
        # results differ in the last bits between levels. Recorded, not part of the fingerprint.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": None,
    }
    if info["type"] == "cuda":
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        info["cuda"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "total_mib": round(props.total_memory / 2**20),
            "torch_cuda": torch.version.cuda,
        }
        info["name"] = props.name
    else:
        info["name"] = info["cpu"]
    return info


def hardware_fingerprint(dev: dict[str, Any]) -> str:
    """Speed and memory are only compared between runs with the same fingerprint."""
    parts = [dev.get("type"), dev.get("cpu"), dev.get("cpu_count"), dev.get("torch_threads"),
             (dev.get("cuda") or {}).get("name")]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def capture(device: str) -> dict[str, Any]:
    dev = device_info(device)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "packages": package_versions(),
        "git": git_info(),
        "device": dev,
        "hardware_fingerprint": hardware_fingerprint(dev),
    }
