"""Phi-3-vision's image embedding (the corrected `Phi3ImageEmbedding`, HD path), native and batched.

Specification: shared/docs/phi3v-reference.md, section 2. Differences from the seed/reference code
are speed only (same numbers): CLIP runs on the real crops of all images of a batch in ONE call
(never on the zero padding crops), and the tower stops at the layer it needs (`layer_idx` -2: 23 of
24 layers, no post_layernorm). `reference_forward` below is the straightforward per-image loop
(all crops, all layers, `hidden_states[layer_idx]`), kept for tests and benchmarks.

Heavy module (torch, transformers at import): only imported lazily.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
from torch import nn

from bench.errors import ModelError

CROP = 336
PATCH = 14
GRID = CROP // PATCH  # 24 patches per side
MERGED = GRID // 2  # 12 tokens per side after the 2x2 merge
POOLINGS = ("mean", "global", "clip", "tokens")
ORDERS = ("sub_glb", "glb_sub")

# CLIP ViT-L/14-336, the tower of every released Phi-3(.5)-vision checkpoint.
CLIP_VIT_LARGE_PATCH14_336 = dict(
    attention_dropout=0.0,
    dropout=0.0,
    hidden_act="quick_gelu",
    hidden_size=1024,
    image_size=336,
    initializer_factor=1.0,
    initializer_range=0.02,
    intermediate_size=4096,
    layer_norm_eps=1e-5,
    num_attention_heads=16,
    num_channels=3,
    num_hidden_layers=24,
    patch_size=14,
    projection_dim=768,
)


class _VisionTower(nn.Module):
    """Holds the CLIPVisionModel as `.vision_model`, so parameter names match the checkpoint's
    `img_processor.vision_model.*` (transformers 5's CLIPVisionModel has no `vision_model` level)."""

    def __init__(self, vision_model: nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model

    def forward(self, *args, **kwargs):
        return self.vision_model(*args, **kwargs)


def separator_mask(h: int, w: int, order: str = "sub_glb") -> torch.Tensor:
    """Bool [144*h*w + 12*h + 157]: True at separator tokens (sub_GN row ends and glb_GN)."""
    if order not in ORDERS:
        raise ValueError(f"hd_transform_order must be one of {ORDERS}, got {order!r}")
    sub = torch.zeros(MERGED * h, MERGED * w + 1, dtype=torch.bool)
    sub[:, -1] = True
    glb = torch.zeros(MERGED, MERGED + 1, dtype=torch.bool)
    glb[:, -1] = True
    one = torch.ones(1, dtype=torch.bool)
    parts = [sub.flatten(), one, glb.flatten()] if order == "sub_glb" else [glb.flatten(), one, sub.flatten()]
    return torch.cat(parts)


def global_view_mask(h: int, w: int, order: str = "sub_glb") -> torch.Tensor:
    """Bool [T]: True at the global view's 144 image tokens (its separators excluded)."""
    n_sub = MERGED * h * (MERGED * w + 1)
    glb = torch.ones(MERGED, MERGED + 1, dtype=torch.bool)
    glb[:, -1] = False
    zeros_sub = torch.zeros(n_sub, dtype=torch.bool)
    zero = torch.zeros(1, dtype=torch.bool)
    parts = [zeros_sub, zero, glb.flatten()] if order == "sub_glb" else [glb.flatten(), zero, zeros_sub]
    return torch.cat(parts)


def merge_2x2(features: torch.Tensor) -> torch.Tensor:
    """[N, 576, C] patch features -> [N, 144, 4C]; channel blocks in order (0,0), (0,1), (1,0), (1,1)."""
    n, _, c = features.shape
    return (
        features.reshape(n, MERGED, 2, MERGED, 2, c)
        .permute(0, 1, 3, 2, 4, 5)
        .reshape(n, MERGED * MERGED, 4 * c)
    )


def _grids(image_sizes: Any, batch: int) -> list[tuple[int, int]]:
    sizes = torch.as_tensor(image_sizes).reshape(-1, 2).tolist()
    if len(sizes) != batch:
        raise ValueError(f"image_sizes has {len(sizes)} entries but pixel_values holds {batch} images")
    out = []
    for h, w in sizes:
        if h <= 0 or w <= 0 or h % CROP or w % CROP:
            raise ValueError(
                f"image size {(h, w)} is not a positive multiple of {CROP} (use Phi3VImageProcessor)"
            )
        out.append((int(h) // CROP, int(w) // CROP))
    return out


def crops_per_call_for(device: Any) -> int:
    """Crops per vision-tower call: 2 on the CPU (measured fastest per crop for ViT-L/14-336 on 2 cores:
    298 ms/crop at 2 vs 360 at 17 and 386 at 34, 3 layers), 64 on an accelerator (memory-bounded)."""
    return 2 if torch.device(device).type == "cpu" else 64


class Phi3VImageEmbedding(nn.Module):
    """CLIP tower (layer `layer_idx` patch features) -> 2x2 merge -> HD layout + separators -> projection."""

    def __init__(
        self,
        vision_config: Any,
        hidden_size: int,
        image_dim_out: int,
        num_img_tokens: int = 144,
        layer_idx: int = -2,
        type_feature: str = "patch",
        hd_transform_order: str = "sub_glb",
        projection_cls: str = "mlp",
        vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        from transformers import CLIPVisionModel

        if type_feature != "patch":
            raise ModelError(
                f"img_processor.type_feature {type_feature!r} is not supported with the HD transform: "
                f"it needs the 576 patch tokens ('patch'); 'cls_patch' adds the CLS token (577), "
                f"which the 24x24 reshape cannot take"
            )
        if hd_transform_order not in ORDERS:
            raise ModelError(
                f"embd_layer.hd_transform_order {hd_transform_order!r} is unknown; "
                f"use one of {', '.join(ORDERS)}"
            )
        if int(vision_config.image_size) != CROP or int(vision_config.patch_size) != PATCH:
            raise ModelError(
                f"img_processor.vision_config must keep the 336/14 geometry (24x24 patches) of the HD "
                f"transform, got image_size {vision_config.image_size}, patch_size "
                f"{vision_config.patch_size}"
            )
        if int(vision_config.hidden_size) != int(image_dim_out):
            raise ModelError(
                f"img_processor.image_dim_out {image_dim_out} differs from the vision tower's "
                f"hidden_size {vision_config.hidden_size}"
            )
        n_layers = int(vision_config.num_hidden_layers)
        index = layer_idx if layer_idx >= 0 else n_layers + 1 + layer_idx
        if not 0 <= index <= n_layers:
            raise ModelError(
                f"img_processor.layer_idx {layer_idx} is out of range for a {n_layers}-layer tower"
            )
        self.layer_idx = int(layer_idx)
        self.num_layers_needed = index  # hidden_states[index] is the output of `index` encoder layers
        self.type_feature = type_feature
        self.hd_transform_order = hd_transform_order
        self.projection_cls = projection_cls
        self.image_dim_out = int(image_dim_out)
        self.hidden_size = int(hidden_size)
        self.num_img_tokens = int(num_img_tokens)
        self.vocab_size = vocab_size
        # Crops per tower call; None = by device (see `crops_per_call_for`).
        self.crops_per_call: int | None = None

        self.img_processor = _VisionTower(CLIPVisionModel(vision_config))
        dim = 4 * self.image_dim_out
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, dim))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, dim))
        if projection_cls == "mlp":
            self.img_projection = nn.Sequential(
                nn.Linear(dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
            )
        elif projection_cls == "linear":
            # The reference builds Linear(image_dim_out, hidden) here, which cannot take the HD path's
            # 4C-channel tokens; the HD layout needs 4C inputs.
            self.img_projection = nn.Linear(dim, hidden_size)
        else:
            raise ModelError(
                f"embd_layer.projection_cls {projection_cls!r} is unknown; use 'mlp' or 'linear'"
            )

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict, dtype: torch.dtype | None = None) -> Phi3VImageEmbedding:
        """Build from a phi3_v config.json dict (settings from `img_processor` and `embd_layer`)."""
        from transformers import CLIPVisionConfig

        img = config.get("img_processor")
        if not isinstance(img, dict):
            raise ModelError(
                f"config.json: img_processor must be a dict (name: clip_vision_model, ...), got {img!r}"
            )
        if img.get("name", "clip_vision_model") != "clip_vision_model":
            raise ModelError(
                f"config.json: img_processor.name {img.get('name')!r} is not supported; "
                f"Phi-3-vision uses 'clip_vision_model'"
            )
        embd = config.get("embd_layer") or {}
        if not isinstance(embd, dict):
            raise ModelError(f"config.json: embd_layer must be a dict, got {embd!r}")
        if not embd.get("use_hd_transform", False) or not embd.get("with_learnable_separator", False):
            raise ModelError(
                "config.json: only the HD transform with learnable separators is supported "
                "(embd_layer.use_hd_transform and with_learnable_separator true, as in every "
                f"released Phi-3(.5)-vision checkpoint), got {embd}"
            )
        vcfg = dict(CLIP_VIT_LARGE_PATCH14_336)
        if isinstance(img.get("vision_config"), dict):
            vcfg = {**vcfg, **img["vision_config"]}
        vision_config = CLIPVisionConfig(**vcfg)
        vision_config._attn_implementation = "sdpa"
        if "hidden_size" not in config:
            raise ModelError("config.json lacks hidden_size (the projection's output size)")
        image_dim_out = img.get("image_dim_out", vision_config.hidden_size)
        module = cls(
            vision_config,
            hidden_size=int(config["hidden_size"]),
            image_dim_out=int(image_dim_out),
            num_img_tokens=int(img.get("num_img_tokens", 144)),
            layer_idx=int(img.get("layer_idx", -2)),
            type_feature=img.get("type_feature", "patch"),
            hd_transform_order=embd.get("hd_transform_order", "glb_sub"),
            projection_cls=embd.get("projection_cls", "linear"),
            vocab_size=config.get("vocab_size"),
        )
        if dtype is not None:
            module = module.to(dtype)
        return module.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.glb_GN.dtype

    @property
    def device(self) -> torch.device:
        return self.glb_GN.device

    @property
    def vision_model(self) -> nn.Module:
        return self.img_processor.vision_model

    # ---- the tower ---------------------------------------------------------------------------
    def patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N,3,336,336] -> [N,576,C]: hidden_states[layer_idx] without CLS; runs only the layers needed.

        The crops go through the tower in groups of `crops_per_call_for(device)`: crops are independent,
        so grouping changes nothing but speed (on the CPU, per-crop cost grows with the batch as the
        activations fall out of cache; on a GPU big batches fill the device).
        """
        step = self.crops_per_call or crops_per_call_for(self.device)
        if len(pixel_values) > step:
            return torch.cat([self._patch_features(pixel_values[i : i + step])
                              for i in range(0, len(pixel_values), step)])
        return self._patch_features(pixel_values)

    def _patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vm = self.vision_model
        x = vm.embeddings(pixel_values.to(device=self.device, dtype=self.dtype))
        x = vm.pre_layrnorm(x)
        for layer in vm.encoder.layers[: self.num_layers_needed]:
            x = layer(x, None)
        return x[:, 1:]

    def _real_crops(self, pixel_values: Any, image_sizes: Any) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Concatenate the global view + h*w real crops of every image (padding crops left out)."""
        batch = len(pixel_values)
        grids = _grids(image_sizes, batch)
        crops = []
        for b, (h, w) in enumerate(grids):
            available = pixel_values[b].shape[0]
            if 1 + h * w > available:
                raise ValueError(
                    f"image {b}: image size needs {h}x{w} crops + the global view but pixel_values "
                    f"holds only {available} crops (num_crops too small for these image_sizes)"
                )
            crops.append(pixel_values[b][: 1 + h * w])
        return torch.cat(crops), grids

    def _layout(self, glb: torch.Tensor, sub: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Merged global [144,4C] + sub crops [h*w,144,4C] -> [T, 4C] with separators (hd_transform_order)."""
        dim = glb.shape[-1]
        sub_gn = self.sub_GN.to(glb.dtype)
        glb_img = torch.cat([glb.reshape(1, MERGED, MERGED, dim), sub_gn.expand(1, MERGED, 1, dim)], dim=2)
        sub_img = (
            sub.reshape(1, h, w, MERGED, MERGED, dim)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(1, MERGED * h, MERGED * w, dim)
        )
        sub_img = torch.cat([sub_img, sub_gn.expand(1, MERGED * h, 1, dim)], dim=2)
        glb_gn = self.glb_GN.to(glb.dtype).reshape(1, dim)
        glb_img, sub_img = glb_img.reshape(-1, dim), sub_img.reshape(-1, dim)
        if self.hd_transform_order == "sub_glb":
            return torch.cat([sub_img, glb_gn, glb_img])
        return torch.cat([glb_img, glb_gn, sub_img])

    def image_tokens_unprojected(self, pixel_values: Any, image_sizes: Any) -> list[torch.Tensor]:
        """Per image [T_i, 4C] tokens (separators included), T_i = 144*h*w + 12*h + 157."""
        crops, grids = self._real_crops(pixel_values, image_sizes)
        merged = merge_2x2(self.patch_features(crops))
        out, start = [], 0
        for h, w in grids:
            n = 1 + h * w
            feats = merged[start : start + n]
            start += n
            out.append(self._layout(feats[0], feats[1:], h, w))
        return out

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.img_projection(tokens.to(self.dtype))

    def forward(self, pixel_values: Any, image_sizes: Any) -> list[torch.Tensor]:
        """Per image projected tokens [T_i, hidden]; one projection call for the whole batch."""
        tokens = self.image_tokens_unprojected(pixel_values, image_sizes)
        projected = self.project(torch.cat(tokens))
        return list(projected.split([len(t) for t in tokens]))

    # ---- pooled vectors (embedder) -----------------------------------------------------------
    def pool(self, pixel_values: Any, image_sizes: Any, pooling: str = "mean") -> Any:
        """Per-image vectors [B, D] (not normalized) or, for "tokens", a list of [T_i, hidden].

        mean: projected tokens without separators; global: projected global-view tokens (no separators);
        clip: layer-`layer_idx` patch features of the global view, averaged, before projection.
        The projection acts token by token, so separators are simply never projected here.
        """
        if pooling == "tokens":
            return self.forward(pixel_values, image_sizes)
        if pooling in ("clip", "global"):
            glb = torch.stack([pixel_values[b][0] for b in range(len(pixel_values))])
            _grids(image_sizes, len(pixel_values))
            feats = self.patch_features(glb)
            if pooling == "clip":
                return feats.mean(dim=1)
            return self.project(merge_2x2(feats)).mean(dim=1)
        if pooling == "mean":
            crops, grids = self._real_crops(pixel_values, image_sizes)
            merged = merge_2x2(self.patch_features(crops))
            counts = [1 + h * w for h, w in grids]
            projected = self.project(merged.reshape(-1, merged.shape[-1]))
            per_crop = projected.reshape(len(merged), -1, projected.shape[-1]).sum(dim=1)
            return torch.stack([s.sum(0) / (len(s) * MERGED * MERGED) for s in per_crop.split(counts)])
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")

    # ---- token sequences (the seed's other use) ----------------------------------------------
    def embed_input_ids(
        self, input_ids: torch.Tensor, pixel_values: Any, image_sizes: Any, wte: nn.Embedding
    ) -> torch.Tensor:
        """Token embeddings [*input_ids.shape, hidden] with image tokens at the negative placeholder ids.

        Placeholder blocks (runs of one negative id inside a row) are filled in row-major order with
        the images of `pixel_values` in order. `input_ids` itself is never modified.
        """
        if wte is None:
            raise ValueError("embed_input_ids needs the language model's token embedding (wte)")
        shape = input_ids.shape
        ids = input_ids.reshape(-1, shape[-1]) if input_ids.dim() else input_ids.reshape(1, 1)
        vocab = int(self.vocab_size or wte.num_embeddings)
        embeds = wte(ids.clamp(0, vocab - 1).to(wte.weight.device))
        blocks = _placeholder_blocks(ids)
        n_images = 0 if pixel_values is None else len(pixel_values)
        if not blocks and not n_images:
            return embeds.reshape(*shape, -1)
        if len(blocks) != n_images:
            raise ValueError(
                f"input_ids hold {len(blocks)} image placeholder block(s) but {n_images} image(s) were given"
            )
        images = self.forward(pixel_values, image_sizes)
        embeds = embeds.clone()
        for i, ((row, start, length, value), tokens) in enumerate(zip(blocks, images)):
            if length != len(tokens):
                raise ValueError(
                    f"image {i + 1} (placeholder id {value}, row {row}) has {length} placeholder "
                    f"tokens but its num_img_tokens is {len(tokens)}: build the prompt with the "
                    f"processor's num_img_tokens"
                )
            embeds[row, start : start + length] = tokens.to(device=embeds.device, dtype=embeds.dtype)
        return embeds.reshape(*shape, -1)


def _placeholder_blocks(ids: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(row, start, length, id) of every run of one negative id within a row, row-major."""
    blocks = []
    neg = ids < 0
    for row in torch.nonzero(neg.any(dim=1)).flatten().tolist():
        r = ids[row]
        cols = torch.nonzero(r < 0).flatten()
        vals = r[cols]
        # a new block starts where the column jumps or the id changes
        starts = torch.ones(len(cols), dtype=torch.bool)
        starts[1:] = (cols[1:] != cols[:-1] + 1) | (vals[1:] != vals[:-1])
        first = torch.nonzero(starts).flatten().tolist() + [len(cols)]
        for a, b in pairwise(first):
            blocks.append((row, int(cols[a]), b - a, int(vals[a])))
    return blocks


@torch.no_grad()
def reference_forward(
    module: Phi3VImageEmbedding, pixel_values: torch.Tensor, image_sizes: Any, project: bool = True
) -> list[torch.Tensor]:
    """The reference's per-image loop: CLIP on ALL 1+num_crops crops, ALL layers, hidden_states[layer_idx]."""
    out = []
    sizes = torch.as_tensor(image_sizes).reshape(-1, 2).tolist()
    vm = module.img_processor.vision_model
    C = module.image_dim_out
    H = GRID
    for b in range(len(pixel_values)):
        pv = pixel_values[b].to(device=module.device, dtype=module.dtype)
        hs = vm(pv, output_hidden_states=True).hidden_states[module.layer_idx]
        feats = hs[:, 1:]
        h, w = sizes[b][0] // CROP, sizes[b][1] // CROP
        glb = (
            feats[:1]
            .reshape(1, H, H, C)
            .reshape(1, H // 2, 2, H // 2, 2, C)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(1, H // 2, H // 2, 4 * C)
        )
        glb = torch.cat([glb, module.sub_GN.repeat(1, H // 2, 1, 1)], dim=2).reshape(1, -1, 4 * C)
        sub = feats[1:][: h * w]
        sub = (
            sub.reshape(h * w, H, H, C)
            .reshape(h * w, H // 2, 2, H // 2, 2, C)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(h * w, -1, 4 * C)
        )
        sub = (
            sub.reshape(1, h, w, H // 2, H // 2, -1)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(1, h * H // 2, w * H // 2, 4 * C)
        )
        sub = torch.cat([sub, module.sub_GN.repeat(1, h * H // 2, 1, 1)], dim=2).reshape(1, -1, 4 * C)
        if module.hd_transform_order == "glb_sub":
            tokens = torch.cat([glb, module.glb_GN, sub], dim=1)
        else:
            tokens = torch.cat([sub, module.glb_GN, glb], dim=1)
        tokens = tokens[0]
        out.append(module.img_projection(tokens) if project else tokens)
    return out
