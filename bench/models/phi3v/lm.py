"""Phi-3-vision's language model, natively: transformers 5's own `Phi3Model` + the project's image embedding.

`config.json` (model_type `phi3_v`) is mapped to a transformers `Phi3Config`. The checkpoint's
`rope_scaling` `{"type": "su" | "longrope", short_factor, long_factor}` becomes `rope_parameters`
with `rope_type: "longrope"`, `original_max_position_embeddings` inside it, and
`factor = max_position_embeddings / original_max_position_embeddings`: transformers derives the
attention scaling `sqrt(1 + ln(factor) / ln(original_max))` from it, which is the reference's "su"
scaling factor, and picks the long factors when a batch's longest position exceeds
`original_max_position_embeddings`, as the reference does.

Loading builds the modules on the meta device and assigns the checkpoint's tensors (read once,
tensor by tensor, already in the target dtype), so peak memory stays about the size of the weights.
`lm_head.weight` is never read: embeddings do not need it.

Heavy module (torch at import): only imported lazily, by the phi3v-lm embedder.

Attention is PyTorch SDPA by default (same math as eager, agrees to float noise); pass
`attn_implementation="eager"` for the reference's exact kernel order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bench.errors import ModelError

log = logging.getLogger(__name__)

VISION_PREFIX = "model.vision_embed_tokens."
LM_PREFIX = "model."
_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_MAX_LISTED = 12


def _listing(keys) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def phi3_config_from_dict(cfg: dict[str, Any], attn_implementation: str = "sdpa"):
    """Map a phi3_v `config.json` dict to transformers 5's `Phi3Config` (language model only)."""
    from transformers import Phi3Config

    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise ModelError(f"config.json lacks {', '.join(missing)}: not a Phi-3(-vision) language model config")
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if hidden % heads:
        raise ModelError(f"config.json: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    vocab = int(cfg["vocab_size"])
    max_pos = int(cfg.get("max_position_embeddings", 4096))
    orig_max = int(cfg.get("original_max_position_embeddings", max_pos))
    rope: dict[str, Any] = {"rope_theta": float(cfg.get("rope_theta", 10000.0))}
    scaling = cfg.get("rope_scaling")
    if scaling:
        kind = scaling.get("type", scaling.get("rope_type"))
        if kind not in ("su", "longrope"):
            raise ModelError(f"config.json: rope_scaling type {kind!r} is not supported; Phi-3-vision "
                             f"checkpoints use 'su' (= 'longrope')")
        half = hidden // heads // 2
        for name in ("short_factor", "long_factor"):
            factors = scaling.get(name)
            if not isinstance(factors, list) or len(factors) != half:
                raise ModelError(f"config.json: rope_scaling.{name} must be a list of {half} numbers "
                                 f"(head_dim / 2), got {factors!r:.80}")
        # `factor` is what transformers derives from these two lengths anyway; setting it avoids a warning.
        rope.update(rope_type="longrope", short_factor=[float(x) for x in scaling["short_factor"]],
                    long_factor=[float(x) for x in scaling["long_factor"]],
                    original_max_position_embeddings=orig_max, factor=max_pos / orig_max)
    else:
        rope["rope_type"] = "default"

    def token_id(name: str) -> int | None:
        value = cfg.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        # Only used as nn.Embedding's padding_idx (no effect on the forward); the real checkpoints'
        # ids are inside the vocabulary, a tiny test config's may not be.
        return int(value) if value is not None and 0 <= int(value) < vocab else None

    config = Phi3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=int(cfg["intermediate_size"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]), num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        hidden_act=cfg.get("hidden_act", "silu"), rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        max_position_embeddings=max_pos, original_max_position_embeddings=orig_max,
        rope_parameters=rope, bos_token_id=token_id("bos_token_id"), eos_token_id=token_id("eos_token_id"),
        pad_token_id=token_id("pad_token_id"), sliding_window=cfg.get("sliding_window"),
        tie_word_embeddings=False, use_cache=False, attention_dropout=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
    )
    config._attn_implementation = attn_implementation
    return config


class Phi3VForEmbedding(nn.Module):
    """Image embedding + transformers `Phi3Model`; `forward_embed` returns the final (normed) hidden states."""

    def __init__(self, config, image_embed, model) -> None:
        super().__init__()
        self.config = config
        self.image_embed = image_embed
        self.model = model

    @property
    def dtype(self):
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self):
        return self.model.embed_tokens.weight.device

    def input_embeddings(self, input_ids, pixel_values=None, image_sizes=None):
        """Token embeddings with the image tokens placed at the negative placeholder ids."""
        wte = self.model.embed_tokens
        if pixel_values is not None and len(pixel_values):
            if self.image_embed is None:
                raise ModelError("this model was loaded without its image embedding; it cannot embed images")
            pixel_values = pixel_values.to(self.device)
            return self.image_embed.embed_input_ids(input_ids, pixel_values, image_sizes, wte)
        if bool((input_ids < 0).any()):
            raise ValueError("input_ids hold image placeholders (negative ids) but no pixel_values were given")
        return wte(input_ids)

    def forward_embed(self, input_ids, attention_mask, pixel_values=None, image_sizes=None):
        """Last hidden state [B, L, hidden] after the final RMSNorm (right-padded inputs)."""
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        embeds = self.input_embeddings(input_ids, pixel_values, image_sizes).to(self.dtype)
        out = self.model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    forward = forward_embed

    def embed(self, input_ids, attention_mask, pixel_values=None, image_sizes=None):
        """Pooled vectors [B, hidden], float32 CPU, L2-normalized: the state at each row's last real token."""
        return self.pool(input_ids, attention_mask, pixel_values, image_sizes).cpu()

    def pool(self, input_ids, attention_mask, pixel_values=None, image_sizes=None):
        """`embed`'s vectors on the model's device, gradient kept (what fine-tuning trains through).

        Rows are run in two groups, those longer than `original_max_position_embeddings` and the rest,
        each trimmed to its own longest row: longrope switches factors on the batch's longest
        position, so this keeps every row's vector equal to what it gives alone.
        """
        import torch.nn.functional as F

        lengths = attention_mask.sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError("a row of attention_mask is all zeros (empty prompt)")
        orig_max = self._original_max()
        long_rows = lengths > orig_max if orig_max else torch.zeros_like(lengths, dtype=torch.bool)
        images_per_row = _images_per_row(input_ids)
        image_start = torch.cat([images_per_row.new_zeros(1), images_per_row.cumsum(0)])
        device = self.device
        out = torch.zeros(len(input_ids), self.config.hidden_size, dtype=torch.float32, device=device)
        for rows in (torch.nonzero(~long_rows).flatten(), torch.nonzero(long_rows).flatten()):
            if not len(rows):
                continue
            width = int(lengths[rows].max())
            pv = sizes = None
            if pixel_values is not None and int(images_per_row[rows].sum()):
                take = torch.cat([torch.arange(int(image_start[r]), int(image_start[r + 1])) for r in rows])
                pv = pixel_values[take]
                sizes = image_sizes[take] if image_sizes is not None else None
            hidden = self.forward_embed(input_ids[rows, :width], attention_mask[rows, :width], pv, sizes)
            last = (lengths[rows] - 1).to(device)
            pooled = F.normalize(hidden[torch.arange(len(rows), device=device), last].float(), dim=-1)
            out = out.index_copy(0, rows.to(device), pooled)
        return out

    def _original_max(self) -> int | None:
        rope = getattr(self.config, "rope_parameters", None) or {}
        if rope.get("rope_type") != "longrope":
            return None
        return int(rope.get("original_max_position_embeddings") or self.config.original_max_position_embeddings)


def _images_per_row(input_ids):
    """Number of images in each row: its placeholder ids are -1 .. -k."""
    return (-input_ids.min(dim=1).values).clamp(min=0)


def lm_keys(checkpoint_keys) -> list[str]:
    """The checkpoint's language-model tensor names (`model.*` minus the vision tower; no lm_head)."""
    return sorted(k for k in checkpoint_keys if k.startswith(LM_PREFIX) and not k.startswith(VISION_PREFIX))


def build_phi3_model(config, state_dict: dict[str, Any] | None = None, device: str = "cpu", where: str = ""):
    """`Phi3Model(config)` built on the meta device; with `state_dict` (names without 'model.'),
    checked strictly and assigned (no copy). Raises ModelError naming missing/unexpected/mismatched keys."""
    from transformers.models.phi3.modeling_phi3 import Phi3Model, Phi3RotaryEmbedding

    with torch.device("meta"):
        model = Phi3Model(config)
    if state_dict is None:
        return model
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state_dict(expected, {k: tuple(v.shape) for k, v in state_dict.items()}, where)
    model.load_state_dict(state_dict, strict=True, assign=True)
    # Non-persistent buffers (rotary inverse frequencies) are not in the checkpoint: compute them for real.
    model.rotary_emb = Phi3RotaryEmbedding(config=config).to(device)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ModelError(f"internal: tensors left unloaded after loading the language model: {_listing(left)}")
    model.eval()
    model.requires_grad_(False)
    return model


def check_state_dict(expected: dict[str, tuple], found: dict[str, tuple | None], where: str = "") -> None:
    """Strict key and shape check (a None shape: names only); ModelError listing every problem."""
    missing = set(expected) - set(found)
    unexpected = set(found) - set(expected)
    mismatched = [f"{LM_PREFIX}{k} (checkpoint {found[k]} vs config {expected[k]})"
                  for k in sorted(set(expected) & set(found))
                  if found[k] is not None and tuple(found[k]) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_listing(LM_PREFIX + k for k in missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_listing(LM_PREFIX + k for k in unexpected)}")
    if mismatched:
        problems.append(f"tensors whose shape does not match config.json: {_listing(mismatched)}")
    if problems:
        raise ModelError(f"language model of checkpoint {where or '(in memory)'} does not match its config.json: "
                         f"{'; '.join(problems)} (the weights are truncated, corrupt or from another model; "
                         f"re-download them)")


def _open_checkpoint(ckpt):
    if isinstance(ckpt, (str, Path)):
        from bench.models.phi3v.checkpoint import Phi3VCheckpoint

        return Phi3VCheckpoint(ckpt)
    return ckpt


def load_phi3v_lm(ckpt, dtype=None, device: str = "cpu", attn_implementation: str = "sdpa",
                  with_image: bool = True) -> Phi3VForEmbedding:
    """Build Phi3VForEmbedding from a checkpoint (a `Phi3VCheckpoint` or a folder).

    Every tensor is read once, converted to `dtype` (default float32) on the way, and moved to
    `device` one by one, so peak host memory is about the weights in that dtype.
    """
    dtype = dtype or torch.float32
    ckpt = _open_checkpoint(ckpt)
    where = getattr(ckpt, "folder", "")
    if ckpt.config.get("model_type") not in ("phi3_v", "phi3"):
        raise ModelError(f"{where}/config.json: model_type is {ckpt.config.get('model_type')!r}; the phi3v-lm "
                         f"embedder needs a Phi-3-vision checkpoint (model_type 'phi3_v')")
    config = phi3_config_from_dict(ckpt.config, attn_implementation)
    names = lm_keys(ckpt.keys())
    # Check names before reading gigabytes; shapes are checked on the tensors as read.
    expected = build_phi3_model(config).state_dict()
    found = {k[len(LM_PREFIX):] for k in names}
    if set(expected) != found:
        check_state_dict({k: tuple(v.shape) for k, v in expected.items()}, dict.fromkeys(found), str(where))
    del expected
    tensors = ckpt.read(names, dtype=dtype)
    state = {}
    for name in names:
        state[name[len(LM_PREFIX):]] = tensors.pop(name).to(device)  # pop: host copy freed as we go
    model = build_phi3_model(config, state, device=device, where=str(where))
    image_embed = None
    if with_image:
        from bench.models.phi3v.checkpoint import load_image_embedding

        image_embed = load_image_embedding(ckpt, dtype=dtype, device=device)
        # The image embedding's wte is tied to the language model's embed_tokens (no key of its own).
        if hasattr(image_embed, "wte"):
            image_embed.wte = model.embed_tokens
    return Phi3VForEmbedding(config, image_embed, model).eval()


def param_bytes(module) -> int:
    """Bytes held by a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
