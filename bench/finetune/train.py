"""The training loop on accelerate: one process here, or each of N under torchrun.

    python -m torch.distributed.run --standalone --nproc_per_node N -m bench.finetune.train --job JOB.json

The job file (written by launch.py) holds the params, the base checkpoint, the training pairs and the
training fingerprint. Each process builds the same Dataset and takes its slice of every global batch
(data.BatchPlan); InfoNCE negatives are gathered with gradient (loss.py), DDP averages the gradients,
so N processes give the single-process result up to float rounding. State is saved every `save_every`
steps (accelerate save_state) and a rerun with the same fingerprint resumes from it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.errors import BenchError, ConfigError
from bench.finetune.checkpoint import STATE_DIR, clear_outputs, save_checkpoint, write_json
from bench.finetune.loop import (  # noqa: F401 (lr_at, param_groups re-exported)
    EXIT_AFTER_SAVE_ENV, lr_at, micro_batches, param_groups, start_step)
from bench.finetune.loop import finish as _finish, peak_rss_mb as _peak_rss_mb, versions as _versions
from bench.finetune.params import FinetuneParams, check_device, parse_params
from bench.io import replace_dir



def freeze(model: Any, params: FinetuneParams) -> int:
    """Set requires_grad per lock_image / lock_text / unlocked_layers; return the trainable count."""
    towers = {"image": (model.vision_model, model.visual_projection, "post_layernorm", params.lock_image),
              "text": (model.text_model, model.text_projection, "final_layer_norm", params.lock_text)}
    for tower, projection, final_norm, locked in towers.values():
        if locked:
            for p in list(tower.parameters()) + list(projection.parameters()):
                p.requires_grad_(False)
        elif params.unlocked_layers is not None:
            for p in tower.parameters():
                p.requires_grad_(False)
            layers = tower.encoder.layers
            keep = list(layers)[len(layers) - min(params.unlocked_layers, len(layers)):]
            for module in keep + [getattr(tower, final_norm)]:
                for p in module.parameters():
                    p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _load_model(base_dir: str):
    from transformers import CLIPModel

    from bench.models.hub import quiet_transformers

    try:
        with quiet_transformers():
            return CLIPModel.from_pretrained(base_dir, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as e:
        from bench.errors import ModelError

        raise ModelError(f"cannot load the base CLIP checkpoint {base_dir}: {e}") from None


def _batch_loss(model, unwrapped, batch: dict[str, Any], device) -> Any:
    from bench.finetune.loss import clip_loss

    out = model(pixel_values=batch["pixel_values"].to(device), input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device))
    return clip_loss(out.image_embeds, out.text_embeds, unwrapped.logit_scale)


def _val_loss(acc, model, unwrapped, val, plan_batch: int, device) -> float | None:
    """Mean InfoNCE over consecutive global batches of the validation pairs (first caption each)."""
    import torch

    from bench.finetune.data import fetch

    ds, tf, n = val
    w = acc.num_processes
    b = min(plan_batch, n) // w * w
    if b < 2:
        return None
    losses = []
    model.eval()
    with torch.no_grad():
        for start in range(0, n - b + 1, b):
            k = b // w
            idx = list(range(start + acc.process_index * k, start + (acc.process_index + 1) * k))
            losses.append(float(_batch_loss(model, unwrapped, fetch(ds, tf, idx, None), device)))
    model.train()
    return sum(losses) / len(losses)


def run_job(job: dict[str, Any], progress: bool = False,
            keep: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Train one job in this process (rank r of W under torchrun). Returns the record on the main process.
    keep (tests, phi3v-lm jobs): receives the trained model (bench.finetune.phi3v_train.run)."""
    import torch

    params = parse_params(job["params"])
    threads = torch.get_num_threads()
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    try:
        if params.is_phi3v:  # a phi3v-lm base: a peft adapter, VLM2Vec's recipe
            from bench.finetune.phi3v_train import run

            return run(job, params, progress, keep)
        return _run(job, params, progress)
    finally:
        torch.set_num_threads(threads)
        if "WORLD_SIZE" not in os.environ:  # in-process: the next job may use another mixed precision
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()


def _run(job: dict[str, Any], params: FinetuneParams, progress: bool) -> dict[str, Any] | None:
    import torch
    from accelerate import Accelerator

    from bench.finetune import data as fdata
    from bench.models.preprocess import load_clip_preprocess

    out_dir, base_dir = Path(job["out_dir"]), job["base_model_dir"]
    cpu = not torch.cuda.is_available()
    check_device(params, "cpu" if cpu else "cuda")
    acc = Accelerator(cpu=cpu, mixed_precision=params.mixed_precision,
                      gradient_accumulation_steps=params.grad_accum)
    device = acc.device
    torch.manual_seed(params.seed)

    model = _load_model(base_dir)
    total_params = sum(p.numel() for p in model.parameters())
    trainable = freeze(model, params)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(base_dir, local_files_only=True)
    preprocess = load_clip_preprocess(base_dir)
    max_tokens = int(model.config.text_config.max_position_embeddings)
    train = job["train"]
    ds, tf = fdata.build(train["paths"], train["captions"], preprocess, tokenizer, max_tokens, params.seed)
    plan = fdata.BatchPlan(len(train["paths"]), params.batch_size, params.seed, acc.num_processes)
    val = None
    if job.get("val"):
        vds, vtf = fdata.build(job["val"]["paths"], job["val"]["captions"], preprocess, tokenizer,
                               max_tokens, params.seed)
        val = (vds, vtf, len(job["val"]["paths"]))

    optimizer = torch.optim.AdamW(param_groups(model, params.weight_decay), lr=params.lr,
                                  betas=(0.9, 0.98), eps=1e-6)
    model.train()
    model, optimizer = acc.prepare(model, optimizer)
    unwrapped = acc.unwrap_model(model)

    state = out_dir / STATE_DIR
    start, history, wall_before = 0, [], 0.0
    progress_file = state / "progress.json"
    saved = None
    if progress_file.is_file():
        try:
            saved = json.loads(progress_file.read_text())
        except ValueError:
            saved = None
    if saved and saved.get("fingerprint") == job["fingerprint"]:
        acc.load_state(str(state))
        start, history, wall_before = int(saved["step"]), list(saved["history"]), float(saved["wall_s"])
        acc.step = start * params.grad_accum  # accumulate() counts micro-steps from here
    elif acc.is_main_process:
        shutil.rmtree(state, ignore_errors=True)
        clear_outputs(out_dir)
    acc.wait_for_everyone()

    t0 = time.perf_counter()
    exit_after = int(os.environ.get(EXIT_AFTER_SAVE_ENV, "0") or 0)
    for step in range(start, params.steps):
        lr = start_step(optimizer, params, step)
        micro = []
        for batch in micro_batches(plan, fdata, ds, tf, params, step, acc.process_index):
            with acc.accumulate(model):
                loss = _batch_loss(model, unwrapped, batch, device)
                acc.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro.append(loss.detach().float())
        with torch.no_grad():
            unwrapped.logit_scale.clamp_(0, math.log(100))
        done = step + 1
        if done % params.log_every == 0 or done == params.steps or step == start == 0:
            mean = acc.gather(torch.stack(micro).mean().reshape(1)).mean().item()
            entry = {"step": done, "loss": round(mean, 6), "lr": lr,
                     "logit_scale": round(float(unwrapped.logit_scale.detach().exp()), 4)}
            if val is not None:
                entry["val_loss"] = _val_loss(acc, model, unwrapped, val, params.batch_size, device)
            history.append(entry)
            if progress and acc.is_main_process:
                print(f"finetune {params.name}: step {done}/{params.steps} loss {mean:.4f} lr {lr:.3g}",
                      file=sys.stderr, flush=True)
        if done % params.save_every == 0 and done < params.steps:
            _save_state(acc, state, {"fingerprint": job["fingerprint"], "step": done, "history": history,
                                     "wall_s": wall_before + time.perf_counter() - t0})
            if exit_after == done:
                os._exit(3)
    acc.wait_for_everyone()
    wall = wall_before + time.perf_counter() - t0
    rss = acc.gather(torch.tensor([_peak_rss_mb()], device=device)).max().item()
    if not acc.is_main_process:
        _finish(acc)  # waits for the main process's checkpoint, then leaves the group with it
        return None
    save_checkpoint(unwrapped, base_dir, out_dir)
    samples = params.steps * params.batch_size * params.grad_accum
    record = {
        "name": params.name, "fingerprint": job["fingerprint"], "base_model_dir": str(base_dir),
        "params": params.model_dump(mode="json"), "num_processes": acc.num_processes,
        "device": str(device), "num_train_images": len(train["paths"]), "history": history,
        "final_loss": history[-1]["loss"] if history else None, "wall_s": round(wall, 3),
        "samples_per_s": round(samples / wall, 2) if wall > 0 else None,
        "resumed_from_step": start, "peak_rss_mb": round(rss, 1), "trainable_params": int(trainable),
        "total_params": int(total_params), "versions": _versions(),
    }
    from bench.finetune.checkpoint import RECORD

    write_json(out_dir / RECORD, record)  # last: marks the checkpoint complete
    shutil.rmtree(state, ignore_errors=True)
    _finish(acc)
    return record


def _save_state(acc, state: Path, progress: dict[str, Any]) -> None:
    """accelerate save_state into a temp folder, then swap it in (a kill mid-save keeps the old state)."""
    tmp = state.with_name(state.name + ".tmp")
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    from bench.models.hub import quiet_transformers

    with quiet_transformers():
        acc.save_state(str(tmp))
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_json(tmp / "progress.json", progress)
        replace_dir(tmp, state)
    acc.wait_for_everyone()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.finetune.train", description=__doc__.splitlines()[0])
    ap.add_argument("--job", required=True, help="job JSON written by bench.finetune.launch")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        try:
            job = json.loads(Path(args.job).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read fine-tuning job {args.job}: {e}") from None
        run_job(job, progress=not args.quiet)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
