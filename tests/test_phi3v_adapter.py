"""peft LoRA / rsLoRA / DoRA adapters merged by bench (bench.models.phi3v.adapter) against peft itself.

The reference is peft's UNMERGED forward: `get_peft_model(causal_lm_view(model), ...)` injects its
layers into bench's native modules, so the very embedder that ran the base model runs peft's adapter.
lora_B (zero at init) and the DoRA magnitudes are set to random values before saving, so a merge that
dropped a term, used the wrong scaling or the wrong norm axis could not pass.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.embedders.base import RuntimeOptions
from bench.errors import ModelError

torch.set_num_threads(1)

VLM2VEC_TARGETS = [
    "qkv_proj",
    "o_proj",
    "gate_up_proj",
    "down_proj",
    "k_proj",
    "q_proj",
    "out_proj",
    "v_proj",
]
TEXTS = ["a red square", "two blue circles on a green field", "x"]


def _images():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        for w, h in [(80, 60), (50, 90)]
    ]


def _embed(emb, texts=True):
    batch = emb.collate([emb.preprocess(im) for im in _images()])
    img = emb.embed_image_batch(batch).float()
    return (img, emb.embed_texts(TEXTS).float()) if texts else img


def _lm(tiny, adapter=None, dtype="float32", **kw):
    from bench.embedders.phi3v_lm import Phi3VLMEmbedder

    return Phi3VLMEmbedder(
        str(tiny),
        num_crops=2,
        adapter=adapter and str(adapter),
        **kw,
        runtime=RuntimeOptions(batch_size=4, dtype=dtype),
    )


def make_adapter(model, out: Path, seed: int = 1, **lora) -> Path:
    """peft adapter on `model`'s published-name view, B and magnitudes perturbed, saved (peft stays
    injected into `model`)."""
    from peft import LoraConfig, get_peft_model

    from bench.models.phi3v.layout import causal_lm_view

    target = model if hasattr(model, "model") and hasattr(model, "image_embed") else None
    view = causal_lm_view(target) if target is not None else causal_lm_view(image_embed=model)
    lora = {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": VLM2VEC_TARGETS,
        "init_lora_weights": "gaussian",
        **lora,
    }
    peft_model = get_peft_model(view, LoraConfig(**lora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.5 * torch.rand(p.shape, generator=gen))
    peft_model.eval()
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def base(tiny_phi3v_dir):
    emb = _lm(tiny_phi3v_dir)
    return emb, _embed(emb)


@pytest.mark.parametrize("kind", ["lora", "rslora", "dora", "patterns"])
def test_merged_adapter_equals_unmerged_peft(tiny_phi3v_dir, tmp_path, base, kind):
    ref_emb = _lm(tiny_phi3v_dir)
    settings = {
        "lora": {},
        "rslora": {"use_rslora": True, "r": 8, "lora_alpha": 4},
        "dora": {"use_dora": True},
        # per-module rank and alpha, and a regex string for target_modules
        "patterns": {"use_dora": True, "rank_pattern": {"qkv_proj": 2, r"layers\.1\.mlp\.down_proj": 6},
                     "alpha_pattern": {"gate_up_proj": 20},
                     "target_modules": r".*\.(qkv_proj|o_proj|gate_up_proj|down_proj|[qkv]_proj|out_proj)"},
    }[kind]
    folder = make_adapter(ref_emb.model, tmp_path / kind, **settings)
    ref = _embed(ref_emb)  # peft's layers, unmerged, inside the native model
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert saved["use_dora"] is (kind in ("dora", "patterns"))
    merged = _lm(tiny_phi3v_dir, adapter=folder)
    got = _embed(merged)
    for g, r, b in zip(got, ref, base[1]):
        assert (g - r).abs().max() < 1e-5
        assert (g - b).abs().max() > 1e-2  # the adapter changes the vectors: the comparison can fail
    info = merged.describe()["adapter"]
    n_lm = 2 * 4  # 2 layers x qkv, o, gate_up, down
    n_vision = 3 * 4  # 3 tower layers x q, k, v, out (incl. the last layer, never read)
    assert info["modules_merged"] == {"language_model": n_lm, "vision": n_vision}
    assert info["kind"].startswith("DoRA" if saved["use_dora"] else "LoRA")
    assert ("rsLoRA" in info["kind"]) is (kind == "rslora")


def test_vision_only_adapter_on_phi3v_embedder(tiny_phi3v_dir, tmp_path):
    from bench.embedders.phi3v import Phi3VImageEmbedder

    rt = RuntimeOptions(batch_size=4)
    base = Phi3VImageEmbedder(str(tiny_phi3v_dir), num_crops=2, runtime=rt)
    base_vecs = _embed(base, texts=False)
    ref = Phi3VImageEmbedder(str(tiny_phi3v_dir), num_crops=2, runtime=rt)
    # the tower's last layer included: Phi-3-V never reads it, the adapter must still load
    folder = make_adapter(
        ref.module,
        tmp_path / "vis",
        target_modules=r".*encoder\.layers\.\d+\.self_attn\.(q|v)_proj",
        use_dora=True,
    )
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert isinstance(saved["target_modules"], str)
    ref_vecs = _embed(ref, texts=False)
    got = Phi3VImageEmbedder(str(tiny_phi3v_dir), num_crops=2, adapter=str(folder), runtime=rt)
    vecs = _embed(got, texts=False)
    assert (vecs - ref_vecs).abs().max() < 1e-5
    assert (vecs - base_vecs).abs().max() > 1e-2
    assert got.describe()["adapter"]["modules_merged"] == {"vision": 6}
    assert got.fingerprint() != base.fingerprint()


def test_full_adapter_on_phi3v_skips_language_model(tiny_phi3v_dir, tmp_path, base):
    from bench.embedders.phi3v import Phi3VImageEmbedder

    folder = make_adapter(_lm(tiny_phi3v_dir).model, tmp_path / "all", use_dora=True)
    emb = Phi3VImageEmbedder(str(tiny_phi3v_dir), num_crops=2, adapter=str(folder))
    info = emb.describe()["adapter"]
    assert info["modules_merged"] == {"vision": 12} and info["modules_ignored"] == {"language_model": 8}
    last = emb.module.vision_model.encoder.layers[-1].self_attn.q_proj.weight
    plain = Phi3VImageEmbedder(str(tiny_phi3v_dir), num_crops=2)
    assert (last - plain.module.vision_model.encoder.layers[-1].self_attn.q_proj.weight).abs().max() > 1e-3
    lm_only = make_adapter(_lm(tiny_phi3v_dir).model, tmp_path / "lm", target_modules=["qkv_proj"])
    with pytest.raises(ModelError, match="changes nothing .* use phi3v-lm"):
        Phi3VImageEmbedder(str(tiny_phi3v_dir), adapter=str(lm_only))


def test_bf16_load_merges(tiny_phi3v_dir, tmp_path, base):
    ref_emb = _lm(tiny_phi3v_dir)
    folder = make_adapter(ref_emb.model, tmp_path / "d", use_dora=True)
    ref = _embed(ref_emb)
    emb = _lm(tiny_phi3v_dir, adapter=folder, dtype="bfloat16")
    assert emb.model.dtype == torch.bfloat16
    for g, r, b in zip(_embed(emb), ref, base[1]):
        assert (g - r).abs().max() < 0.05
        assert (g - r).abs().max() < (b - r).abs().max() / 3


def test_fingerprints(tiny_phi3v_dir, tmp_path, base):
    a = make_adapter(_lm(tiny_phi3v_dir).model, tmp_path / "a", seed=1)
    b = make_adapter(_lm(tiny_phi3v_dir).model, tmp_path / "b", seed=2)
    fa, fb = _lm(tiny_phi3v_dir, adapter=a).fingerprint(), _lm(tiny_phi3v_dir, adapter=b).fingerprint()
    f0 = base[0].fingerprint()
    assert "adapter" not in f0 and fa != f0 and fb != f0 and fa != fb
    assert fa["model_hash"] == f0["model_hash"]


# ---- refusals -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dora_dir(tiny_phi3v_dir, tmp_path_factory):
    return make_adapter(_lm(tiny_phi3v_dir).model, tmp_path_factory.mktemp("ad") / "dora", use_dora=True)


def _variant(src: Path, dst: Path, config: dict | None = None, tensors=None) -> Path:
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    cfg = {**json.loads((src / "adapter_config.json").read_text()), **(config or {})}
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    sd = load_file(str(src / "adapter_model.safetensors"))
    sd = tensors(sd) if tensors else sd
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dst / "adapter_model.safetensors"))
    return dst


def _rename(old: str, new: str):
    return lambda sd: {k.replace(old, new): v for k, v in sd.items()}


REFUSALS = [
    ("peft_type", {"peft_type": "IA3"}, None, "peft_type 'IA3' is not supported"),
    ("lora_bias", {"lora_bias": True}, None, "lora_bias"),
    ("replication", {"layer_replication": [[0, 2]]}, None, "layer replication"),
    ("params", {"target_parameters": ["mlp.experts"]}, None, "target_parameters"),
    ("tokens", {"trainable_token_indices": [3]}, None, "trainable token"),
    ("pissa", {"init_lora_weights": "pissa_niter_4"}, None, "rewrote the base weights"),
    ("no_match", {"target_modules": ["nonexistent_proj"]}, None, "match no module"),
    (
        "bias",
        {"bias": "all"},
        lambda sd: {**sd, "base_model.model.model.layers.0.mlp.down_proj.bias": torch.zeros(64)},
        "trained bias",
    ),
    (
        "save",
        {"modules_to_save": ["lm_head"]},
        lambda sd: {**sd, "base_model.model.lm_head.modules_to_save.weight": torch.zeros(3, 3)},
        "modules_to_save",
    ),
    (
        "emb",
        None,
        lambda sd: {**sd, "base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(4, 512)},
        "Embedding",
    ),
    ("other_model", None, _rename("model.layers.1.", "model.layers.7."), "do not exist in the model"),
    (
        "shape",
        None,
        lambda sd: {
            k: (v[:, :32] if k.endswith("layers.0.mlp.down_proj.lora_A.weight") else v) for k, v in sd.items()
        },
        r"down_proj.lora_A.weight has shape \(4, 32\)",
    ),
    ("dora_flag", {"use_dora": False}, None, "use_dora is false but"),
    (
        "conv",
        {"target_modules": ["patch_embedding", "qkv_proj"]},
        lambda sd: {
            **sd,
            "base_model.model.model.vision_embed_tokens.img_processor.vision_model.embeddings."
            "patch_embedding.lora_A.weight": torch.zeros(4, 3, 14, 14),
            "base_model.model.model.vision_embed_tokens.img_processor.vision_model.embeddings."
            "patch_embedding.lora_B.weight": torch.zeros(32, 4, 1, 1),
            "base_model.model.model.vision_embed_tokens.img_processor.vision_model.embeddings."
            "patch_embedding.lora_magnitude_vector": torch.ones(32),
        },
        "convolution",
    ),
]


@pytest.mark.parametrize("name,config,tensors,message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_are_one_clear_error(tiny_phi3v_dir, dora_dir, tmp_path, name, config, tensors, message):
    folder = _variant(dora_dir, tmp_path / name, config, tensors)
    with pytest.raises(ModelError, match=message) as info:
        _lm(tiny_phi3v_dir, adapter=folder)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


def test_pickle_only_and_missing(tiny_phi3v_dir, dora_dir, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(dora_dir / "adapter_config.json", folder)
    (folder / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(ModelError, match=r"only pickle weights \(adapter_model.bin\).*weights_only=True"):
        _lm(tiny_phi3v_dir, adapter=folder)
    with pytest.raises(ModelError, match="not found"):
        _lm(tiny_phi3v_dir, adapter=tmp_path / "nowhere")


def test_cli_embed_with_adapter(tiny_phi3v_dir, dora_dir, tmp_path):
    from safetensors import safe_open

    images = tmp_path / "imgs"
    images.mkdir()
    for i, im in enumerate(_images()):
        im.save(images / f"{i}.png")
    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    out = tmp_path / "e.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "embed",
        "phi3v-lm",
        "--model",
        str(tiny_phi3v_dir),
        "--images",
        str(images),
        "--texts",
        str(tmp_path / "t.txt"),
        "--output",
        str(out),
        "--num-crops",
        "2",
        "--adapter",
    ]
    done = subprocess.run([*cmd, str(dora_dir)], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["fingerprint"])["adapter"]["kind"] == "DoRA"
        vec = f.get_tensor("text:0")
    direct = _lm(tiny_phi3v_dir, adapter=dora_dir).embed_texts(TEXTS[:1])[0]
    assert (vec - direct).abs().max() < 1e-5
    bad = _variant(dora_dir, tmp_path / "bad", {"peft_type": "LOHA"})
    done = subprocess.run([*cmd, str(bad)], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "peft_type 'LOHA' is not supported" in lines[0]


# ---- VLM2Vec-Full layout ------------------------------------------------------------------------------
def test_vlm2vec_full_layout_loads_and_embeds(tiny_phi3v_dir, tmp_path, base):
    from safetensors.torch import load_file, save_file

    from bench.demo.tiny_vlm2vec import make_tiny_vlm2vec_full
    from bench.embedders.phi3v import Phi3VImageEmbedder

    full = make_tiny_vlm2vec_full(tmp_path / "full", tiny_phi3v_dir)
    index = json.loads((full / "model.safetensors.index.json").read_text())["weight_map"]
    assert "lm_head.weight" in index and len(set(index.values())) == 2
    assert json.loads((full / "config.json").read_text())["torch_dtype"] == "bfloat16"
    # the same values in bench's other layout: one float32 model.safetensors, no index, no VLM2Vec keys
    same = tmp_path / "same"
    same.mkdir()
    tensors = {}
    for shard in sorted(set(index.values())):
        tensors.update(load_file(str(full / shard)))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    save_file({k: v.float() for k, v in tensors.items()}, str(same / "model.safetensors"))
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        shutil.copy(tiny_phi3v_dir / name, same / name)
    got, ref = _embed(_lm(full)), _embed(_lm(same))
    for g, r, b in zip(got, ref, base[1]):
        assert (g - r).abs().max() < 1e-6
        assert (g - b).abs().max() > 1e-3  # the "fine-tuned" weights are not the base's
    image = Phi3VImageEmbedder(str(full))
    assert image.num_crops == 16  # VLM2Vec's processor file; VLM2Vec itself evaluates with num_crops 4
    vecs = _embed(Phi3VImageEmbedder(str(full), num_crops=2), texts=False)
    assert vecs.shape == (2, 64) and torch.isfinite(vecs).all()


def test_hub_id_from_local_cache_with_revision(tiny_phi3v_dir, dora_dir, tmp_path, monkeypatch):
    from bench.models.phi3v.adapter import load_adapter

    cache = tmp_path / "hub"
    repo = cache / "models--TIGER-Lab--VLM2Vec-LoRA"
    sha = "a" * 40
    shutil.copytree(dora_dir, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    adapter = load_adapter("TIGER-Lab/VLM2Vec-LoRA")
    assert adapter.folder == (repo / "snapshots" / sha).resolve() and adapter.kind == "DoRA"
    assert load_adapter("TIGER-Lab/VLM2Vec-LoRA", revision=sha).file_hash == adapter.file_hash
    with pytest.raises(ModelError, match="v9"):
        load_adapter("TIGER-Lab/VLM2Vec-LoRA", revision="v9")


def test_validate_names_a_missing_adapter(tmp_path, tiny_phi3v_dir, synthetic_dir):
    """`bench validate` checks the adapter folder before any run, in one line naming the key."""
    import yaml

    data = {"type": "coco_karpathy", "annotations": str(synthetic_dir / "dataset_coco.json"),
            "images": str(synthetic_dir / "images"), "split": "test"}
    cfg = {"name": "v", "datasets": {"d": data},
           "embedders": [{"type": "phi3v-lm", "model": str(tiny_phi3v_dir), "adapter": str(tmp_path / "nope")}],
           "tasks": [{"type": "retrieval", "dataset": "d"}]}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "bench", "validate", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "embedders[0].adapter" in r.stderr and "nope" in r.stderr
    (tmp_path / "nope").mkdir()
    (tmp_path / "nope" / "adapter_config.json").write_text("{}")
    r = subprocess.run([sys.executable, "-m", "bench", "validate", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
