"""Phi-3-vision image embedding: vectorized path vs the per-image reference loop, layout, pooling,
placeholder filling, and the `phi3v` embedder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench.embedders.base import RuntimeOptions
from bench.errors import ConfigError, ModelError
from bench.models.phi3v.image_embedding import (
    Phi3VImageEmbedding,
    global_view_mask,
    reference_forward,
    separator_mask,
)
from bench.models.phi3v.processor import Phi3VImageProcessor
from bench.demo.tiny_phi3v import _value, tiny_config

torch.set_num_threads(1)


def _image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _module(order: str = "sub_glb", proj: str = "mlp", seed: int = 0, **img) -> Phi3VImageEmbedding:
    cfg = tiny_config(hd_transform_order=order, projection_cls=proj)
    cfg["img_processor"].update(img)
    module = Phi3VImageEmbedding.from_config(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(_value(name, tuple(p.shape), gen))
    return module.eval()


@pytest.fixture(scope="module")
def batch():
    """Three images of mixed aspect -> grids 2x2, 4x1 and 1x2 (num_crops 4), one padding crop or more each."""
    proc = Phi3VImageProcessor(4)
    return proc([_image(300, 200, 0), _image(100, 400, 1), _image(400, 150, 2)])


def test_batch_grids(batch):
    assert batch["image_sizes"].tolist() == [[672, 672], [1344, 336], [336, 672]]
    assert batch["num_img_tokens"] == [757, 781, 457]


@pytest.mark.parametrize("order", ["sub_glb", "glb_sub"])
@pytest.mark.parametrize("proj", ["mlp", "linear"])
def test_vectorized_equals_reference(batch, order, proj):
    module = _module(order, proj)
    with torch.no_grad():
        fast = module(batch["pixel_values"], batch["image_sizes"])
    ref = reference_forward(module, batch["pixel_values"], batch["image_sizes"])
    assert [len(t) for t in fast] == [len(t) for t in ref] == batch["num_img_tokens"]
    for a, b in zip(fast, ref):
        assert a.shape[1] == 64
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # One image alone gives the same tokens as inside the batch.
    with torch.no_grad():
        alone = module(batch["pixel_values"][1:2], batch["image_sizes"][1:2])[0]
    torch.testing.assert_close(alone, fast[1], atol=1e-5, rtol=1e-5)


def test_orders_differ(batch):
    a, b = _module("sub_glb"), _module("glb_sub")
    with torch.no_grad():
        ta = a.image_tokens_unprojected(batch["pixel_values"][:1], batch["image_sizes"][:1])[0]
        tb = b.image_tokens_unprojected(batch["pixel_values"][:1], batch["image_sizes"][:1])[0]
    # Same weights (same seed): glb_sub is sub_glb with the two blocks swapped around glb_GN.
    n_sub = 24 * 25
    torch.testing.assert_close(tb[:156], ta[n_sub + 1 :])
    torch.testing.assert_close(tb[157:], ta[:n_sub])
    torch.testing.assert_close(ta[n_sub], a.glb_GN[0, 0])


def test_patch_features_match_clip_hidden_states():
    module = _module()
    x = torch.randn(3, 3, 336, 336, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = module.patch_features(x)
        hs = module.img_processor.vision_model(x, output_hidden_states=True).hidden_states
    assert module.num_layers_needed == 2 and len(hs) == 4  # 3-layer tiny tower: layer -2 = 2 layers
    assert ours.shape == (3, 576, 32)
    torch.testing.assert_close(ours, hs[-2][:, 1:], atol=1e-6, rtol=1e-6)
    last = _module(layer_idx=-1)
    with torch.no_grad():
        torch.testing.assert_close(
            last.patch_features(x),
            last.img_processor.vision_model(x, output_hidden_states=True).hidden_states[-1][:, 1:],
            atol=1e-6,
            rtol=1e-6,
        )


def test_layout_token_by_token(batch):
    """Each sub-grid token is the 4 patch features of its 2x2 block, in (0,0),(0,1),(1,0),(1,1) order."""
    module = _module()
    pv, sizes = batch["pixel_values"][1:2], batch["image_sizes"][1:2]  # 4 rows x 1 col
    h, w = 4, 1
    with torch.no_grad():
        tokens = module.image_tokens_unprojected(pv, sizes)[0]
        feats = [module.patch_features(pv[0, k : k + 1])[0].reshape(24, 24, 32) for k in range(1 + h * w)]
    mask = separator_mask(h, w, "sub_glb")
    assert int(mask.sum()) == 12 * h + 1 + 12 and len(mask) == len(tokens) == 144 * h * w + 12 * h + 157
    row_len = 12 * w + 1
    for i in (0, 5, 13, 30, 47):  # token rows of the sub grid
        for j in (0, 3, 11):
            crop = (i // 12) * w + (j // 12)
            f = feats[1 + crop]
            r, c = 2 * (i % 12), 2 * (j % 12)
            expected = torch.cat([f[r, c], f[r, c + 1], f[r + 1, c], f[r + 1, c + 1]])
            torch.testing.assert_close(tokens[i * row_len + j], expected)
        torch.testing.assert_close(tokens[i * row_len + 12 * w], module.sub_GN[0, 0, 0])
    start = 12 * h * row_len + 1
    g = feats[0]
    torch.testing.assert_close(
        tokens[start + 2 * 13 + 5], torch.cat([g[4, 10], g[4, 11], g[5, 10], g[5, 11]])
    )
    torch.testing.assert_close(
        tokens[mask],
        torch.cat(
            [module.sub_GN[0, 0].expand(12 * h, -1), module.glb_GN[0], module.sub_GN[0, 0].expand(12, -1)]
        ),
    )


def test_padding_crops_never_reach_clip(batch):
    module = _module()
    seen = []
    real = module.patch_features

    def spy(x):
        seen.append(len(x))
        return real(x)

    module.patch_features = spy
    pv = batch["pixel_values"].clone()
    for b, (h, w) in enumerate((batch["image_sizes"] // 336).tolist()):
        pv[b, 1 + h * w :] = float("nan")  # padding crops: any value must be ignored
    with torch.no_grad():
        out = module(pv, batch["image_sizes"])
    assert seen == [5 + 5 + 3]  # one CLIP call over all real crops of the batch
    assert all(torch.isfinite(t).all() for t in out)


def test_pooling(batch):
    module = _module("glb_sub")
    pv, sizes = batch["pixel_values"], batch["image_sizes"]
    with torch.no_grad():
        tokens = module(pv, sizes)
        mean = module.pool(pv, sizes, "mean")
        glb = module.pool(pv, sizes, "global")
        clip = module.pool(pv, sizes, "clip")
        hs = module.img_processor.vision_model(pv[:, 0], output_hidden_states=True).hidden_states[-2]
    for b, (h, w) in enumerate((sizes // 336).tolist()):
        keep = ~separator_mask(h, w, "glb_sub")
        assert int(keep.sum()) == 144 * (h * w + 1)
        torch.testing.assert_close(mean[b], tokens[b][keep].mean(0), atol=1e-5, rtol=1e-5)
        gmask = global_view_mask(h, w, "glb_sub")
        assert int(gmask.sum()) == 144 and not bool((gmask & ~keep).any())
        torch.testing.assert_close(glb[b], tokens[b][gmask].mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clip, hs[:, 1:].mean(1), atol=1e-5, rtol=1e-5)
    assert mean.shape == glb.shape == (3, 64) and clip.shape == (3, 32)


def test_embed_input_ids(batch):
    module = _module()
    module.vocab_size = 512
    wte = torch.nn.Embedding(512, 64)
    pv, sizes, counts = batch["pixel_values"][:2], batch["image_sizes"][:2], batch["num_img_tokens"][:2]
    t0, t1 = counts
    length = t1 + 4
    ids = torch.zeros(2, length, dtype=torch.long)
    ids[0, :3] = torch.tensor([1, 700, 5])  # 700 >= vocab: clamped to 511
    ids[0, 3 : 3 + t0] = -1
    ids[0, 3 + t0 :] = 9
    ids[1, 0] = 1
    ids[1, 1 : 1 + t1] = -2
    ids[1, 1 + t1 :] = torch.tensor([4, 6, 8])
    before = ids.clone()
    with torch.no_grad():
        out = module.embed_input_ids(ids, pv, sizes, wte)
        images = module(pv, sizes)
    assert torch.equal(ids, before)  # the caller's ids are untouched
    assert out.shape == (2, length, 64)
    torch.testing.assert_close(out[0, 3 : 3 + t0], images[0])
    torch.testing.assert_close(out[1, 1 : 1 + t1], images[1])
    torch.testing.assert_close(out[0, 1], wte.weight[511].detach())
    torch.testing.assert_close(out[0, 2], wte.weight[5].detach())
    torch.testing.assert_close(out[1, -1], wte.weight[8].detach())
    # A flat 1-D sequence keeps its shape.
    with torch.no_grad():
        flat = module.embed_input_ids(ids[1], pv[1:2], sizes[1:2], wte)
    assert flat.shape == (length, 64)
    torch.testing.assert_close(flat, out[1])
    bad = ids.clone()
    bad[0, 3] = 9  # image 1 now has one placeholder too few
    with pytest.raises(ValueError, match=f"{t0 - 1} placeholder tokens but its num_img_tokens is {t0}"):
        module.embed_input_ids(bad, pv, sizes, wte)
    with pytest.raises(ValueError, match="2 image placeholder block"):
        module.embed_input_ids(ids, pv[:1], sizes[:1], wte)


def test_config_errors():
    cfg = tiny_config()
    cfg["img_processor"]["type_feature"] = "cls_patch"
    with pytest.raises(ModelError, match="cls_patch"):
        Phi3VImageEmbedding.from_config(cfg)
    cfg = tiny_config(hd_transform_order="sideways")
    with pytest.raises(ModelError, match="sideways"):
        Phi3VImageEmbedding.from_config(cfg)
    cfg = tiny_config()
    cfg["img_processor"]["vision_config"]["patch_size"] = 16
    with pytest.raises(ModelError, match="336/14"):
        Phi3VImageEmbedding.from_config(cfg)
    cfg = tiny_config()
    cfg["embd_layer"]["use_hd_transform"] = False
    with pytest.raises(ModelError, match="HD transform"):
        Phi3VImageEmbedding.from_config(cfg)


# ---- the embedder -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images():
    return [_image(300, 200, 0), _image(100, 400, 1), _image(60, 60, 2)]


@pytest.mark.parametrize("pooling", ["mean", "global", "clip"])
def test_embedder_pooled(tiny_phi3v_dir, images, pooling):
    from bench.embedders.phi3v import Phi3VImageEmbedder

    emb = Phi3VImageEmbedder(str(tiny_phi3v_dir), pooling=pooling)
    assert emb.num_crops == 4  # from preprocessor_config.json
    batch = emb.collate([emb.preprocess(im) for im in images])
    assert emb.batch_size_of(batch) == 3
    assert batch["pixel_values"].shape[0] == 5 + 5 + 5  # padding crops dropped
    out = emb.embed_image_batch(batch)
    assert out.shape == (3, emb.dim) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    single = emb.embed_image_batch(emb.collate([emb.preprocess(images[1])]))
    torch.testing.assert_close(single[0], out[1], atol=1e-5, rtol=1e-5)
    # Same numbers as the module on the processor's padded batch, normalized by hand.
    proc = Phi3VImageProcessor(4)(images)
    with torch.no_grad():
        ref = emb.module.pool(proc["pixel_values"], proc["image_sizes"], pooling)
    torch.testing.assert_close(out, ref / ref.norm(dim=1, keepdim=True), atol=1e-5, rtol=1e-5)


def test_embedder_tokens_settings_and_errors(tiny_phi3v_dir, images):
    from bench.embedders.phi3v import Phi3VImageEmbedder

    emb = Phi3VImageEmbedder(str(tiny_phi3v_dir), num_crops=2, pooling="tokens")
    out = emb.embed_image_batch(emb.collate([emb.preprocess(im) for im in images]))
    assert [tuple(t.shape) for t in out] == [(313, 64), (469, 64), (313, 64)]
    fp = emb.fingerprint()
    assert fp["num_crops"] == 2 and fp["pooling"] == "tokens" and fp["dtype"] == "float32"
    other = Phi3VImageEmbedder(str(tiny_phi3v_dir), pooling="mean").fingerprint()
    assert other["model_hash"] == fp["model_hash"] and other != fp
    info = emb.describe()
    assert info["vision_layers_run"] == 2 and info["vision_layers"] == 3 and info["num_crops"] == 2
    assert not emb.supports_text
    with pytest.raises(ConfigError, match="pooling 'maen'.*did you mean 'mean'"):
        Phi3VImageEmbedder(str(tiny_phi3v_dir), pooling="maen")
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        Phi3VImageEmbedder(str(tiny_phi3v_dir), runtime=RuntimeOptions(dtype="float16"))
    with pytest.raises(ConfigError, match="num_crops"):
        Phi3VImageEmbedder(str(tiny_phi3v_dir), num_crops=0)


def test_bf16_module_close_to_float32(batch):
    module = _module()
    with torch.no_grad():
        ref = module.pool(batch["pixel_values"], batch["image_sizes"], "mean")
        half = module.to(torch.bfloat16).pool(batch["pixel_values"], batch["image_sizes"], "mean")
    assert half.dtype == torch.bfloat16
    assert F.cosine_similarity(half.float(), ref).min() > 0.99


def test_crops_per_call_changes_nothing_but_grouping(batch, monkeypatch):
    from bench.models.phi3v import image_embedding as ie

    module = _module()
    calls = []
    real = module._patch_features
    monkeypatch.setattr(module, "_patch_features", lambda x: calls.append(len(x)) or real(x))
    outs = {}
    for step in (1, 3, 1000):
        module.crops_per_call = step
        calls.clear()
        with torch.no_grad():
            outs[step] = module(batch["pixel_values"], batch["image_sizes"])
        real_crops = 5 + 5 + 3  # 2x2, 4x1, 1x2 grids + one global view each
        assert sum(calls) == real_crops and max(calls) == min(step, real_crops)
    for step in (1, 3):
        for a, b in zip(outs[step], outs[1000]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert ie.crops_per_call_for("cpu") == 2 and ie.crops_per_call_for("cuda:0") == 64
