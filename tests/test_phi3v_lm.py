"""Phi-3-vision as a whole embedding model: LM wiring, prompt tokenization, pooling, errors.

Everything runs on the tiny random checkpoint of `tiny_phi3v_dir` (real on-disk layout: two shards,
index, config.json with "su" rope scaling, tiny tokenizer).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from bench.embedders.base import RuntimeOptions
from bench.errors import ConfigError, ModelError

torch.set_num_threads(1)

IMAGE_PROMPT = "<|image_1|> Represent the given image."


# ---- helpers ---------------------------------------------------------------------------------------
def _read_all_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, straight from the shards via the index (independent of checkpoint.py)."""
    from safetensors.torch import load_file

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(str(folder / shard)))
    return {k: v.float() for k, v in out.items()}


def _naive_phi3(sd: dict, cfg: dict, embeds: torch.Tensor) -> torch.Tensor:
    """Float64 loop implementation of the reference Phi-3 forward (one sequence, no padding):
    "su" rotary (long factors beyond original_max_position_embeddings, attention scaling
    sqrt(1 + ln(max/orig) / ln(orig))), eager causal attention, SiLU-gated MLP, RMSNorm."""
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = H // nh
    eps = cfg["rms_norm_eps"]
    T = embeds.shape[0]
    orig, maxp = cfg["original_max_position_embeddings"], cfg["max_position_embeddings"]
    rs = cfg["rope_scaling"]
    factors = torch.tensor(rs["long_factor"] if T > orig else rs["short_factor"], dtype=torch.float64)
    inv = 1.0 / (factors * cfg.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    scale = maxp / orig
    att = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos() * att, torch.cat([ang, ang], -1).sin() * att

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    def rot(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def w(k):
        return sd[k].double()

    x = embeds.double()
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms(x, w(p + "input_layernorm.weight"))
        q, k, v = (h @ w(p + "self_attn.qkv_proj.weight").T).split([nh * hd, nkv * hd, nkv * hd], -1)
        q = rot(q.view(T, nh, hd).transpose(0, 1))
        k = rot(k.view(T, nkv, hd).transpose(0, 1)).repeat_interleave(nh // nkv, 0)
        v = v.view(T, nkv, hd).transpose(0, 1).repeat_interleave(nh // nkv, 0)
        out = torch.zeros(nh, T, hd, dtype=torch.float64)
        for t in range(T):  # query t attends to keys 0..t
            s = (k[:, : t + 1] @ q[:, t, :, None]).squeeze(-1) / math.sqrt(hd)
            out[:, t] = (s.softmax(-1)[..., None] * v[:, : t + 1]).sum(1)
        x = x + out.transpose(0, 1).reshape(T, nh * hd) @ w(p + "self_attn.o_proj.weight").T
        h = rms(x, w(p + "post_attention_layernorm.weight"))
        gate, up = (h @ w(p + "mlp.gate_up_proj.weight").T).chunk(2, -1)
        x = x + (up * torch.nn.functional.silu(gate)) @ w(p + "mlp.down_proj.weight").T
    return rms(x, w("model.norm.weight"))


def _image(w: int, h: int, seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _copy_ckpt(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    """Copy a checkpoint folder (shards symlinked: the tests only rewrite small text files)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name in skip or not f.is_file():
            continue
        if f.suffix == ".safetensors":
            (dst / f.name).symlink_to(f)
        else:
            shutil.copy(f, dst / f.name)
    return dst


# ---- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cfg(tiny_phi3v_dir) -> dict:
    return json.loads((tiny_phi3v_dir / "config.json").read_text())


@pytest.fixture(scope="module")
def tensors(tiny_phi3v_dir):
    return _read_all_tensors(tiny_phi3v_dir)


@pytest.fixture(scope="module")
def lm(tiny_phi3v_dir):
    from bench.models.phi3v.lm import load_phi3v_lm

    return load_phi3v_lm(str(tiny_phi3v_dir))


@pytest.fixture(scope="module")
def embedder(tiny_phi3v_dir):
    from bench.embedders.phi3v_lm import Phi3VLMEmbedder

    return Phi3VLMEmbedder(str(tiny_phi3v_dir), num_crops=2, runtime=RuntimeOptions(batch_size=8))


@pytest.fixture(scope="module")
def tokenizer(tiny_phi3v_dir):
    from bench.models.phi3v.tokenizer import load_tokenizer

    return load_tokenizer(tiny_phi3v_dir)


# ---- configuration -----------------------------------------------------------------------------------
def test_config_maps_su_rope_to_longrope(cfg, lm):
    from bench.models.phi3v.lm import phi3_config_from_dict

    assert cfg["rope_scaling"]["type"] == "su"
    c = phi3_config_from_dict(cfg)
    rope = c.rope_parameters
    assert rope["rope_type"] == "longrope"
    assert rope["short_factor"] == cfg["rope_scaling"]["short_factor"]
    assert rope["long_factor"] == cfg["rope_scaling"]["long_factor"]
    assert rope["original_max_position_embeddings"] == cfg["original_max_position_embeddings"]
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size) == (
        cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"])
    assert c.tie_word_embeddings is False
    ratio = cfg["max_position_embeddings"] / cfg["original_max_position_embeddings"]
    expected = math.sqrt(1 + math.log(ratio) / math.log(cfg["original_max_position_embeddings"]))
    assert lm.model.rotary_emb.attention_scaling == pytest.approx(expected, rel=1e-12)
    # "longrope" (Phi-3.5) is the same thing under its new name.
    c2 = phi3_config_from_dict({**cfg, "rope_scaling": {**cfg["rope_scaling"], "type": "longrope"}})
    assert c2.rope_parameters == rope


def test_config_errors(cfg):
    from bench.models.phi3v.lm import phi3_config_from_dict

    with pytest.raises(ModelError, match="rope_scaling type 'yarn'"):
        phi3_config_from_dict({**cfg, "rope_scaling": {**cfg["rope_scaling"], "type": "yarn"}})
    with pytest.raises(ModelError, match="short_factor"):
        phi3_config_from_dict({**cfg, "rope_scaling": {**cfg["rope_scaling"], "short_factor": [1.0]}})
    with pytest.raises(ModelError, match="intermediate_size"):
        phi3_config_from_dict({k: v for k, v in cfg.items() if k != "intermediate_size"})


# ---- language-model wiring ---------------------------------------------------------------------------
def _lengths(cfg):
    orig = cfg["original_max_position_embeddings"]
    return (min(20, orig - 4), orig + 12)  # shorter and longer than original_max_position_embeddings


def test_lm_matches_transformers_phi3_for_causal_lm(cfg, lm, tensors):
    from transformers import Phi3ForCausalLM

    from bench.models.phi3v.lm import phi3_config_from_dict

    ref = Phi3ForCausalLM(phi3_config_from_dict(cfg)).eval()
    lm_tensors = {k: v for k, v in tensors.items() if not k.startswith("model.vision_embed_tokens.")}
    ref.load_state_dict(lm_tensors, strict=True)
    gen = torch.Generator().manual_seed(0)
    for length in _lengths(cfg):
        ids = torch.randint(3, cfg["vocab_size"], (2, length), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, length - 7:] = 0  # a right-padded row
        embeds = ref.model.embed_tokens(ids)
        with torch.no_grad():
            ours = lm.forward_embed(ids, mask)
            theirs = ref.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        assert ours.shape == (2, length, cfg["hidden_size"])
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_lm_with_image_matches_transformers(cfg, lm, tensors, embedder):
    """Image placeholders filled by the image embedding, then the same inputs_embeds into Phi3ForCausalLM."""
    from transformers import Phi3ForCausalLM

    from bench.models.phi3v.lm import phi3_config_from_dict
    from bench.models.phi3v.tokenizer import build_inputs

    ref = Phi3ForCausalLM(phi3_config_from_dict(cfg)).eval()
    ref.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("model.vision_embed_tokens.")})
    batch = embedder.collate([embedder.preprocess(_image(300, 200, 1))])
    ids, mask = build_inputs(embedder.tokenizer, [IMAGE_PROMPT], batch["num_img_tokens"])
    assert int((ids == -1).sum()) == batch["num_img_tokens"][0]
    ids_before = ids.clone()
    with torch.no_grad():
        ours = lm.forward_embed(ids, mask, batch["pixel_values"], batch["image_sizes"])
        embeds = lm.input_embeddings(ids, batch["pixel_values"], batch["image_sizes"])
        theirs = ref.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    assert torch.equal(ids, ids_before)  # placeholders are not overwritten in the caller's tensor
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # Text positions hold the token embeddings, image positions something else.
    text_pos = ids[0] >= 0
    torch.testing.assert_close(embeds[0, text_pos], tensors["model.embed_tokens.weight"][ids[0, text_pos]])
    assert not torch.allclose(embeds[0, ~text_pos], tensors["model.embed_tokens.weight"][0].expand(
        int((~text_pos).sum()), -1))


def test_lm_matches_independent_float64_reference(cfg, lm, tensors):
    """A from-scratch float64 Phi-3 ("su" rope) agrees: checks the config mapping, not only the loading."""
    gen = torch.Generator().manual_seed(1)
    for length in _lengths(cfg):
        ids = torch.randint(3, cfg["vocab_size"], (1, length), generator=gen)
        with torch.no_grad():
            ours = lm.forward_embed(ids, torch.ones_like(ids))[0]
        ref = _naive_phi3(tensors, cfg, tensors["model.embed_tokens.weight"][ids[0]])
        torch.testing.assert_close(ours.double(), ref, atol=2e-5, rtol=1e-5)
    # The check has teeth: short factors on the long sequence give a clearly different answer.
    wrong = {**cfg, "rope_scaling": {**cfg["rope_scaling"], "long_factor": cfg["rope_scaling"]["short_factor"]}}
    assert cfg["rope_scaling"]["long_factor"] != cfg["rope_scaling"]["short_factor"]
    ref_wrong = _naive_phi3(tensors, wrong, tensors["model.embed_tokens.weight"][ids[0]])
    assert (ours.double() - ref_wrong).abs().max() > 1e-3


def test_loading_reads_each_lm_tensor_once_and_never_lm_head(tiny_phi3v_dir):
    from bench.models.phi3v.checkpoint import Phi3VCheckpoint
    from bench.models.phi3v.lm import load_phi3v_lm

    ckpt = Phi3VCheckpoint(str(tiny_phi3v_dir))
    requested: list[str] = []
    real_read = ckpt.read

    def spy(keys, dtype=None):
        out = real_read(keys, dtype=dtype)
        requested.extend(out)
        return out

    ckpt.read = spy
    model = load_phi3v_lm(ckpt, dtype=torch.bfloat16)
    lm_names = [k for k in requested if not k.startswith("model.vision_embed_tokens.")]
    assert not any(k.startswith("lm_head") for k in requested)
    assert len(lm_names) == len(set(lm_names)) == len(model.model.state_dict())
    assert all(p.dtype == torch.bfloat16 for p in model.model.parameters())
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    # The image embedding looks tokens up in the LM's own table (tied, not a copy).
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16


# ---- tokenization ------------------------------------------------------------------------------------
def test_image_prompt_tokenization_token_for_token(tokenizer):
    from bench.models.phi3v.tokenizer import build_inputs

    vocab = tokenizer.get_vocab()
    bos = tokenizer.bos_token_id
    assert bos == vocab["<s>"]
    n = 37
    ids, mask = build_inputs(tokenizer, [IMAGE_PROMPT], [n])
    tail = tokenizer(" Represent the given image.", add_special_tokens=False)["input_ids"]
    by_hand = [vocab["\u2581represent"], vocab["\u2581the"], vocab["\u2581given"], vocab["\u2581image"], vocab["."]]
    assert tail == by_hand
    assert ids[0].tolist() == [bos] + [-1] * n + [bos] + by_hand
    assert mask[0].tolist() == [1] * (n + 7)


def test_text_and_multi_image_tokenization(tokenizer):
    from bench.models.phi3v.tokenizer import build_inputs

    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    assert pad == tokenizer.convert_tokens_to_ids("<|endoftext|>") and pad != bos
    text = "Find me an everyday image that matches the given caption: a red circle"
    # Text only: whole prompt with BOS and no EOS, as the tokenizer's own template adds it.
    ids, mask = build_inputs(tokenizer, [text, "a red"], None)
    own = tokenizer(text)["input_ids"]
    assert own[0] == bos and own[-1] != tokenizer.eos_token_id
    assert ids[0].tolist() == own
    short = tokenizer("a red")["input_ids"]
    assert ids[1].tolist() == short + [pad] * (len(own) - len(short))  # right padding with the pad id
    assert mask[1].tolist() == [1] * len(short) + [0] * (len(own) - len(short))
    # Two images: every chunk (the empty one before the first tag too) gets its own BOS.
    ids, _ = build_inputs(tokenizer, ["<|image_1|>a<|image_2|> red"], [[3, 2]])
    a = tokenizer("a", add_special_tokens=False)["input_ids"]
    red = tokenizer(" red", add_special_tokens=False)["input_ids"]
    assert ids[0].tolist() == [bos, -1, -1, -1, bos, *a, -2, -2, bos, *red]


def test_prompt_errors(tokenizer, tiny_phi3v_dir):
    from bench.embedders.phi3v_lm import Phi3VLMEmbedder
    from bench.models.phi3v.tokenizer import build_inputs

    with pytest.raises(ConfigError, match="without gaps"):
        build_inputs(tokenizer, ["<|image_2|> x"], [[5]])
    with pytest.raises(ConfigError, match="2 image tag"):
        build_inputs(tokenizer, ["<|image_1|> x <|image_2|>"], [5])
    with pytest.raises(ConfigError, match="vlm2vec"):
        Phi3VLMEmbedder(str(tiny_phi3v_dir), template="vlm2vek")
    with pytest.raises(ConfigError, match="<\\|image_1\\|>"):
        Phi3VLMEmbedder(str(tiny_phi3v_dir), image_prompt="Represent the given image.")
    with pytest.raises(ConfigError, match="\\{text\\}"):
        Phi3VLMEmbedder(str(tiny_phi3v_dir), text_prompt="a caption")
    with pytest.raises(ConfigError, match="float16 needs a CUDA"):
        Phi3VLMEmbedder(str(tiny_phi3v_dir), runtime=RuntimeOptions(dtype="float16"))


def test_tiny_tokenizer_respects_vocab_size(tmp_path):
    from bench.demo.tiny_tokenizer import write_tiny_tokenizer
    from bench.models.phi3v.tokenizer import load_tokenizer

    n = write_tiny_tokenizer(tmp_path / "a", ["red", "green", "blue"], vocab_size=30)
    tok = load_tokenizer(tmp_path / "a")
    assert n == 30 and max(tok.get_vocab().values()) == 29
    with pytest.raises(ModelError, match="too small"):
        write_tiny_tokenizer(tmp_path / "b", ["red"], vocab_size=5)


# ---- the embedder --------------------------------------------------------------------------------------
def test_text_embedding_is_last_token_state(embedder, lm):
    """embed_texts == the final hidden state at the prompt's last token, normalized (computed by hand)."""
    text = "a red circle on the left"
    prompt = embedder.text_prompt.replace("{text}", text)
    ids = [embedder.tokenizer.bos_token_id] + embedder.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids])
    with torch.no_grad():
        hidden = lm.forward_embed(ids, torch.ones_like(ids))[0]
    by_hand = hidden[-1] / hidden[-1].norm()
    vec = embedder.embed_texts([text])
    assert vec.shape == (1, embedder.dim) and vec.dtype == torch.float32
    torch.testing.assert_close(vec[0], by_hand, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(vec[0], hidden[-2] / hidden[-2].norm(), atol=1e-3)


def test_batch_equals_one_at_a_time(embedder, cfg):
    long_text = " ".join(["red circle"] * cfg["original_max_position_embeddings"])  # > original_max tokens
    texts = ["a red circle", "two blue squares on the left of a large green triangle", long_text, "star"]
    batch = embedder.embed_texts(texts)
    single = torch.cat([embedder.embed_texts([t]) for t in texts])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batch.norm(dim=1), torch.ones(len(texts)))
    assert (batch @ batch.T).fill_diagonal_(0).abs().max() < 0.9999  # distinct texts, distinct vectors

    images = [_image(400, 200, 2), _image(200, 300, 3), _image(100, 100, 4)]
    items = [embedder.preprocess(im) for im in images]
    assert len({it["num_img_tokens"] for it in items}) > 1  # different lengths in one batch
    together = embedder.embed_image_batch(embedder.collate(items))
    alone = torch.cat([embedder.embed_image_batch(embedder.collate([it])) for it in items])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.norm(dim=1), torch.ones(3))


def test_fingerprint_and_describe(embedder, tiny_phi3v_dir, cfg):
    from bench.embedders.phi3v_lm import TEMPLATES, Phi3VLMEmbedder

    fp = embedder.fingerprint()
    assert fp["num_crops"] == 2 and fp["image_prompt"] == TEMPLATES["vlm2vec"]["image"]
    assert fp["dtype"] == "float32" and len(fp["model_hash"]) == 64
    json.dumps(fp)
    e5v = Phi3VLMEmbedder(str(tiny_phi3v_dir), num_crops=2, template="e5v")
    assert e5v.fingerprint()["text_prompt"] == TEMPLATES["e5v"]["text"]
    assert e5v.fingerprint() != fp
    assert embedder.dim == cfg["hidden_size"]
    info = embedder.describe()
    assert info["layers"] == cfg["num_hidden_layers"] and info["num_crops"] == 2
    assert info["params_language_model"] == sum(p.numel() for p in embedder.model.model.parameters())
    assert embedder.supports_text and embedder.kind == "phi3v-lm"


def test_bfloat16_close_to_float32(embedder, tiny_phi3v_dir):
    from bench.embedders.phi3v_lm import Phi3VLMEmbedder

    bf = Phi3VLMEmbedder(str(tiny_phi3v_dir), num_crops=2, runtime=RuntimeOptions(dtype="bfloat16"))
    assert next(bf.model.model.parameters()).dtype == torch.bfloat16
    texts = ["a red circle", "a blue star on a white background"]
    a, b = embedder.embed_texts(texts), bf.embed_texts(texts)
    assert b.dtype == torch.float32
    assert float((a * b).sum(1).min()) > 0.98


# ---- errors --------------------------------------------------------------------------------------------
def test_missing_tokenizer_is_a_clear_error(tiny_phi3v_dir, tmp_path):
    from bench.embedders.phi3v_lm import Phi3VLMEmbedder

    folder = _copy_ckpt(tiny_phi3v_dir, tmp_path / "no_tok",
                        skip=("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                              "special_tokens_map.json"))
    with pytest.raises(ModelError, match="no tokenizer in .*no_tok.*tokenizer.json"):
        Phi3VLMEmbedder(str(folder))


def test_mismatched_checkpoint_is_a_clear_error(tiny_phi3v_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    from bench.models.phi3v.lm import load_phi3v_lm

    # Wrong shape: config.json says a different intermediate_size than the weights have.
    folder = _copy_ckpt(tiny_phi3v_dir, tmp_path / "shape")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] += 8
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"shape does not match.*model\.layers\.0\.mlp\.down_proj\.weight"):
        load_phi3v_lm(str(folder))

    # Missing tensor: one LM key dropped from its shard and from the index.
    folder = _copy_ckpt(tiny_phi3v_dir, tmp_path / "missing")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    victim = "model.layers.0.post_attention_layernorm.weight"
    shard = index["weight_map"].pop(victim)
    tensors = load_file(str(folder / shard))
    del tensors[victim]
    (folder / shard).unlink()
    save_file(tensors, str(folder / shard), metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match=f"missing tensors: {victim}"):
        load_phi3v_lm(str(folder))
