"""CLIP (transformers CLIPModel) as an image + text embedder: projected, L2-normalized vectors.

dtype: the one rule of bench.embedders.base.resolve_torch_dtype (float32 everywhere, bfloat16 on the
CPU or CUDA, float16 on CUDA only).
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar, Literal

from bench.embedders.base import Embedder, RuntimeOptions, resolve_torch_dtype
from bench.errors import ConfigError, ModelError
from bench.params import EmbedderParams
from bench.models.hub import (PICKLE_WEIGHTS, check_safetensors_files, hash_model_files, pickle_only_error,
                              resolve_model_dir)
from bench.models.preprocess import load_clip_preprocess

log = logging.getLogger(__name__)

# Safetensors only: a pickle (pytorch_model.bin) is never loaded, since unpickling can run code.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


class ClipParams(EmbedderParams):
    type: Literal["clip"] = "clip"
    finetunable: ClassVar[bool] = True  # contrastive fine-tuning: bench.finetune


class ClipEmbedder(Embedder):
    """transformers CLIPModel: get_image_features / get_text_features, L2-normalized, float32 on CPU."""

    kind = "clip"
    Params = ClipParams
    modalities = frozenset({"image", "text"})

    def __init__(self, params: ClipParams | str | None = None, /, runtime: RuntimeOptions | None = None,
                 **settings: Any) -> None:
        super().__init__(params, runtime, **settings)
        self.model_name = model = self.params.model
        self.revision = revision = self.params.revision
        self.model_dir = resolve_model_dir(model, revision,
                                           required=("config.json", "preprocessor_config.json"))
        self._check_config()
        self.preprocess_settings = load_clip_preprocess(self.model_dir)
        self._torch_dtype = self._resolve_dtype()
        self._preprocess = ClipImagePreprocess(self.preprocess_settings, self.runtime.dtype)
        self.model = self._load_model()
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", None)
        self._tokenizer = None
        self._model_hash: str | None = None
        self._compiled: dict[str, Any] = {}
        if self.runtime.compile:
            self._compile()

    # ---- loading ------------------------------------------------------------------------
    def _check_config(self) -> None:
        path = self.model_dir / "config.json"
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read {path}: {e}") from None
        if cfg.get("model_type") != "clip":
            raise ModelError(f"{path}: model_type is {cfg.get('model_type')!r}, the 'clip' embedder needs "
                             f"a full CLIP checkpoint (model_type 'clip', image and text towers)")
        if not any((self.model_dir / f).is_file() for f in _WEIGHT_FILES):
            if any((self.model_dir / f).is_file() for f in PICKLE_WEIGHTS):
                raise pickle_only_error(self.model_dir)
            raise ModelError(f"no weights in {self.model_dir}: expected one of {', '.join(_WEIGHT_FILES)} "
                             f"(an interrupted download?)")
        self._weight_files = check_safetensors_files(self.model_dir)

    @classmethod
    def preload(cls) -> None:
        import transformers.models.clip.modeling_clip  # noqa: F401

    def _load_model(self):
        """CLIPModel in runtime.dtype, each tensor converted as it is read (bench.models.hub.lazy_state_dict):
        a bfloat16 load never holds the float32 checkpoint, nor a float32 copy of the weights."""
        from safetensors import SafetensorError
        from transformers import CLIPConfig, CLIPModel

        from bench.models.hub import lazy_state_dict, quiet_transformers

        kwargs = dict(dtype=self._torch_dtype, output_loading_info=True,
                      ignore_mismatched_sizes=True)  # mismatches are reported below, as a ModelError
        try:
            config = CLIPConfig.from_pretrained(self.model_dir, local_files_only=True)
            with lazy_state_dict(self._weight_files, self._torch_dtype) as state, quiet_transformers():
                try:
                    model, info = CLIPModel.from_pretrained(None, config=config, state_dict=state,
                                                            attn_implementation="sdpa", **kwargs)
                except (ValueError, ImportError) as e:
                    if "sdpa" not in str(e).lower():
                        raise
                    log.warning("sdpa attention unavailable (%s); using eager attention", e)
                    model, info = CLIPModel.from_pretrained(None, config=config, state_dict=state,
                                                            attn_implementation="eager", **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
            raise ModelError(f"cannot load CLIP checkpoint {self.model_dir}: {e}") from None

        problems = []
        if info.get("missing_keys"):
            problems.append(f"missing tensors: {', '.join(sorted(info['missing_keys']))}")
        if info.get("mismatched_keys"):
            shapes = [f"{k} (checkpoint {tuple(a)} vs config {tuple(b)})"
                      for k, a, b in sorted(info["mismatched_keys"])]
            problems.append(f"tensors whose shape does not match config.json: {', '.join(shapes)}")
        if info.get("error_msgs"):
            problems.append("; ".join(info["error_msgs"]))
        if problems:
            raise ModelError(f"checkpoint {self.model_dir} does not match its config.json: "
                             f"{'; '.join(problems)} "
                             f"(the weights are corrupt, truncated or from another model; re-download them)")
        if info.get("unexpected_keys"):
            log.warning("checkpoint %s has tensors the model does not use: %s", self.model_dir,
                        ", ".join(sorted(info["unexpected_keys"])))
        model.eval()
        try:
            model.to(self.runtime.device)
        except (RuntimeError, AssertionError) as e:
            raise ConfigError(f"cannot move the model to runtime.device '{self.runtime.device}': {e}") \
                from None
        return model

    def _compile(self) -> None:
        import torch

        try:
            self._compiled = {"image": torch.compile(self._image_forward, dynamic=True),
                              "text": torch.compile(self._text_forward, dynamic=True)}
        except Exception as e:  # compile is an optimization: never fatal
            log.warning("torch.compile unavailable (%s); running eager", e)

    def _run(self, which: str, eager, *args):
        """Compiled forward when available; compile errors surface on the first call, so fall back there."""
        fn = self._compiled.get(which)
        if fn is not None:
            try:
                return fn(*args)
            except Exception as e:  # a real model error re-raises from the eager call below
                log.warning("torch.compile failed for the %s tower (%s); running eager", which, e)
                self._compiled.pop(which)
        return eager(*args)

    @property
    def tokenizer(self):
        """The checkpoint's CLIP tokenizer, loaded on first use (image-only runs never need it)."""
        if self._tokenizer is None:
            from transformers import CLIPTokenizer

            try:
                tok = CLIPTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            except (OSError, ValueError, TypeError, KeyError) as e:
                raise ModelError(f"cannot load the tokenizer from {self.model_dir} (needs tokenizer.json or "
                                 f"vocab.json + merges.txt): {e}") from None
            vocab = self.model.config.text_config.vocab_size
            if len(tok) > vocab:
                raise ModelError(f"tokenizer in {self.model_dir} has {len(tok)} tokens but config.json's "
                                 f"text_config.vocab_size is {vocab}: tokenizer and weights do not belong "
                                 f"together")
            self._tokenizer = tok
        return self._tokenizer

    # ---- identity -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def max_text_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def fingerprint(self) -> dict[str, Any]:
        if self._model_hash is None:
            self._model_hash = hash_model_files(self.model_dir)
        return {
            "kind": self.kind,
            "model_hash": self._model_hash,
            "revision": self.revision,
            "preprocess": self.preprocess_settings.as_dict(),
            "dtype": self.runtime.dtype,
        }

    def describe(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "model": self.model_name,
            "model_dir": str(self.model_dir),
            "params": int(sum(p.numel() for p in self.model.parameters())),
            "image_size": int(cfg.vision_config.image_size),
            "patch_size": int(cfg.vision_config.patch_size),
            "embed_dim": self.dim,
            "text_max_tokens": self.max_text_tokens,
            "attn_implementation": self.attn_implementation,
            "dtype": self.runtime.dtype,
            "device": self.runtime.device,
        }

    # ---- images -------------------------------------------------------------------------
    @classmethod
    def image_pipeline(cls, params: ClipParams, runtime: RuntimeOptions):
        from bench.errors import BenchError

        try:
            folder = resolve_model_dir(params.model, params.revision,
                                       required=("config.json", "preprocessor_config.json"))
            settings = load_clip_preprocess(folder)
            resolve_torch_dtype(cls.kind, runtime)
        except BenchError:
            return None
        return ClipImagePreprocess(settings, runtime.dtype), cls.collate_items

    def preprocess(self, image: Any) -> Any:
        return self._preprocess(image)

    @staticmethod
    def collate_items(items: list[Any]) -> Any:
        import torch

        return torch.stack(items)

    def collate(self, items: list[Any]) -> Any:
        return self.collate_items(items)

    def _image_forward(self, pixel_values):
        return _pooled(self.model.get_image_features(pixel_values=pixel_values))

    def embed_image_batch(self, batch: Any) -> Any:
        import torch

        with torch.inference_mode():
            x = batch.to(self.runtime.device, non_blocking=True).to(self._torch_dtype)
            return _normalize(self._run("image", self._image_forward, x))

    # ---- texts --------------------------------------------------------------------------
    def _text_forward(self, input_ids, attention_mask):
        return _pooled(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    def embed_texts(self, texts: list[str]) -> Any:
        import torch

        texts = list(texts)
        if not texts:
            return torch.empty(0, self.dim)
        step = max(1, self.runtime.batch_size * 4)  # text tower is much cheaper than the image tower
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), step):
                # Padding to the longest in the batch is exact: the causal mask keeps pads out of the
                # EOS state.
                enc = self.tokenizer(texts[start:start + step], padding=True, truncation=True,
                                     max_length=self.max_text_tokens, return_tensors="pt")
                ids = enc["input_ids"].to(self.runtime.device, non_blocking=True)
                mask = enc["attention_mask"].to(self.runtime.device, non_blocking=True)
                out.append(_normalize(self._run("text", self._text_forward, ids, mask)))
        return torch.cat(out)


class ClipImagePreprocess:
    """PIL image -> pixel tensor in the model's dtype. Runs in the loader's workers, so a bf16 run's
    conversion is done there, off the model's critical path (and half the bytes cross to the main
    process); the float32 values are those of `ClipPreprocessSettings`, converted once (the same
    rounding as converting the batch later)."""

    def __init__(self, settings, dtype: str = "float32") -> None:
        self.settings, self.dtype = settings, dtype

    def __call__(self, image: Any) -> Any:
        x = self.settings(image)
        if self.dtype == "float32":
            return x
        import torch

        return x.to(getattr(torch, self.dtype))


def _pooled(output):
    """transformers 5 returns a ModelOutput whose pooler_output is the projected vector; 4.x a tensor."""
    return output if hasattr(output, "shape") else output.pooler_output


def _normalize(x):
    import torch.nn.functional as F

    return F.normalize(x.float(), dim=-1).cpu()
