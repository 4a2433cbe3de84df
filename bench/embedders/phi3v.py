"""Phi-3-vision's image embedding as an image-only embedder (kind "phi3v").

Pooling (per image): `mean` of the projected image tokens without separators (default), `global`
(projected global-view tokens), `clip` (layer -2 patch features of the global view, before the
projection: a CLIP-like baseline from the same tower), `tokens` (no pooling: a list of [T_i, hidden]
tensors, for export). Pooled vectors are L2-normalized float32 on CPU.

Only the vision tensors of the checkpoint are read (bench.models.phi3v.checkpoint). The crops of all
images of a batch go through CLIP in one call; zero padding crops are dropped in `collate`.
`adapter:` merges the vision-tower modules of a peft LoRA/DoRA adapter (bench.models.phi3v.adapter); its
language-model modules are skipped and counted in describe(), and an adapter with none is refused.
dtype: the one rule of bench.embedders.base.resolve_torch_dtype (float16 on CUDA only).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from bench.embedders.base import Embedder, RuntimeOptions
from bench.errors import ModelError
from bench.params import EmbedderParams, Int

log = logging.getLogger(__name__)


class Phi3VParams(EmbedderParams):
    type: Literal["phi3v"] = "phi3v"
    num_crops: Int(ge=1, le=64) | None = None  # None: the checkpoint's (Phi-3-vision 16, Phi-3.5-vision 4)
    pooling: Literal["mean", "global", "clip"] = "mean"
    # peft LoRA/DoRA adapter (folder or hub id): its vision-tower modules are merged, those of the language
    # model (which this embedder does not run) are skipped and counted in describe().
    adapter: str | None = None
    adapter_revision: str | None = None

    @classmethod
    def embed_model(cls) -> type[EmbedderParams]:
        return Phi3VExportParams


class Phi3VExportParams(Phi3VParams):
    """`bench embed` may also export the unpooled image tokens (pooling 'tokens')."""

    pooling: Literal["mean", "global", "clip", "tokens"] = "mean"


class Phi3VImageEmbedder(Embedder):
    """Phi-3(.5)-vision image tokens (CLIP ViT-L/14-336 HD crops + projection), pooled."""

    kind = "phi3v"
    Params = Phi3VParams
    modalities = frozenset({"image"})

    def __init__(self, params: Phi3VParams | str | None = None, /, runtime: RuntimeOptions | None = None,
                 **settings: Any) -> None:
        super().__init__(params, runtime, **settings)
        model, revision, num_crops = self.params.model, self.params.revision, self.params.num_crops
        self.pooling = self.params.pooling
        self.model_name = model
        self.revision = revision
        self._torch_dtype = self._resolve_dtype()

        from bench.models.phi3v.checkpoint import Phi3VCheckpoint, load_image_embedding
        from bench.models.phi3v.processor import Phi3VImageProcessor

        self.ckpt = Phi3VCheckpoint(model, revision)
        self.model_dir = self.ckpt.folder
        self.adapter = None
        if self.params.adapter is not None:
            from bench.models.phi3v.adapter import load_adapter

            self.adapter = load_adapter(self.params.adapter, self.params.adapter_revision)
        pre = dict(self.ckpt.preprocessor_config or {})
        if num_crops is not None:
            pre["num_crops"] = num_crops
        self.processor = Phi3VImageProcessor.from_preprocessor_config(pre)
        self.num_crops = int(self.processor.num_crops)
        start = time.perf_counter()
        try:
            self.module = load_image_embedding(self.ckpt, dtype=self._torch_dtype, device=self.runtime.device)
        except RuntimeError as e:  # CUDA out of memory and friends
            raise ModelError(
                f"cannot load the image embedding of {self.model_dir} on {self.runtime.device} "
                f"in {self.runtime.dtype}: {e}"
            ) from None
        if self.adapter is not None:
            self.adapter.apply(self.module)
        self.load_seconds = time.perf_counter() - start
        if self.runtime.compile:
            log.info("phi3v: runtime.compile is ignored (the number of crops varies per batch)")

    @classmethod
    def preload(cls) -> None:
        import transformers.models.clip.modeling_clip  # noqa: F401

    # ---- identity -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.module.image_dim_out if self.pooling == "clip" else self.module.hidden_size)

    def fingerprint(self) -> dict[str, Any]:
        adapter = {"adapter": self.adapter.identity()} if self.adapter is not None else {}
        return {
            **adapter,
            "kind": self.kind,
            "model_hash": self.ckpt.hash(),
            "revision": self.revision,
            "num_crops": self.num_crops,
            "pooling": self.pooling,
            "dtype": self.runtime.dtype,
            "preprocess": self.processor.settings(),
        }

    def describe(self) -> dict[str, Any]:
        m = self.module
        vcfg = m.vision_model.config
        return {
            "model": self.model_name,
            "model_dir": str(self.model_dir),
            "params": int(sum(p.numel() for p in m.parameters())),
            "vision_layers": int(vcfg.num_hidden_layers),
            "vision_layers_run": int(m.num_layers_needed),
            "vision_hidden": int(vcfg.hidden_size),
            "image_size": 336,
            "num_crops": self.num_crops,
            "pooling": self.pooling,
            "hd_transform_order": m.hd_transform_order,
            "projection": m.projection_cls,
            "embed_dim": self.dim,
            "load_seconds": round(self.load_seconds, 2),
            "dtype": self.runtime.dtype,
            "device": self.runtime.device,
            **({"adapter": self.adapter.describe()} if self.adapter is not None else {}),
        }

    # ---- images -------------------------------------------------------------------------
    def preprocess(self, image: Any) -> Any:
        return self.processor.preprocess_one(image)

    def collate(self, items: list[Any]) -> Any:
        """Real crops of all images concatenated (padding crops dropped) + sizes, for one CLIP call."""
        import torch

        counts = [int(it["num_real_crops"]) for it in items]
        return {
            "pixel_values": torch.cat(
                [torch.as_tensor(it["pixel_values"])[:n] for it, n in zip(items, counts)]
            ),
            "crops_per_image": counts,
            "image_sizes": torch.tensor([list(it["image_size"]) for it in items], dtype=torch.long),
            "num_img_tokens": [int(it["num_img_tokens"]) for it in items],
        }

    def batch_size_of(self, batch: Any) -> int:
        return len(batch["crops_per_image"])

    def embed_image_batch(self, batch: Any) -> Any:
        import torch
        import torch.nn.functional as F

        pixel_values = batch["pixel_values"].to(self.runtime.device, non_blocking=True).to(self._torch_dtype)
        per_image = list(pixel_values.split(list(batch["crops_per_image"])))
        with torch.inference_mode():
            out = self.module.pool(per_image, batch["image_sizes"], self.pooling)
        if self.pooling == "tokens":
            return [t.float().cpu() for t in out]
        return F.normalize(out.float(), dim=-1).cpu()
