"""Phi-3-vision's published module tree (`Phi3VForCausalLM`) as a view over bench's native modules.

The released checkpoints, VLM2Vec's and every peft adapter made on them name tensors after the hub
code's module tree: `model.embed_tokens`, `model.layers.N...`, `model.norm`, and the image embedding
under `model.vision_embed_tokens` (its CLIP tower at `img_processor.vision_model.*`). bench runs the
language model as transformers' own `Phi3Model` and the image embedding as its own module;
`causal_lm_view` hangs those very modules (shared, not copied) under the published names, so that

- `view.state_dict()` names match the checkpoint (minus `lm_head`, which an embedder never reads);
- peft applied to the view (`get_peft_model(view, LoraConfig(...))`) injects into bench's modules and
  saves adapters whose keys are `base_model.model.model.layers.N...`, as VLM2Vec's are;
- an adapter's keys map onto bench's modules by the same names.

Heavy module (torch at import): imported lazily by the loaders and the fine-tuning stage.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class _Inner(nn.Module):
    """`model.*`: the language model's parts and the image embedding, by their published names."""

    def __init__(self, lm: nn.Module | None, image_embed: nn.Module | None) -> None:
        super().__init__()
        if lm is not None:
            self.embed_tokens = lm.embed_tokens
            self.layers = lm.layers
            self.norm = lm.norm
        if image_embed is not None:
            self.vision_embed_tokens = image_embed


class Phi3VCausalLMView(nn.Module):
    """Holds `model` (an `_Inner`); no forward of its own: the native modules are run as they are."""

    # What transformers (and peft through it) reads off a model to scope weight conversions of nested
    # pretrained modules (the CLIP tower); Phi3VForCausalLM's own value.
    base_model_prefix = "model"

    def __init__(self, lm: nn.Module | None, image_embed: nn.Module | None, config: Any = None) -> None:
        super().__init__()
        self.model = _Inner(lm, image_embed)
        self.config = config

    def forward(self, *args, **kwargs):  # pragma: no cover - a naming view, not a model
        raise TypeError("Phi3VCausalLMView is a naming view over bench's modules; run the native model")


def causal_lm_view(model: Any = None, image_embed: Any = None) -> Phi3VCausalLMView:
    """The published-name view of a `Phi3VForEmbedding` (language model + image embedding), or of an
    image embedding alone (`causal_lm_view(image_embed=module)`: only `model.vision_embed_tokens.*`)."""
    if model is not None:
        return Phi3VCausalLMView(model.model, model.image_embed, getattr(model, "config", None))
    if image_embed is None:
        raise ValueError("causal_lm_view needs a Phi3VForEmbedding or an image embedding")
    return Phi3VCausalLMView(None, image_embed)
