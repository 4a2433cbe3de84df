"""CLIP embedder, preprocessing, tiny checkpoint generator and offline hub resolution."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.embedders.base import RuntimeOptions
from bench.errors import ConfigError, ModelError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from bench.embedders.clip import ClipEmbedder  # noqa: E402
from bench.models.hub import hash_model_files, resolve_model_dir  # noqa: E402
from bench.models.preprocess import (  # noqa: E402
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    clip_preprocess,
    load_clip_preprocess,
)
from bench.demo.tiny_clip import STAMP, make_tiny_clip  # noqa: E402

TEXTS = ["a photo of a red circle", "two blue squares", "a", "zebra crossing!!",
         "a small green triangle on the left", "",
         "the big yellow star in the center of a dark background " * 3]


def _noise_image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


_SIZES = [(50, 70), (70, 50), (33, 33), (17, 101), (64, 48), (120, 90), (40, 41)]
IMAGES = [_noise_image(h, w, seed=i) for i, (h, w) in enumerate(_SIZES)]


@pytest.fixture(scope="module")
def emb(tiny_clip_dir):
    return ClipEmbedder(str(tiny_clip_dir))


@pytest.fixture(scope="module")
def reference_model(tiny_clip_dir):
    """The same checkpoint loaded plainly by transformers, eager attention: the independent route."""
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(tiny_clip_dir, attn_implementation="eager").eval()


# ---- embedder ---------------------------------------------------------------------------------
def test_shapes_norms_and_dim(emb):
    assert emb.kind == "clip" and emb.supports_text and emb.dim == 24
    imgs = emb.embed_image_batch(emb.collate([emb.preprocess(im) for im in IMAGES]))
    txts = emb.embed_texts(TEXTS)
    assert imgs.shape == (len(IMAGES), 24) and txts.shape == (len(TEXTS), 24)
    assert imgs.dtype == txts.dtype == torch.float32 and imgs.device.type == "cpu"
    torch.testing.assert_close(imgs.norm(dim=1), torch.ones(len(IMAGES)), atol=1e-6, rtol=0)
    torch.testing.assert_close(txts.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-6, rtol=0)
    assert emb.embed_texts([]).shape == (0, 24)
    # distinct inputs give distinct vectors (a constant output would pass the checks above)
    assert torch.cdist(imgs, imgs).fill_diagonal_(1).min() > 1e-3


def test_batch_size_does_not_change_vectors(emb, tiny_clip_dir):
    items = [emb.preprocess(im) for im in IMAGES]
    one_by_one = torch.cat([emb.embed_image_batch(emb.collate([x])) for x in items])
    all_at_once = emb.embed_image_batch(emb.collate(items))
    torch.testing.assert_close(one_by_one, all_at_once, atol=1e-5, rtol=0)

    small = ClipEmbedder(str(tiny_clip_dir), runtime=RuntimeOptions(batch_size=1))  # text batches of 4
    torch.testing.assert_close(small.embed_texts(TEXTS), emb.embed_texts(TEXTS), atol=1e-5, rtol=0)


def test_image_embeddings_match_transformers(emb, reference_model, tiny_clip_dir):
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil.from_pretrained(tiny_clip_dir)
    pixels = proc(images=IMAGES, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = reference_model.get_image_features(pixel_values=pixels).pooler_output
    ref = ref / ref.norm(dim=1, keepdim=True)
    ours = emb.embed_image_batch(emb.collate([emb.preprocess(im) for im in IMAGES]))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_text_embeddings_match_transformers_one_at_a_time(emb, reference_model, tiny_clip_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_clip_dir)
    refs = []
    for text in TEXTS:  # no padding at all: the batched, padded route must agree
        ids = tok(text, return_tensors="pt")["input_ids"]
        assert ids[0, 0] == tok.bos_token_id and ids[0, -1] == tok.eos_token_id
        with torch.no_grad():
            v = reference_model.get_text_features(input_ids=ids).pooler_output[0]
        refs.append(v / v.norm())
    torch.testing.assert_close(emb.embed_texts(TEXTS), torch.stack(refs), atol=1e-5, rtol=0)


def test_long_text_is_truncated_not_an_error(emb):
    v = emb.embed_texts(["red " * 500])
    assert v.shape == (1, 24) and torch.isfinite(v).all()


def test_fingerprint_and_describe(emb, tiny_clip_dir):
    fp = emb.fingerprint()
    assert fp["kind"] == "clip" and fp["dtype"] == "float32" and fp["revision"] is None
    assert fp["model_hash"] == hash_model_files(tiny_clip_dir)
    assert fp["preprocess"] == {"size": 32, "crop": [32, 32], "mean": list(OPENAI_CLIP_MEAN),
                                "std": list(OPENAI_CLIP_STD), "resample": "bicubic",
                                "rescale_factor": 1 / 255}
    json.dumps(fp)  # JSON-able
    d = emb.describe()
    from safetensors import safe_open

    with safe_open(str(tiny_clip_dir / "model.safetensors"), "pt") as f:
        n_params = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    assert d["params"] == n_params
    assert (d["image_size"], d["patch_size"], d["embed_dim"]) == (32, 8, 24)
    assert d["model_dir"] == str(tiny_clip_dir.resolve())


def test_float16_on_cpu_is_a_config_error(tiny_clip_dir):
    with pytest.raises(ConfigError, match="float16.*CUDA"):
        ClipEmbedder(str(tiny_clip_dir), runtime=RuntimeOptions(dtype="float16"))
    with pytest.raises(ConfigError, match="float64"):
        ClipEmbedder(str(tiny_clip_dir), runtime=RuntimeOptions(dtype="float64"))


def test_failing_compiled_forward_falls_back_to_eager(tiny_clip_dir, emb, caplog):
    e = ClipEmbedder(str(tiny_clip_dir))

    def broken(*args):
        raise RuntimeError("inductor: no C compiler")

    e._compiled = {"image": broken, "text": broken}  # what runtime.compile leaves when compiling fails late
    items = emb.collate([emb.preprocess(im) for im in IMAGES[:2]])
    with caplog.at_level("WARNING"):
        assert torch.equal(e.embed_image_batch(items), emb.embed_image_batch(items))
        assert torch.equal(e.embed_texts(TEXTS[:2]), emb.embed_texts(TEXTS[:2]))
    assert "no C compiler" in caplog.text and e._compiled == {}


# ---- broken checkpoints -----------------------------------------------------------------------
def _broken_copy(src: Path, dst: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    sd = load_file(dst / "model.safetensors")
    edit(sd)
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_missing_tensor_is_a_model_error(tiny_clip_dir, tmp_path):
    key = "vision_model.encoder.layers.1.mlp.fc1.weight"
    bad = _broken_copy(tiny_clip_dir, tmp_path / "bad", lambda sd: sd.pop(key))
    with pytest.raises(ModelError, match=f"missing tensors: {key}"):
        ClipEmbedder(str(bad))


def test_wrong_shape_is_a_model_error(tiny_clip_dir, tmp_path):
    def edit(sd):
        sd["visual_projection.weight"] = torch.zeros(24, 16)

    bad = _broken_copy(tiny_clip_dir, tmp_path / "bad", edit)
    expected = r"visual_projection.weight \(checkpoint \(24, 16\) vs config \(24, 32\)\)"
    with pytest.raises(ModelError, match=expected):
        ClipEmbedder(str(bad))


def test_missing_weights_or_wrong_model_type(tiny_clip_dir, tmp_path):
    d = shutil.copytree(tiny_clip_dir, tmp_path / "noweights")
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="no weights in"):
        ClipEmbedder(str(d))
    d = shutil.copytree(tiny_clip_dir, tmp_path / "siglip")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "siglip"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="model_type is 'siglip'"):
        ClipEmbedder(str(d))
    with pytest.raises(ModelError, match="model folder not found: .*nope"):
        ClipEmbedder(str(tmp_path / "nope"))


# ---- preprocessing parity -----------------------------------------------------------------------
@pytest.mark.parametrize("settings", [
    {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}},
    {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}},
    {"size": {"shortest_edge": 24}, "crop_size": {"height": 30, "width": 27}},  # crop > image: zero padding
    {"size": {"height": 28, "width": 36}, "crop_size": {"height": 20, "width": 20}, "resample": 2},
])
def test_preprocess_matches_transformers(settings, tmp_path):
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(**settings)
    proc.save_pretrained(tmp_path)
    ours_settings = load_clip_preprocess(tmp_path)  # read back from preprocessor_config.json
    for im in IMAGES + [_noise_image(224, 300, seed=9), Image.new("L", (45, 30), 77)]:
        ref = proc(images=im.convert("RGB"), return_tensors="np")["pixel_values"][0]
        ref = torch.from_numpy(np.asarray(ref))
        ours = ours_settings(im)
        assert ours.dtype == torch.float32 and ours.shape == ref.shape
        # same operations in the same order: equal to float32 rounding, in practice exactly
        assert (ours - ref).abs().max().item() <= 1e-6


def test_preprocess_by_hand():
    """A 2x4 image, no resize, crop 2x2 -> the middle columns, normalized by hand."""
    arr = np.arange(24, dtype=np.uint8).reshape(2, 4, 3) * 10
    out = clip_preprocess(Image.fromarray(arr), size=None, crop=(2, 2), mean=(0.5, 0.5, 0.5),
                          std=(0.25, 0.5, 1.0))
    expected = (arr[:, 1:3].astype(np.float64) / 255 - 0.5) / np.array([0.25, 0.5, 1.0])
    np.testing.assert_allclose(out.numpy(), expected.transpose(2, 0, 1), atol=1e-6)


def test_legacy_preprocessor_config(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
         "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.1, 0.2, 0.3],
         "image_std": [0.4, 0.5, 0.6], "resample": 3, "size": 256}))
    s = load_clip_preprocess(tmp_path)
    assert (s.size, s.crop, s.mean, s.std) == (256, (224, 224), (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert s.rescale_factor == 1 / 255
    assert clip_preprocess(_noise_image(300, 500), s.size, s.crop, s.mean, s.std).shape == (3, 224, 224)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"longest_edge": 3}}))
    with pytest.raises(ModelError, match="unsupported size"):
        load_clip_preprocess(tmp_path)
    with pytest.raises(ModelError, match="missing .*preprocessor_config.json"):
        load_clip_preprocess(tmp_path / "nowhere")


# ---- tiny checkpoint generator ------------------------------------------------------------------
def test_tiny_clip_is_deterministic_and_cached(tiny_clip_dir, tmp_path):
    from safetensors.torch import load_file

    ref = load_file(tiny_clip_dir / "model.safetensors")
    same = make_tiny_clip(tmp_path / "a", seed=0)
    other = make_tiny_clip(tmp_path / "b", seed=1)
    a, b = load_file(same / "model.safetensors"), load_file(other / "model.safetensors")
    assert a.keys() == ref.keys() == b.keys()
    assert all(torch.equal(a[k], ref[k]) for k in ref)
    assert not torch.equal(a["visual_projection.weight"], b["visual_projection.weight"])
    assert hash_model_files(same) == hash_model_files(tiny_clip_dir) != hash_model_files(other)

    # a complete checkpoint with the same seed is left alone; another seed rewrites it
    mtime = (same / "model.safetensors").stat().st_mtime_ns
    make_tiny_clip(same, seed=0)
    assert (same / "model.safetensors").stat().st_mtime_ns == mtime
    make_tiny_clip(same, seed=1)
    assert torch.equal(load_file(same / "model.safetensors")["visual_projection.weight"],
                       b["visual_projection.weight"])
    assert json.loads((same / STAMP).read_text())["seed"] == 1


def test_tiny_clip_tokenizer_loads_from_vocab_and_merges(tiny_clip_dir, tmp_path):
    from transformers import CLIPTokenizer

    for name in ("vocab.json", "merges.txt"):  # the slow-era files alone must be enough
        shutil.copy(tiny_clip_dir / name, tmp_path / name)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    full = CLIPTokenizer.from_pretrained(tiny_clip_dir)
    text = "A photo of a red circle"
    assert tok(text)["input_ids"] == full(text)["input_ids"]
    # every word of the generator's vocabulary is one token; specials sit at the end as in real CLIP
    from bench.demo.tiny_clip import _default_words

    words = _default_words()
    assert tok.convert_ids_to_tokens(tok(" ".join(words))["input_ids"]) == (
        ["<|startoftext|>"] + [w.lower() + "</w>" for w in words] + ["<|endoftext|>"])
    # an unseen word still tokenizes (byte-level pieces), nothing maps to unknown
    pieces = tok.convert_ids_to_tokens(tok("zyxw")["input_ids"])[1:-1]
    assert "".join(pieces) == "zyxw</w>" and len(pieces) > 1
    cfg = json.loads((tiny_clip_dir / "config.json").read_text())["text_config"]
    assert tok.eos_token_id == cfg["eos_token_id"] == len(tok) - 1 == cfg["vocab_size"] - 1


def test_bpe_words_are_single_tokens_in_the_real_tokenizer():
    """Repeated letter pairs and shared prefixes are the hard cases for a hand-built merge list."""
    from transformers import CLIPTokenizer

    from bench.demo.tiny_clip import build_bpe

    words = ["in", "including", "diamond", "papa", "abab", "banana", "mississippi", "a", "Zebra"]
    vocab, merges = build_bpe(words)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    ids = tok(" ".join(words))["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[1:-1] == [w.lower() + "</w>" for w in words]
    assert all(a + b in vocab for a, b in merges)


# ---- hub resolution and fingerprints --------------------------------------------------------------
SHA = "0123456789abcdef0123456789abcdef01234567"


def _fake_cache(cache: Path, src: Path, repo: str = "org/tiny-clip", sha: str = SHA,
                ref: str | None = "main") -> Path:
    """The real HF cache layout: blobs/<hash> files, snapshots/<sha>/<name> symlinks, refs/<branch>."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / sha
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("."):
            blob = root / "blobs" / f"{f.name}-{sha[:8]}"
            shutil.copy(f, blob)
            (snap / f.name).symlink_to(Path("../../blobs") / blob.name)
    if ref:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(sha)
    return snap


def test_hub_id_resolves_offline_from_cache(tiny_clip_dir, tmp_path, monkeypatch, emb):
    cache = tmp_path / "hub"
    snap = _fake_cache(cache, tiny_clip_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # "org/tiny-clip" must not exist as a relative folder
    assert resolve_model_dir("org/tiny-clip") == snap
    assert resolve_model_dir("org/tiny-clip", revision=SHA) == snap
    assert resolve_model_dir("org/tiny-clip", revision=SHA[:7]) == snap

    from_hub = ClipEmbedder("org/tiny-clip", revision="main")
    assert from_hub.fingerprint()["model_hash"] == emb.fingerprint()["model_hash"]  # symlinks are followed
    assert from_hub.fingerprint()["revision"] == "main"
    items = emb.collate([emb.preprocess(im) for im in IMAGES[:3]])
    assert torch.equal(from_hub.embed_image_batch(items), emb.embed_image_batch(items))

    with pytest.raises(ModelError, match="revision 'v2' of 'org/tiny-clip' is not cached.*cached refs: main"):
        resolve_model_dir("org/tiny-clip", revision="v2")

    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # HF_HOME/hub is the cache too
    assert resolve_model_dir("org/tiny-clip") == snap


def test_hub_not_found_says_where_it_looked_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as e:
        resolve_model_dir("openai/clip-vit-base-patch32")
    msg = str(e.value)
    assert str(tmp_path / "openai" / "clip-vit-base-patch32") in msg  # the local path tried
    assert str(tmp_path / "hub" / "models--openai--clip-vit-base-patch32") in msg  # the cache folder
    assert "huggingface-cli download openai/clip-vit-base-patch32" in msg and "local folder" in msg
    with pytest.raises(ModelError, match="not found offline"):
        ClipEmbedder("openai/clip-vit-base-patch32")


def test_hub_incomplete_snapshot_and_ambiguous_snapshots(tiny_clip_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    snap = _fake_cache(cache, tiny_clip_dir)
    (snap / "config.json").resolve().unlink()  # dangling link = interrupted download
    with pytest.raises(ModelError, match="incomplete: missing config.json"):
        resolve_model_dir("org/tiny-clip")

    _fake_cache(cache, tiny_clip_dir, repo="org/two", sha="a" * 40, ref=None)
    assert resolve_model_dir("org/two") == cache / "models--org--two" / "snapshots" / ("a" * 40)  # only one
    _fake_cache(cache, tiny_clip_dir, repo="org/two", sha="b" * 40, ref=None)
    with pytest.raises(ModelError, match="several cached snapshots"):
        resolve_model_dir("org/two")


def test_local_folder_checks(tiny_clip_dir, tmp_path):
    assert resolve_model_dir(str(tiny_clip_dir)) == tiny_clip_dir.resolve()
    with pytest.raises(ModelError, match="incomplete: missing tokenizer.model"):
        resolve_model_dir(str(tiny_clip_dir), required=("config.json", "tokenizer.model"))
    with pytest.raises(ModelError, match="is a file"):
        resolve_model_dir(str(tiny_clip_dir / "config.json"))


def test_hash_model_files_tracks_content_not_noise(tiny_clip_dir, tmp_path):
    d = shutil.copytree(tiny_clip_dir, tmp_path / "m")
    base = hash_model_files(d)
    (d / "README.md").write_text("docs do not change the vectors")
    (d / ".stamp").write_text("neither do hidden files")
    assert hash_model_files(d) == base

    cfg = (d / "preprocessor_config.json").read_text()
    (d / "preprocessor_config.json").write_text(cfg.replace("0.48145466", "0.48145467"))
    assert hash_model_files(d) != base
    (d / "preprocessor_config.json").write_text(cfg)
    assert hash_model_files(d) == base

    # big weight files are hashed by size + head + tail: a flipped last byte must show
    big = d / "extra.safetensors"
    data = bytearray(np.random.RandomState(0).bytes(3 << 20))
    big.write_bytes(data)
    h1 = hash_model_files(d)
    data[-1] ^= 1
    big.write_bytes(data)
    assert hash_model_files(d) != h1
    with pytest.raises(ModelError, match="not a folder"):
        hash_model_files(d / "nothing")
