"""The training loop of a phi3v-lm fine-tuning (VLM2Vec's recipe) on accelerate; train.run_job hands a job
here when its params carry a `lora` block.

Each process loads the base model (float32 weights; mixed_precision bf16 runs the forwards under
accelerate's autocast), injects the peft adapter (phi3v.apply_lora), takes its slice of every global
batch (data.BatchPlan, as the CLIP loop does) and runs phi3v.contrastive_step (InfoNCE with negatives
gathered across processes, optionally GradCache-chunked). The model is not wrapped in DDP: the vision
tower's adapter gets no gradient from a caption batch (nor ever its last layer, which Phi-3-V does not
read), which DDP's bucketed reduction cannot take; instead each optimizer step all-reduces the adapter's
gradients (mean over processes, what DDP does), so N processes train what one does with the same global
batch. Resume: the adapter, logit scale, optimizer and RNG states every `save_every` steps in
out_dir/.train_state/state.pt.

Output (out_dir): the adapter in peft's layout (adapter_config.json + adapter_model.safetensors, peft's
save_pretrained on the view) and, with `merge: true`, out_dir/merged/: a full checkpoint in the
Phi-3-vision layout (the base's config, tokenizer and preprocessor files, merged weights) that phi3v-lm's
`model:` loads; training_record.json last.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.errors import ModelError, OutputError
from bench.finetune.checkpoint import RECORD, STATE_DIR, clear_outputs, write_json
from bench.finetune.params import FinetuneParams

MERGED_DIR = "merged"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def load_base(base_dir: str | Path, settings: dict[str, Any], device: Any = "cpu"):
    """(model, Encoder) of a phi3v-lm base: float32 weights, the embedder's prompts and num_crops."""
    from bench.finetune.phi3v import Encoder
    from bench.models.phi3v.checkpoint import Phi3VCheckpoint
    from bench.models.phi3v.lm import load_phi3v_lm
    from bench.models.phi3v.processor import Phi3VImageProcessor
    from bench.models.phi3v.tokenizer import load_tokenizer, special_ids

    tokenizer = load_tokenizer(base_dir)
    ckpt = Phi3VCheckpoint(base_dir)
    bos, pad = special_ids(tokenizer, ckpt.config)
    pre = dict(ckpt.preprocessor_config or {})
    if settings.get("num_crops") is not None:
        pre["num_crops"] = int(settings["num_crops"])
    processor = Phi3VImageProcessor.from_preprocessor_config(pre)
    model = load_phi3v_lm(ckpt, device=str(device))
    return model, Encoder(model, tokenizer, processor, settings["image_prompt"], settings["text_prompt"],
                          bos, pad)


def _all_reduce_mean(tensors: list[Any], world: int) -> None:
    """Average gradients over the processes (a missing gradient counts as zeros)."""
    import torch
    import torch.distributed as dist

    if world == 1:
        return
    for p in tensors:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)


def run(job: dict[str, Any], params: FinetuneParams, progress: bool,
        keep: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Train one job in this process (rank r of W under torchrun); the record on the main process.
    keep (tests): receives the trained PeftModel and encoder, before any merge."""
    import torch
    from accelerate import Accelerator

    from bench.finetune import data as fdata
    from bench.finetune.phi3v import Phi3VPairTransform, apply_lora, contrastive_step
    from bench.finetune.loop import finish, micro_batches, param_groups, peak_rss_mb, start_step, versions

    out_dir, base_dir = Path(job["out_dir"]), job["base_model_dir"]
    cpu = not torch.cuda.is_available()
    acc = Accelerator(cpu=cpu, mixed_precision=params.mixed_precision)
    device, world = acc.device, acc.num_processes
    model, encoder = load_base(base_dir, job["base_settings"], device)
    total_params = sum(p.numel() for p in model.parameters())
    torch.manual_seed(params.seed)  # the adapter's Gaussian init
    peft_model = apply_lora(model, params.lora, where=f"finetune '{params.name}'")
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / params.temperature), device=device),
                                     requires_grad=bool(params.learn_temperature))
    adapter = [p for p in peft_model.parameters() if p.requires_grad]
    trainable = adapter + ([logit_scale] if logit_scale.requires_grad else [])
    groups = param_groups(peft_model, params.weight_decay)
    if logit_scale.requires_grad:
        groups.append({"params": [logit_scale], "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=params.lr, betas=(0.9, 0.999), eps=1e-8)
    model.train()

    train = job["train"]
    transform = Phi3VPairTransform(encoder, params.seed)
    ds = fdata.pairs_dataset(train["paths"], train["captions"]).with_transform(transform)
    plan = fdata.BatchPlan(len(train["paths"]), params.batch_size, params.seed, world)
    val = None
    if job.get("val"):
        vt = Phi3VPairTransform(encoder, params.seed)
        val = (fdata.pairs_dataset(job["val"]["paths"], job["val"]["captions"]).with_transform(vt), vt,
               len(job["val"]["paths"]))

    state_dir, state_file = out_dir / STATE_DIR, out_dir / STATE_DIR / "state.pt"
    start, history, wall_before = 0, [], 0.0
    saved = _load_state(state_file) if state_file.is_file() else None
    if saved is not None and saved.get("fingerprint") == job["fingerprint"]:
        names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
        with torch.no_grad():
            for n, p in zip(names, adapter):
                p.copy_(saved["adapter"][n])
            logit_scale.copy_(saved["logit_scale"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        start, history, wall_before = int(saved["step"]), list(saved["history"]), float(saved["wall_s"])
    elif acc.is_main_process:
        shutil.rmtree(state_dir, ignore_errors=True)
        clear_phi3v_outputs(out_dir)
    acc.wait_for_everyone()

    from bench.finetune.loop import EXIT_AFTER_SAVE_ENV

    exit_after = int(os.environ.get(EXIT_AFTER_SAVE_ENV, "0") or 0)
    t0 = time.perf_counter()
    for step in range(start, params.steps):
        lr = start_step(optimizer, params, step)
        micro = []
        for batch in micro_batches(plan, fdata, ds, transform, params, step, acc.process_index):
            micro.append(contrastive_step(encoder, batch, logit_scale, params.chunk_size,
                                          loss_scale=1.0 / params.grad_accum, autocast=acc.autocast))
        _all_reduce_mean(trainable, world)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            logit_scale.clamp_(0, math.log(100))
        done = step + 1
        if done % params.log_every == 0 or done == params.steps or step == start == 0:
            mean = float(torch.stack(micro).mean())  # the global batch's loss: the same on every process
            entry = {"step": done, "loss": round(mean, 6), "lr": lr,
                     "logit_scale": round(float(logit_scale.detach().exp()), 4)}
            if val is not None:
                entry["val_loss"] = _val_loss(acc, encoder, val, params, logit_scale)
            history.append(entry)
            if progress and acc.is_main_process:
                print(f"finetune {params.name}: step {done}/{params.steps} loss {mean:.4f} lr {lr:.3g}",
                      file=sys.stderr, flush=True)
        if done % params.save_every == 0 and done < params.steps:
            if acc.is_main_process:
                names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
                _save_state(state_file, {
                    "fingerprint": job["fingerprint"], "step": done, "history": history,
                    "wall_s": wall_before + time.perf_counter() - t0,
                    "adapter": {n: p.detach().cpu() for n, p in zip(names, adapter)},
                    "logit_scale": logit_scale.detach().cpu(), "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state()})
            acc.wait_for_everyone()
            if exit_after == done:
                os._exit(3)
    acc.wait_for_everyone()
    wall = wall_before + time.perf_counter() - t0
    rss = acc.gather(torch.tensor([peak_rss_mb()], device=device)).max().item()
    if keep is not None:
        keep.update(peft_model=peft_model, encoder=encoder, logit_scale=float(logit_scale.detach()))
    if not acc.is_main_process:
        finish(acc)
        return None
    model.eval()
    save_adapter(peft_model, out_dir)
    if params.merge:
        save_merged(peft_model, base_dir, out_dir / MERGED_DIR)
    samples = params.steps * params.batch_size * params.grad_accum
    record = {
        "name": params.name, "fingerprint": job["fingerprint"], "base_model_dir": str(base_dir),
        "params": params.model_dump(mode="json"), "num_processes": world, "device": str(device),
        "num_train_images": len(train["paths"]), "history": history,
        "final_loss": history[-1]["loss"] if history else None, "wall_s": round(wall, 3),
        "samples_per_s": round(samples / wall, 2) if wall > 0 else None, "resumed_from_step": start,
        "peak_rss_mb": round(rss, 1), "trainable_params": int(sum(p.numel() for p in trainable)),
        "total_params": int(total_params), "versions": versions(), "kind": "phi3v-lm-adapter",
        "adapter": str(out_dir.resolve()),
        "temperature": round(1.0 / math.exp(float(logit_scale.detach())), 6),
        "merged": str((out_dir / MERGED_DIR).resolve()) if params.merge else None,
        "base_settings": job["base_settings"],
    }
    write_json(out_dir / RECORD, record)  # last: marks the output complete
    shutil.rmtree(state_dir, ignore_errors=True)
    finish(acc)
    return record


def _val_loss(acc, encoder, val, params: FinetuneParams, logit_scale) -> float | None:
    """Mean InfoNCE over consecutive global batches of the validation pairs (first caption each)."""
    from bench.finetune.data import fetch
    from bench.finetune.phi3v import batch_loss

    ds, tf, n = val
    w = acc.num_processes
    b = min(params.batch_size, n) // w * w
    if b < 2:
        return None
    model = encoder.model
    model.eval()
    losses = []
    for start in range(0, n - b + 1, b):
        k = b // w
        idx = list(range(start + acc.process_index * k, start + (acc.process_index + 1) * k))
        losses.append(batch_loss(encoder, fetch(ds, tf, idx, None), logit_scale, params.chunk_size,
                                 acc.autocast))
    model.train()
    return sum(losses) / len(losses)


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save through bench.io's atomic writer (a kill mid-save keeps the previous state)."""
    import torch

    from bench.io import atomic_path

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot save the fine-tuning state to {path}: {e}") from None
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path) -> dict[str, Any] | None:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable state only means training starts over
        return None


def clear_phi3v_outputs(out_dir: Path) -> None:
    """Remove a previous (other-fingerprint) output: the record first."""
    clear_outputs(out_dir)
    for name in ADAPTER_FILES + ("README.md",):
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / MERGED_DIR, ignore_errors=True)


def save_adapter(peft_model: Any, out_dir: Path) -> None:
    """peft's own save_pretrained on the view: adapter_config.json + adapter_model.safetensors."""
    from bench.models.hub import quiet_transformers

    try:
        with quiet_transformers():
            peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    except OSError as e:
        raise OutputError(f"cannot write the adapter to {out_dir}: {e}") from None


def save_merged(peft_model: Any, base_dir: str | Path, out: Path) -> Path:
    """The adapter merged into a copy of the base checkpoint's tensors (same names, one safetensors file),
    with the base's other files (config, tokenizer, preprocessor). Merges into the live modules: call last."""
    import torch
    from safetensors.torch import save_file

    from bench.models.phi3v.checkpoint import Phi3VCheckpoint

    base = Path(base_dir)
    ckpt = Phi3VCheckpoint(base)
    view = peft_model.merge_and_unload()
    merged = view.state_dict()
    keys = ckpt.keys()
    tensors = dict(ckpt.read([k for k in keys if k not in merged]))  # lm_head: what an embedder never reads
    for key in keys:
        if key in merged:
            tensors[key] = merged[key].detach().to("cpu", torch.float32).contiguous()
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise ModelError(f"internal: merged checkpoint lacks {', '.join(missing[:5])}")
    try:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        save_file({k: tensors[k].contiguous() for k in sorted(tensors)}, str(out / "model.safetensors"),
                  metadata={"format": "pt"})
        for f in sorted(base.iterdir()):
            if f.is_file() and not f.name.startswith(".") and not f.name.endswith(".safetensors") \
                    and f.name != "model.safetensors.index.json":
                shutil.copyfile(f, out / f.name)
    except OSError as e:
        raise OutputError(f"cannot write the merged checkpoint to {out}: {e}") from None
    return out
