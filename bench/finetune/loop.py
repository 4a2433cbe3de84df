"""What both training loops share (train.py: CLIP, phi3v_train.py: a phi3v-lm adapter): the learning-rate
schedule, AdamW parameter groups, the end of a (multi-process) run, peak memory and library versions."""

from __future__ import annotations

import math
from typing import Any

from bench.finetune.params import FinetuneParams

# Test hook: exit abruptly (as a kill would) right after the state of this step is saved.
EXIT_AFTER_SAVE_ENV = "BENCH_FINETUNE_EXIT_AFTER_SAVE"


def lr_at(params: FinetuneParams, step: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then cosine to 0 or constant."""
    if step < params.warmup_steps:
        return params.lr * (step + 1) / params.warmup_steps
    if params.schedule == "constant":
        return params.lr
    span = max(1, params.steps - params.warmup_steps)
    return 0.5 * params.lr * (1 + math.cos(math.pi * (step - params.warmup_steps) / span))


def start_step(optimizer: Any, params: FinetuneParams, step: int) -> float:
    """Set every parameter group's learning rate to the schedule's value at `step`; return it."""
    lr = lr_at(params, step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def micro_batches(plan: Any, fdata: Any, ds: Any, transform: Any, params: FinetuneParams, step: int,
                  rank: int):
    """The `grad_accum` micro-batches of optimizer step `step` that process `rank` trains on."""
    for a in range(params.grad_accum):
        epoch, idx = plan.local(step * params.grad_accum + a, rank)
        yield fdata.fetch(ds, transform, idx, epoch)


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, logit_scale (anything 1-D)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "bias" in name or "norm" in name or "logit_scale" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def finish(acc) -> None:
    """Every process waits for the others, then the process group is destroyed explicitly. A process that
    left early (exiting while the main one still wrote the checkpoint) sometimes died at interpreter exit
    with "terminate called without an active exception" (SIGABRT) under load: seen 2 in ~20 runs."""
    acc.wait_for_everyone()
    acc.end_training()
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def versions() -> dict[str, str]:
    import accelerate
    import datasets
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "datasets": datasets.__version__}
