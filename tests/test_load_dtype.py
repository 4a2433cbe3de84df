"""bf16 loads in bf16 (issue 17): weights materialized in bfloat16 directly, never a float32 copy first."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

# A CLIP big enough for RSS to see (~80 MB of float32 weights, stored float32), small enough to write fast.
_MEDIUM = dict(vision_config=dict(image_size=64, patch_size=16, hidden_size=512, intermediate_size=2048,
                                  num_hidden_layers=6, num_attention_heads=8),
               text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                num_attention_heads=2),
               projection_dim=64)

_CHILD = r"""
import json, sys, torch
from bench.embedders.base import RuntimeOptions
from bench.embedders.clip import ClipEmbedder
from bench.metrics.memory import PeakMemory
ClipEmbedder(sys.argv[2], runtime=RuntimeOptions(dtype="bfloat16"))  # imports and first-call costs
with PeakMemory("cpu") as mem:
    emb = ClipEmbedder(sys.argv[1], runtime=RuntimeOptions(dtype="bfloat16"))
    tensors = [*emb.model.parameters(), *emb.model.buffers()]
    for t in tensors:
        t.reshape(-1)[::1024].sum()  # touch every page: lazily mapped weights count too
print(json.dumps({"rise": mem.metrics()["peak_rss_delta_mib"] * 2**20, "method": mem.method,
                  "dtypes": sorted({str(t.dtype) for t in tensors if t.is_floating_point()}),
                  "bytes": sum(t.numel() * t.element_size() for t in tensors)}))
"""


@pytest.fixture(scope="module")
def medium_clip_dir(tmp_path_factory, tiny_clip_dir):
    from transformers import CLIPConfig, CLIPModel

    out = tmp_path_factory.mktemp("medium_clip")
    tiny = json.loads((tiny_clip_dir / "config.json").read_text())
    cfg = dict(_MEDIUM)
    cfg["text_config"] = {**tiny["text_config"], **_MEDIUM["text_config"]}
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(**cfg)).save_pretrained(out)  # float32
    for f in tiny_clip_dir.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, out / f.name)
    return out


def test_bf16_clip_load_never_holds_float32_weights(medium_clip_dir, tiny_clip_dir):
    """Peak RSS of a bf16 load of a float32 checkpoint ~ the bf16 weights; the old path (from_pretrained
    mapping the whole float32 file while converting) peaked at float32 file + bf16 copy = 3x."""
    from safetensors import safe_open

    with safe_open(str(medium_clip_dir / "model.safetensors"), "pt") as f:
        stored = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert stored == {"F32"} or stored == {"F32", "I64"}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(medium_clip_dir), str(tiny_clip_dir)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["dtypes"] == ["torch.bfloat16"]
    bf16_bytes = r["bytes"]
    assert bf16_bytes > 35e6  # the model is big enough for the bound below to mean something
    if r["method"] != "VmHWM":
        pytest.skip("no exact peak RSS here (VmHWM reset unavailable)")
    # bf16 weights + one float32 tensor in flight + slack; a float32 copy would add >= 2x bf16_bytes.
    assert r["rise"] < 1.5 * bf16_bytes, (r["rise"] / 2**20, bf16_bytes / 2**20)


def test_lazy_state_dict_reads_in_stored_dtype_or_converts(medium_clip_dir):
    """The slices read back the stored values exactly (both backends), whatever the target dtype."""
    from safetensors.torch import load_file

    from bench.models.hub import lazy_state_dict

    ref = load_file(str(medium_clip_dir / "model.safetensors"))
    for dtype in (torch.float32, torch.bfloat16):
        with lazy_state_dict([medium_clip_dir / "model.safetensors"], dtype) as state:
            assert set(state) == set(ref)
            name = "vision_model.encoder.layers.0.mlp.fc1.weight"
            assert torch.equal(state[name][:], ref[name])


def test_bf16_embeddings_close_to_float32(tiny_clip_dir, tiny_phi3v_dir):
    """Every embedder loads bf16 weights (no float32 parameter left) and its vectors stay near float32's."""
    import numpy as np
    from PIL import Image

    from bench.embedders.base import RuntimeOptions
    from bench.embedders.clip import ClipEmbedder
    from bench.embedders.phi3v import Phi3VImageEmbedder
    from bench.embedders.phi3v_lm import Phi3VLMEmbedder

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48 + 16 * i, 64, 3), dtype=np.uint8)) for i in range(4)]
    for cls, folder in ((ClipEmbedder, tiny_clip_dir), (Phi3VImageEmbedder, tiny_phi3v_dir),
                        (Phi3VLMEmbedder, tiny_phi3v_dir)):
        vecs = {}
        for dtype in ("float32", "bfloat16"):
            emb = cls(str(folder), runtime=RuntimeOptions(dtype=dtype))
            module = getattr(emb, "model", None) or emb.module
            params = {str(p.dtype) for p in module.parameters()}
            assert params == {f"torch.{dtype}"}, (cls.kind, dtype, params)
            vecs[dtype] = emb.embed_image_batch(emb.collate([emb.preprocess(im) for im in images]))
        a, b = vecs["float32"], vecs["bfloat16"]
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        assert b.dtype == torch.float32
        assert float(cos.min()) > 0.98, (cls.kind, cos)
        assert not torch.equal(a, b)  # bf16 really ran
