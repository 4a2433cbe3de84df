"""Phi-3-vision checkpoints: tiny generator layout, tensor-by-tensor reads, strict vision loading, errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.errors import ModelError
from bench.models.phi3v.checkpoint import Phi3VCheckpoint, load_image_embedding

torch.set_num_threads(1)
PREFIX = "model.vision_embed_tokens."


def _copy(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*skip) if skip else None)
    return dst


def _all_tensors(folder: Path) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(str(folder / shard)))
    return out


def test_tiny_layout(tiny_phi3v_dir):
    cfg = json.loads((tiny_phi3v_dir / "config.json").read_text())
    assert cfg["model_type"] == "phi3_v" and cfg["architectures"] == ["Phi3VForCausalLM"]
    assert cfg["rope_scaling"]["type"] == "su" and len(cfg["rope_scaling"]["long_factor"]) == 8
    pre = json.loads((tiny_phi3v_dir / "preprocessor_config.json").read_text())
    assert pre["num_crops"] == 4
    index = json.loads((tiny_phi3v_dir / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    tensors = _all_tensors(tiny_phi3v_dir)
    assert set(tensors) == set(index["weight_map"])
    assert tensors["model.layers.1.self_attn.qkv_proj.weight"].shape == (3 * 64, 64)
    assert tensors["model.layers.0.mlp.gate_up_proj.weight"].shape == (256, 64)
    assert tensors["lm_head.weight"].shape == tensors["model.embed_tokens.weight"].shape == (512, 64)
    assert tensors[PREFIX + "img_projection.0.weight"].shape == (64, 128)
    assert tensors[PREFIX + "sub_GN"].shape == (1, 1, 1, 128) and tensors[PREFIX + "glb_GN"].shape == (
        1,
        1,
        128,
    )
    assert PREFIX + "img_processor.vision_model.pre_layrnorm.weight" in tensors
    assert PREFIX + "img_processor.vision_model.encoder.layers.2.mlp.fc2.weight" in tensors
    # Every vision tensor sits in shard 2, so breaking shard 1 (language model) must not matter.
    assert {index["weight_map"][k] for k in tensors if k.startswith(PREFIX)} == {shards[1]}


def test_tiny_is_deterministic_and_skips_when_complete(tiny_phi3v_dir, tmp_path):
    from bench.demo.tiny_phi3v import make_tiny_phi3v

    again = make_tiny_phi3v(tmp_path / "a", seed=0)
    a, b = _all_tensors(again), _all_tensors(tiny_phi3v_dir)
    assert all(torch.equal(a[k], b[k]) for k in b)
    shard = again / "model-00001-of-00002.safetensors"
    mtime = shard.stat().st_mtime_ns
    make_tiny_phi3v(again, seed=0)
    assert shard.stat().st_mtime_ns == mtime  # complete: not rewritten
    other = _all_tensors(make_tiny_phi3v(tmp_path / "b", seed=1))
    assert not torch.equal(other["model.norm.weight"], b["model.norm.weight"])


def test_checkpoint_reads(tiny_phi3v_dir):
    ckpt = Phi3VCheckpoint(str(tiny_phi3v_dir))
    assert ckpt.folder == tiny_phi3v_dir.resolve() and ckpt.preprocessor_config["num_crops"] == 4
    ref = _all_tensors(tiny_phi3v_dir)
    assert sorted(ckpt.keys()) == sorted(ref)
    assert ckpt.shape(PREFIX + "glb_GN") == (1, 1, 128)
    vision = ckpt.read(PREFIX)
    assert set(vision) == {k for k in ref if k.startswith(PREFIX)}
    assert all(torch.equal(vision[k], ref[k]) for k in vision)
    two = ckpt.read(["model.norm.weight", "model.embed_tokens.weight"], dtype=torch.bfloat16)
    assert list(two) == ["model.norm.weight", "model.embed_tokens.weight"]
    assert two["model.norm.weight"].dtype == torch.bfloat16
    torch.testing.assert_close(
        two["model.norm.weight"].float(), ref["model.norm.weight"], atol=1e-2, rtol=1e-2
    )
    with pytest.raises(ModelError, match="lacks tensors: model.nothing"):
        ckpt.read(["model.nothing"])


def test_load_image_embedding_matches_the_files(tiny_phi3v_dir):
    ref = _all_tensors(tiny_phi3v_dir)
    module = load_image_embedding(str(tiny_phi3v_dir))
    state = module.state_dict()
    assert set(state) == {k[len(PREFIX) :] for k in ref if k.startswith(PREFIX)}
    for k, v in state.items():
        assert torch.equal(v, ref[PREFIX + k]), k
    assert not any(t.is_meta for t in [*module.parameters(), *module.buffers()])
    assert torch.equal(module.vision_model.embeddings.position_ids, torch.arange(577)[None])
    assert not any(p.requires_grad for p in module.parameters()) and not module.training
    half = load_image_embedding(Phi3VCheckpoint(tiny_phi3v_dir), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())


def test_loading_touches_only_vision_tensors(tiny_phi3v_dir, tmp_path):
    folder = _copy(tiny_phi3v_dir, tmp_path / "garbage_lm")
    lm_shard = folder / "model-00001-of-00002.safetensors"
    lm_shard.write_bytes(os.urandom(4096))  # the language-model shard is unreadable
    module = load_image_embedding(str(folder))
    ref = load_image_embedding(str(tiny_phi3v_dir))
    x = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(module.patch_features(x), ref.patch_features(x))
    with pytest.raises(ModelError, match="cannot read shard .*model-00001-of-00002"):
        Phi3VCheckpoint(folder).read(["model.norm.weight", "model.embed_tokens.weight"])


def _rewrite(folder: Path, change) -> None:
    """Apply `change(tensors)` to shard 2 (the vision shard) and keep the index in sync."""
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = "model-00002-of-00002.safetensors"
    tensors = load_file(str(folder / shard))
    change(tensors)
    save_file(tensors, str(folder / shard), metadata={"format": "pt"})
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard}
    index["weight_map"].update(dict.fromkeys(tensors, shard))
    index_path.write_text(json.dumps(index))


def test_missing_unexpected_and_misshaped_vision_tensors(tiny_phi3v_dir, tmp_path):
    missing = _copy(tiny_phi3v_dir, tmp_path / "missing")
    _rewrite(missing, lambda t: t.pop(PREFIX + "sub_GN"))
    with pytest.raises(ModelError, match=r"missing tensors: model\.vision_embed_tokens\.sub_GN"):
        load_image_embedding(str(missing))

    shape = _copy(tiny_phi3v_dir, tmp_path / "shape")
    key = PREFIX + "img_projection.2.weight"
    _rewrite(shape, lambda t: t.__setitem__(key, torch.zeros(64, 60)))
    with pytest.raises(
        ModelError, match=rf"{key.replace('.', '[.]')} \(expected \(64, 64\), found \(64, 60\)\)"
    ):
        load_image_embedding(str(shape))

    extra = _copy(tiny_phi3v_dir, tmp_path / "extra")
    _rewrite(extra, lambda t: t.__setitem__(PREFIX + "img_projection.4.weight", torch.zeros(2)))
    with pytest.raises(
        ModelError, match=r"unexpected tensors: model\.vision_embed_tokens\.img_projection\.4"
    ):
        load_image_embedding(str(extra))

    # config.json saying 'linear' while the weights are an MLP: a clear mismatch, not a crash.
    linear = _copy(tiny_phi3v_dir, tmp_path / "linear")
    cfg = json.loads((linear / "config.json").read_text())
    cfg["embd_layer"]["projection_cls"] = "linear"
    (linear / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ModelError, match="does not match its config.json.*missing tensors.*img_projection.weight"
    ):
        load_image_embedding(str(linear))


def test_single_file_checkpoint(tiny_phi3v_dir, tmp_path):
    folder = _copy(tiny_phi3v_dir, tmp_path / "single", skip=("model-0000*", "model.safetensors.index.json"))
    save_file(_all_tensors(tiny_phi3v_dir), str(folder / "model.safetensors"), metadata={"format": "pt"})
    ckpt = Phi3VCheckpoint(folder)
    assert len(ckpt.keys()) == len(_all_tensors(tiny_phi3v_dir))
    load_image_embedding(ckpt)


def test_bad_checkpoints(tiny_phi3v_dir, tmp_path):
    pickle_only = _copy(
        tiny_phi3v_dir, tmp_path / "pickle", skip=("*.safetensors", "model.safetensors.index.json")
    )
    (pickle_only / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="pickle.*convert them to safetensors"):
        Phi3VCheckpoint(pickle_only)

    empty = _copy(tiny_phi3v_dir, tmp_path / "empty", skip=("*.safetensors", "model.safetensors.index.json"))
    with pytest.raises(ModelError, match="no weights in"):
        Phi3VCheckpoint(empty)

    clip = _copy(tiny_phi3v_dir, tmp_path / "clip")
    cfg = json.loads((clip / "config.json").read_text())
    cfg["model_type"] = "clip"
    (clip / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="model_type is 'clip'.*phi3_v"):
        Phi3VCheckpoint(clip)

    with pytest.raises(ModelError, match="not found"):
        Phi3VCheckpoint(tmp_path / "nowhere")

    lost = _copy(tiny_phi3v_dir, tmp_path / "lost_shard")
    (lost / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelError, match="shard .*model-00002-of-00002.safetensors.* is missing"):
        load_image_embedding(lost)
