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

Fine-tuned models: a full fine-tune in the hub layout (VLM2Vec's `TIGER-Lab/VLM2Vec-Full`, see
bench.demo.tiny_vlm2vec) is a `model:`; `adapter:` (folder or hub id, `adapter_revision:`) merges a peft
LoRA/rsLoRA/DoRA adapter (VLM2Vec-LoRA on microsoft/Phi-3.5-vision-instruct) into the loaded weights
(bench.models.phi3v.adapter); its identity enters the fingerprint.

dtype (runtime.dtype): float32 (default), bfloat16 on CPU or CUDA (halves memory, changes the
numbers at the ~1e-2 level; on CPUs without bf16 matrix units it is slower), float16 on CUDA only.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from bench.embedders.base import Embedder, RuntimeOptions
from bench.errors import ModelError
from bench.params import EmbedderParams, Int
from bench.models.hub import hash_model_files, resolve_model_dir

log = logging.getLogger(__name__)

TEMPLATES: dict[str, dict[str, str]] = {
    "vlm2vec": {"image": "<|image_1|> Represent the given image.",
                "text": "Find me an everyday image that matches the given caption: {text}"},
    "e5v": {"image": "<|image_1|>\nSummary above image in one word:",
            "text": "{text}\nSummary above sentence in one word:"},
}


class Phi3VLMParams(EmbedderParams):
    type: Literal["phi3v-lm"] = "phi3v-lm"
    finetunable: ClassVar[bool] = True  # a LoRA/DoRA adapter, VLM2Vec's recipe: bench.finetune.phi3v
    num_crops: Int(ge=1, le=64) | None = None  # None: the checkpoint's (VLM2Vec uses 4)
    template: Literal["vlm2vec", "e5v", "custom"] = "vlm2vec"
    image_prompt: str | None = None  # overrides the template's
    text_prompt: str | None = None
    adapter: str | None = None  # peft LoRA/DoRA adapter (folder or hub id), merged at load
    adapter_revision: str | None = None

    @model_validator(mode="after")
    def _check_prompts(self):
        from bench.models.phi3v.tokenizer import split_prompt  # stdlib only

        if self.template == "custom" and not (self.image_prompt and self.text_prompt):
            raise ValueError("template 'custom' needs both image_prompt and text_prompt")
        if self.image_prompt is not None and split_prompt(self.image_prompt)[1] != [1]:
            found = len(split_prompt(self.image_prompt)[1])
            raise ValueError(f"image_prompt must contain '<|image_1|>' exactly once, where the image goes "
                             f"(found {found} image tag(s))")
        if self.text_prompt is not None:
            if "{text}" not in self.text_prompt:
                raise ValueError("text_prompt must contain '{text}' where the caption goes")
            if split_prompt(self.text_prompt)[1]:
                raise ValueError("text_prompt must not hold image tags like <|image_1|>")
        return self

    def prompts(self) -> tuple[str, str]:
        """(image prompt, text prompt): the template's, unless given."""
        base = TEMPLATES.get(self.template, {})
        return (self.image_prompt if self.image_prompt is not None else base["image"],
                self.text_prompt if self.text_prompt is not None else base["text"])


class Phi3VLMEmbedder(Embedder):
    """Phi-3-vision's language model as an embedder: last-token hidden state, L2-normalized."""

    kind = "phi3v-lm"
    Params = Phi3VLMParams
    modalities = frozenset({"image", "text"})

    def __init__(self, params: Phi3VLMParams | str | None = None, /, runtime: RuntimeOptions | None = None,
                 **settings: Any) -> None:
        super().__init__(params, runtime, **settings)
        model, revision, num_crops = self.params.model, self.params.revision, self.params.num_crops
        self.template = self.params.template
        self.image_prompt, self.text_prompt = self.params.prompts()
        self.model_name = model
        self.revision = revision
        self.model_dir = resolve_model_dir(model, revision, required=("config.json",))
        self._torch_dtype = self._resolve_dtype()

        from bench.models.phi3v.checkpoint import Phi3VCheckpoint
        from bench.models.phi3v.processor import Phi3VImageProcessor
        from bench.models.phi3v.tokenizer import load_tokenizer, special_ids

        # Tokenizer and adapter first: a missing tokenizer or a refused adapter should fail before gigabytes
        # of weights are read.
        self.tokenizer = load_tokenizer(self.model_dir)
        self.adapter = None
        if self.params.adapter is not None:
            from bench.models.phi3v.adapter import load_adapter

            self.adapter = load_adapter(self.params.adapter, self.params.adapter_revision)
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
        if self.adapter is not None:
            self.adapter.apply(self.model)
        self.load_seconds = time.perf_counter() - start
        self.weight_bytes = param_bytes(self.model)
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", None)
        self._model_hash: str | None = None
        if self.runtime.compile:
            log.info("phi3v-lm: runtime.compile is ignored (variable-length prompts would recompile)")

    @classmethod
    def preload(cls) -> None:
        import transformers.models.clip.modeling_clip  # noqa: F401
        import transformers.models.phi3.modeling_phi3  # noqa: F401

    # ---- identity -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def fingerprint(self) -> dict[str, Any]:
        if self._model_hash is None:
            self._model_hash = hash_model_files(self.model_dir)
        adapter = {"adapter": self.adapter.identity()} if self.adapter is not None else {}
        return {
            **adapter,
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
            **({"adapter": self.adapter.describe()} if self.adapter is not None else {}),
        }

    # ---- images -------------------------------------------------------------------------
    def preprocess(self, image: Any) -> Any:
        return self.processor.preprocess_one(image)

    def collate(self, items: list[Any]) -> Any:
        return self.processor.collate(items)

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
