"""Phi-3-vision (and VLM2Vec, same layout) as a text + image embedder through the whole language model.

Both modalities go through a prompt: the image prompt holds `<|image_1|>` where the image tokens go,
the text prompt `{text}` where the caption goes. The embedding is the final hidden state (after the
last RMSNorm) at the last non-pad token, L2-normalized (reference section 4; VLM2Vec scores it by
dot product). Built-in templates:

- `vlm2vec` (default; what VLM2Vec was trained with, plain prompts, no chat template):
  image "<|image_1|> Represent the given image.",
  text  "Find me an everyday image that matches the given caption: {text}".
- `e5v`: the E5-V one-word-summary prompts, "<|image_1|>\\nSummary above image in one word:" and
  "{text}\\nSummary above sentence in one word:" (E5-V itself wraps them in Llama-3's chat template and
  ends with a space; Phi-3-vision was not trained for either, so the bare instruction is kept).

Batches are right-padded; with causal attention a batch gives the same vectors as one input at a
time (rows beyond longrope's `original_max_position_embeddings` are run apart, see lm.py).

dtype (runtime.dtype): float32 (default), bfloat16 on CPU or CUDA (halves memory, changes the
numbers at the ~1e-2 level; on CPUs without bf16 matrix units it is slower), float16 on CUDA only.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bench.embedders.base import Embedder, RuntimeOptions, resolve_torch_dtype
from bench.errors import ConfigError, ModelError, unknown_name
from bench.models.hub import hash_model_files, resolve_model_dir

log = logging.getLogger(__name__)

TEMPLATES: dict[str, dict[str, str]] = {
    "vlm2vec": {"image": "<|image_1|> Represent the given image.",
                "text": "Find me an everyday image that matches the given caption: {text}"},
    "e5v": {"image": "<|image_1|>\nSummary above image in one word:",
            "text": "{text}\nSummary above sentence in one word:"},
}


def _check_prompts(image_prompt: str, text_prompt: str) -> None:
    from bench.models.phi3v.tokenizer import split_prompt

    _, numbers = split_prompt(image_prompt)
    if numbers != [1]:
        raise ConfigError(f"image_prompt {image_prompt!r} must hold the tag <|image_1|> exactly once "
                          f"(where the image tokens go), found {len(numbers)} image tag(s)")
    if "{text}" not in text_prompt:
        raise ConfigError(f"text_prompt {text_prompt!r} must hold {{text}} where the caption goes")
    if split_prompt(text_prompt)[1]:
        raise ConfigError(f"text_prompt {text_prompt!r} must not hold image tags like <|image_1|>")


class Phi3VLMEmbedder(Embedder):
    """Phi-3-vision's language model as an embedder: last-token hidden state, L2-normalized."""

    kind = "phi3v-lm"
    modalities = frozenset({"image", "text"})

    def __init__(self, model: str, revision: str | None = None, num_crops: int | None = None,
                 template: str = "vlm2vec", image_prompt: str | None = None, text_prompt: str | None = None,
                 runtime: RuntimeOptions | None = None) -> None:
        super().__init__(runtime)
        if template not in TEMPLATES:
            raise ConfigError(unknown_name("phi3v-lm template", template, TEMPLATES))
        self.template = template
        self.image_prompt = image_prompt if image_prompt is not None else TEMPLATES[template]["image"]
        self.text_prompt = text_prompt if text_prompt is not None else TEMPLATES[template]["text"]
        _check_prompts(self.image_prompt, self.text_prompt)
        if num_crops is not None and (isinstance(num_crops, bool) or not isinstance(num_crops, int)
                                      or num_crops < 1):
            raise ConfigError(f"num_crops must be a positive integer (VLM2Vec uses 4), got {num_crops!r}")

        self.model_name = model
        self.revision = revision
        self.model_dir = resolve_model_dir(model, revision, required=("config.json",))
        self._torch_dtype = self._resolve_dtype()

        from bench.models.phi3v.checkpoint import Phi3VCheckpoint
        from bench.models.phi3v.processor import Phi3VImageProcessor
        from bench.models.phi3v.tokenizer import load_tokenizer, special_ids

        # Tokenizer first: a missing tokenizer should fail before gigabytes of weights are read.
        self.tokenizer = load_tokenizer(self.model_dir)
        self.ckpt = Phi3VCheckpoint(self.model_dir)
        self.bos_id, self.pad_id = special_ids(self.tokenizer, self.ckpt.config)
        vocab = int(self.ckpt.config.get("vocab_size", 0))
        if max(self.bos_id, self.pad_id) >= vocab:
            raise ModelError(f"tokenizer in {self.model_dir} uses ids (bos {self.bos_id}, pad {self.pad_id}) "
                             f"beyond config.json's vocab_size {vocab}: tokenizer and weights do not belong "
                             f"together")

        pre = dict(self.ckpt.preprocessor_config or {})
        if num_crops is not None:
            pre["num_crops"] = num_crops
        self.processor = Phi3VImageProcessor.from_preprocessor_config(pre)
        self.num_crops = int(self.processor.num_crops)

        from bench.models.phi3v.lm import load_phi3v_lm, param_bytes

        start = time.perf_counter()
        try:
            self.model = load_phi3v_lm(self.ckpt, dtype=self._torch_dtype, device=self.runtime.device)
        except torch_oom_errors() as e:
            raise ModelError(f"out of memory loading {self.model_dir} in {self.runtime.dtype} on "
                             f"{self.runtime.device}: {e}; try runtime.dtype bfloat16 or a larger device") from None
        self.load_seconds = time.perf_counter() - start
        self.weight_bytes = param_bytes(self.model)
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", None)
        self._model_hash: str | None = None
        if self.runtime.compile:
            log.info("phi3v-lm: runtime.compile is ignored (variable-length prompts would recompile)")

    def _resolve_dtype(self):
        return resolve_torch_dtype(self.kind, self.runtime)

    # ---- identity -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def fingerprint(self) -> dict[str, Any]:
        if self._model_hash is None:
            self._model_hash = hash_model_files(self.model_dir)
        return {
            "kind": self.kind,
            "model_hash": self._model_hash,
            "revision": self.revision,
            "num_crops": self.num_crops,
            "image_prompt": self.image_prompt,
            "text_prompt": self.text_prompt,
            "pooling": "last_token_l2",
            "dtype": self.runtime.dtype,
            "attn_implementation": self.attn_implementation,
        }

    def describe(self) -> dict[str, Any]:
        cfg = self.model.config
        n_lm = sum(p.numel() for p in self.model.model.parameters())
        n_img = sum(p.numel() for p in self.model.image_embed.parameters()) if self.model.image_embed else 0
        return {
            "model": self.model_name,
            "model_dir": str(self.model_dir),
            "params": int(n_lm + n_img),
            "params_language_model": int(n_lm),
            "params_image_embedding": int(n_img),
            "layers": int(cfg.num_hidden_layers),
            "embed_dim": self.dim,
            "num_crops": self.num_crops,
            "template": self.template,
            "image_prompt": self.image_prompt,
            "text_prompt": self.text_prompt,
            "pooling": "last non-pad token of the final hidden state, L2-normalized",
            "attn_implementation": self.attn_implementation,
            "weights_mb": round(self.weight_bytes / 2**20, 1),
            "load_seconds": round(self.load_seconds, 2),
            "dtype": self.runtime.dtype,
            "device": self.runtime.device,
        }

    # ---- images -------------------------------------------------------------------------
    def preprocess(self, image: Any) -> Any:
        return self.processor.preprocess_one(image)

    def collate(self, items: list[Any]) -> Any:
        import torch

        return {
            "pixel_values": torch.stack([torch.as_tensor(it["pixel_values"]) for it in items]),
            "image_sizes": torch.tensor([list(it["image_size"]) for it in items], dtype=torch.long),
            "num_img_tokens": [int(it["num_img_tokens"]) for it in items],
        }

    def batch_size_of(self, batch: Any) -> int:
        return len(batch["num_img_tokens"])

    def embed_image_batch(self, batch: Any) -> Any:
        import torch

        from bench.models.phi3v.tokenizer import build_inputs

        n = self.batch_size_of(batch)
        ids, mask = build_inputs(self.tokenizer, [self.image_prompt] * n, batch["num_img_tokens"],
                                 self.bos_id, self.pad_id)
        pixel_values = batch["pixel_values"].to(self.runtime.device, non_blocking=True).to(self._torch_dtype)
        image_sizes = torch.as_tensor(batch["image_sizes"])
        with torch.inference_mode():
            return self.model.embed(ids, mask, pixel_values, image_sizes)

    # ---- texts --------------------------------------------------------------------------
    def embed_texts(self, texts: list[str]) -> Any:
        import torch

        from bench.models.phi3v.tokenizer import pad_right, prompt_ids

        texts = list(texts)
        if not texts:
            return torch.empty(0, self.dim)
        seqs = [prompt_ids(self.tokenizer, self.text_prompt.replace("{text}", t), (), self.bos_id)
                for t in texts]
        # Similar lengths together: less padding, and the vectors do not depend on the batching anyway.
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out = torch.empty(len(texts), self.dim)
        step = max(1, self.runtime.batch_size)
        with torch.inference_mode():
            for start in range(0, len(order), step):
                rows = order[start:start + step]
                ids, mask = pad_right([seqs[i] for i in rows], self.pad_id)
                out[rows] = self.model.embed(ids, mask)
        return out


def torch_oom_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning 'out of memory' (CUDA OOM when available, host MemoryError)."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (MemoryError, oom) if oom else (MemoryError,)
