"""Symmetric InfoNCE (CLIP's loss) with negatives gathered across processes, gradient included."""

from __future__ import annotations

import math

import torch

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learnable log-temperature to ln(100)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every process's gradient of the gathered tensor and
    hands each process the slice of its own rows (a reduce-scatter written with all_reduce, so it runs
    on gloo as well as nccl). Equivalent to open_clip's gather_with_grad."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        import torch.distributed as dist

        world, rank = dist.get_world_size(), dist.get_rank()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        ctx.rank, ctx.n = rank, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every process (rank order); identity in a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy over the global batch.

    image_emb, text_emb: this process's L2-normalized rows; pair i is (image i, text i). Every process
    computes the loss of the whole gathered batch, so the value is the same everywhere; the gradient
    reaching each process's own rows is the sum over processes, which DDP's averaging turns back into
    exactly the single-process gradient.
    """
    img = gather_with_grad(image_emb.float())
    txt = gather_with_grad(text_emb.float())
    scale = logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * img @ txt.t()
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (torch.nn.functional.cross_entropy(logits, target)
                  + torch.nn.functional.cross_entropy(logits.t(), target))
