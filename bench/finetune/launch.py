"""Run a fine-tuning job: in this process (1 process) or under torchrun (N gloo/nccl processes).

    record = finetune(params, base_model_dir, train_sets, out_dir, eval_sets=[...], num_processes=2)

A completed output folder is reused when its training fingerprint matches (needs_training): base
model files + training/validation data + hyper-parameters + CODE_VERSION. The process count is not part
of it: N processes train the same model as one (up to float rounding).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.data.base import CaptionDataset
from bench.errors import BenchError, ConfigError, OutputError
from bench.finetune.checkpoint import WEIGHTS, read_record, write_json
from bench.finetune.params import FinetuneParams

CODE_VERSION = 1  # bump when the training code changes what a given fingerprint produces
PHI3V_CODE_VERSION = 1  # the same for the phi3v-lm recipe (bench.finetune.phi3v*)
JOB_FILE = ".finetune_job.json"


def pairs(sets: Sequence[CaptionDataset]) -> dict[str, Any]:
    from bench.finetune.data import merge_caption_sets

    paths, captions = merge_caption_sets(sets)
    return {"names": [d.name for d in sets], "paths": paths, "captions": captions,
            "fingerprint": [d.fingerprint() for d in sets]}


def training_fingerprint(params: FinetuneParams, base_model_dir: str | Path, train: dict[str, Any],
                         val: dict[str, Any] | None, base_settings: dict[str, Any] | None = None) -> str:
    """sha256 over what determines the trained weights (a phi3v-lm base: its prompts and num_crops too)."""
    from bench.models.hub import hash_model_files

    key = {"base_model": hash_model_files(base_model_dir), "train": train["fingerprint"],
           "val": val["fingerprint"] if val else None, "hyper": params.hyper(), "code": CODE_VERSION}
    if params.is_phi3v:
        key.update(base_settings=base_settings, phi3v_code=PHI3V_CODE_VERSION)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def load_record(out_dir: str | Path) -> dict[str, Any] | None:
    """The training record of a completed fine-tuning in out_dir, else None."""
    rec = read_record(out_dir)
    if rec is None:
        return None
    if rec.get("kind") == "phi3v-lm-adapter":  # bench.finetune.phi3v_train's outputs
        need = [Path(out_dir) / "adapter_model.safetensors"]
        if rec.get("merged"):
            need.append(Path(out_dir) / "merged" / "model.safetensors")
    else:
        need = [Path(out_dir) / WEIGHTS]
    return rec if all(p.is_file() for p in need) else None


def needs_training(out_dir: str | Path, fingerprint: str) -> bool:
    """True unless out_dir holds a completed checkpoint trained with this exact fingerprint."""
    rec = load_record(out_dir)
    return rec is None or rec.get("fingerprint") != fingerprint


def finetune(params: FinetuneParams, base_model_dir: str | Path, train_sets: Sequence[CaptionDataset],
             out_dir: str | Path, *, val_sets: Sequence[CaptionDataset] | None = None,
             eval_sets: Sequence[Any] | None = None, num_processes: int = 1,
             progress: bool = True, threads: int | None = None,
             base_settings: dict[str, Any] | None = None,
             keep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune (or reuse) and return the training record. eval_sets: datasets the benchmark evaluates
    (anything with image_paths); training on any of their images is refused (leakage). threads: torch
    CPU threads per process (None: torch's default in-process, cores / N under torchrun); tiny models
    train far faster on 1 thread when the cores are busy."""
    from bench.finetune.leakage import check_no_leakage

    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ConfigError(f"finetune '{params.name}': num_processes must be an integer >= 1, got "
                          f"{num_processes!r}")
    train = pairs(train_sets)
    val = pairs(val_sets) if val_sets else None
    evaluated = [p for ds in (eval_sets or []) for p in ds.image_paths]
    check_no_leakage(train["paths"], evaluated, what=f"finetune '{params.name}'")
    if val:
        check_no_leakage(train["paths"], val["paths"], what=f"finetune '{params.name}' (validation set)")
    import torch

    from bench.finetune.params import check_device

    check_device(params, "cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out_dir)
    if params.is_phi3v and not base_settings:
        raise ConfigError(f"finetune '{params.name}': a phi3v-lm base needs its prompts (base_settings)")
    job = make_job(params, base_model_dir, train, val, out, base_settings)
    if not needs_training(out, job["fingerprint"]):
        return load_record(out)  # type: ignore[return-value]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create fine-tuning output folder {out}: {e}") from None
    if threads is not None:
        job["threads"] = int(threads)
    if num_processes == 1:
        from bench.finetune.train import run_job

        record = run_job(job, progress=progress, keep=keep)
    else:
        record = _spawn(job, out, num_processes, progress)
    if record is None:
        raise BenchError(f"finetune '{params.name}': training finished without a record in {out}")
    return record


def make_job(params: FinetuneParams, base_model_dir: str | Path, train: dict[str, Any],
             val: dict[str, Any] | None, out: Path,
             base_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job that train.run_job / `python -m bench.finetune.train --job` executes."""
    job = {"params": params.model_dump(mode="json"), "base_model_dir": str(Path(base_model_dir).resolve()),
           "out_dir": str(out.resolve()), "train": train, "val": val,
           "fingerprint": training_fingerprint(params, base_model_dir, train, val, base_settings)}
    if base_settings is not None:
        job["base_settings"] = dict(base_settings)
    return job


def torchrun_command(job_file: Path, num_processes: int, quiet: bool = False) -> list[str]:
    """The multi-process launch: torchrun starts N processes (gloo on CPU) that Accelerator joins.
    (`accelerate launch --cpu --num_processes N` would start only one on CPU.)"""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
           "-m", "bench.finetune.train", "--job", str(job_file)]
    return cmd + (["--quiet"] if quiet else [])


def _spawn(job: dict[str, Any], out: Path, num_processes: int, progress: bool) -> dict[str, Any] | None:
    job_file = out / JOB_FILE
    write_json(job_file, job)
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(job.get("threads") or max(1, (os.cpu_count() or 1) // num_processes))
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[2]),
                                                    env.get("PYTHONPATH", "")] if p)
    proc = subprocess.run(torchrun_command(job_file, num_processes, quiet=not progress), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error: ")]
        if errors:
            raise ConfigError(errors[0][len("error: "):])
        log = out / "torchrun.log"  # the whole output of the processes, for the cause behind the tail
        with contextlib.suppress(OSError):
            log.write_text(proc.stdout, encoding="utf-8")
        causes = [ln.strip() for ln in lines if "terminate called" in ln or "what():" in ln
                  or "Error" in ln.split(":", 1)[0]][:2]
        tail = " | ".join(causes + lines[-3:])
        raise BenchError(f"finetune '{job['params']['name']}': torchrun with {num_processes} processes "
                         f"failed (exit {proc.returncode}; full output in {log}): {tail}")
    if progress and proc.stdout:
        sys.stderr.write(proc.stdout)
    job_file.unlink(missing_ok=True)
    return load_record(out)
