"""Phi-3-vision's side of fine-tuning (VLM2Vec's recipe): a peft adapter on the published-name view,
last-token pooling with gradient, the training pairs as prompts, and one contrastive step with optional GradCache.

- `apply_lora(model, lora)`: peft's `get_peft_model` on `causal_lm_view(model)` (bench's native modules
  under `Phi3VForCausalLM`'s names), so the LoRA/DoRA layers are injected into the modules bench runs and
  the saved adapter's keys are `base_model.model.model.layers.N...`, as VLM2Vec's are.
- `Phi3VForEmbedding.pool(ids, mask, ...)` (bench/models/phi3v/lm.py): `embed` with gradient and on
  the model's device: the final hidden state at each row's last real token, L2-normalized (rows beyond
  longrope's original length run apart, so a row's vector does not depend on its batch).
- `Encoder`: images with the embedder's image prompt, captions with its text prompt.
- `contrastive_step`: symmetric InfoNCE (bench.finetune.loss, negatives gathered across processes) and
  its backward, on the whole batch or GradCache-style in chunks: representations of every chunk without
  gradient, the loss and its gradient with respect to the representations on the full batch, then each
  chunk again with gradient, back-propagating those representation gradients. The RNG state of each
  chunk's first pass is restored for its second, so dropout masks agree and the result is the full
  batch's gradient (up to float rounding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bench.errors import ConfigError
from bench.finetune.data import caption_index
from bench.finetune.params import LoraParams


# ---- the adapter -----------------------------------------------------------------------------------------
def lora_view(model: Any):
    """`causal_lm_view(model)`, usable by peft (which reads `base_model_prefix` off the model it wraps)."""
    from bench.models.phi3v.layout import causal_lm_view

    view = causal_lm_view(model)
    if not hasattr(view, "base_model_prefix"):
        view.base_model_prefix = "model"  # Phi3VForCausalLM's value
    return view


def linear_names(view: Any) -> list[str]:
    """The last name component of every nn.Linear under the view (what `target_modules` may name)."""
    linear = torch.nn.Linear
    return sorted({name.rsplit(".", 1)[-1] for name, m in view.named_modules() if isinstance(m, linear)})


def lora_config(lora: LoraParams):
    from peft import LoraConfig

    # VLM2Vec: LoraConfig(r, lora_alpha, target_modules, lora_dropout, init_lora_weights="gaussian",
    # use_dora=True, inference_mode=False) around the whole Phi3VForCausalLM.
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), use_dora=lora.use_dora,
                      use_rslora=lora.use_rslora, init_lora_weights="gaussian", bias="none",
                      inference_mode=False)


def apply_lora(model: Any, lora: LoraParams, where: str = "finetune"):
    """Inject the adapter into `model` (a Phi3VForEmbedding) through its view; returns the PeftModel.
    Every target name must match at least one linear module (ConfigError listing the ones there are)."""
    from peft import get_peft_model

    view = lora_view(model)
    present = linear_names(view)
    for target in lora.target_modules:
        tail = target.rsplit(".", 1)[-1]
        if not any(name == target or name.endswith("." + target) for name, _ in view.named_modules()) \
                or tail not in present:
            raise ConfigError(f"{where}: lora.target_modules: '{target}' matches no linear module of this "
                              f"Phi-3-vision model; its linear modules are {', '.join(present)}")
    for p in model.parameters():
        p.requires_grad_(False)
    return get_peft_model(view, lora_config(lora))


# ---- the pairs as prompts --------------------------------------------------------------------------------
class Encoder:
    """Images and captions -> pooled vectors through the embedder's prompts (phi3v-lm's templates)."""

    def __init__(self, model: Any, tokenizer: Any, processor: Any, image_prompt: str, text_prompt: str,
                 bos_id: int, pad_id: int) -> None:
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.image_prompt, self.text_prompt = image_prompt, text_prompt
        self.bos_id, self.pad_id = bos_id, pad_id

    def text_ids(self, text: str) -> list[int]:
        from bench.models.phi3v.tokenizer import prompt_ids

        return prompt_ids(self.tokenizer, self.text_prompt.replace("{text}", text), (), self.bos_id)

    def images(self, items: Sequence[dict[str, Any]]):
        """Preprocessed images (processor.preprocess_one's dicts) -> [n, hidden]."""
        from bench.models.phi3v.tokenizer import build_inputs

        batch = self.processor.collate(list(items))
        ids, mask = build_inputs(self.tokenizer, [self.image_prompt] * len(items), batch["num_img_tokens"],
                                 self.bos_id, self.pad_id)
        pixels = batch["pixel_values"].to(self.model.device).to(self.model.dtype)
        return self.model.pool(ids, mask, pixels, torch.as_tensor(batch["image_sizes"]))

    def texts(self, seqs: Sequence[Sequence[int]]):
        """Prompt token ids (text_ids) -> [n, hidden]."""
        from bench.models.phi3v.tokenizer import pad_right

        return self.model.pool(*pad_right(list(seqs), self.pad_id))


class Phi3VPairTransform:
    """`with_transform` function: rows -> preprocessed images and caption prompt ids (+ idx). Set `epoch`
    before reading (each image's caption for that epoch, data.caption_index); None: the first caption."""

    def __init__(self, encoder: Encoder, seed: int = 0) -> None:
        self.encoder, self.seed = encoder, seed
        self.epoch: int | None = 0

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        images = [self.encoder.processor.preprocess_one(im) for im in batch["image"]]
        texts = []
        for i, caps in zip(batch["idx"], batch["captions"]):
            j = 0 if self.epoch is None else caption_index(self.seed, self.epoch, int(i), len(caps))
            texts.append(self.encoder.text_ids(caps[j]))
        return {"images": images, "text_ids": texts, "idx": list(batch["idx"])}


# ---- one contrastive step --------------------------------------------------------------------------------
def _rng_state() -> tuple[Any, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Any, Any]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def _chunks(n: int, size: int | None) -> list[slice]:
    size = n if not size or size >= n else size
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def contrastive_step(encoder: Encoder, batch: dict[str, Any], logit_scale, chunk_size: int | None = None,
                     loss_scale: float = 1.0, autocast: Callable[[], Any] | None = None,
                     trace: dict[str, Any] | None = None):
    """Forward + backward of the symmetric InfoNCE of this process's pairs (negatives gathered from every
    process); gradients accumulate into the adapter (and logit_scale when it requires grad). The loss
    backpropagated is `loss * loss_scale` (1 / grad_accum). Returns the loss value (detached, unscaled).
    trace: filled with the representations of both GradCache passes (tests check they agree)."""
    from bench.finetune.loss import clip_loss

    autocast = autocast or contextlib.nullcontext
    images, texts = batch["images"], batch["text_ids"]
    n = len(images)
    parts = _chunks(n, chunk_size)
    if len(parts) == 1:  # the whole batch at once
        with autocast():
            img, txt = encoder.images(images), encoder.texts(texts)
        loss = clip_loss(img, txt, logit_scale)
        (loss * loss_scale).backward()
        return loss.detach()

    # GradCache: 1. representations without gradient, chunk by chunk (RNG state kept per chunk)
    states, reps = [], {"img": [], "txt": []}
    with torch.no_grad():
        for side, items, encode in (("img", images, encoder.images), ("txt", texts, encoder.texts)):
            for part in parts:
                states.append(_rng_state())
                with autocast():
                    reps[side].append(encode(items[part]).float())
    img = torch.cat(reps["img"]).requires_grad_(True)
    txt = torch.cat(reps["txt"]).requires_grad_(True)
    # 2. the loss on the full batch and its gradient wrt the representations (and logit_scale)
    loss = clip_loss(img, txt, logit_scale)
    (loss * loss_scale).backward()
    after = _rng_state()
    # 3. every chunk again with gradient, back-propagating its slice of the representation gradient
    it = iter(states)
    again: dict[str, list] = {"img": [], "txt": []}
    for side, items, encode, grad in (("img", images, encoder.images, img.grad),
                                      ("txt", texts, encoder.texts, txt.grad)):
        for part in parts:
            _set_rng_state(next(it))
            with autocast():
                rep = encode(items[part]).float()
            rep.backward(grad[part])
            if trace is not None:
                again[side].append(rep.detach())
    _set_rng_state(after)
    if trace is not None:
        trace.update(first_img=img.detach(), first_txt=txt.detach(), again_img=torch.cat(again["img"]),
                     again_txt=torch.cat(again["txt"]))
    return loss.detach()


@torch.no_grad()
def batch_loss(encoder: Encoder, batch: dict[str, Any], logit_scale, chunk_size: int | None = None,
               autocast: Callable[[], Any] | None = None) -> float:
    """The InfoNCE of a batch without gradient (validation), representations in chunks."""
    from bench.finetune.loss import clip_loss

    autocast = autocast or contextlib.nullcontext
    parts = _chunks(len(batch["images"]), chunk_size)
    with autocast():
        img = torch.cat([encoder.images(batch["images"][p]).float() for p in parts])
        txt = torch.cat([encoder.texts(batch["text_ids"][p]).float() for p in parts])
    return float(clip_loss(img, txt, logit_scale))
