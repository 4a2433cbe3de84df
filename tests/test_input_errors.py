"""Bad inputs a user can hand bench: each is one line and exit 2 (or, for an invalid caption character,
a warning), never a traceback, and never a half-written output.

Decompression-bomb images, truncated safetensors, pickle-only checkpoints (never unpickled), lone
surrogates in captions, a non-UTF-8 --texts file, NaN/Inf vectors from an embedder.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from bench.cli import main


def _cli(capsys, *args: str) -> tuple[int, str, list[str]]:
    capsys.readouterr()
    rc = main(list(args))
    err = capsys.readouterr().err
    return rc, err, [ln for ln in err.splitlines() if ln.startswith("bench: error:")]


def _embed(capsys, kind: str, model: Path, images: Path, output: Path, *extra: str):
    return _cli(capsys, "embed", kind, "--model", str(model), "--images", str(images), "--output", str(output),
                "--device", "cpu", *extra)


@pytest.fixture(scope="module")
def few_images(tmp_path_factory, synthetic_dir) -> Path:
    out = tmp_path_factory.mktemp("few")
    for f in sorted((synthetic_dir / "images" / "test").glob("*.jpg"))[:3]:
        shutil.copy(f, out / f.name)
    return out


# ---- decompression bomb ------------------------------------------------------------------------------
def _bomb_png(path: Path, side: int = 30000) -> Path:
    """A valid 1-bit PNG of side x side pixels (900 million at 30000): ~100 KB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("workers", ["0", "1"])  # 1: the image is decoded in a DataLoader worker process
def test_decompression_bomb_png(workers, tmp_path, capsys, few_images, tiny_clip_dir):
    from PIL import Image

    images = shutil.copytree(few_images, tmp_path / "imgs")
    bomb = _bomb_png(images / "zz_bomb.png")
    out = tmp_path / "o" / "x.safetensors"
    rc, err, errors = _embed(capsys, "clip", tiny_clip_dir, images, out, "--num-workers", workers)
    assert rc == 2 and "Traceback" not in err
    limit = 2 * Image.MAX_IMAGE_PIXELS
    assert errors == [f"bench: error: image {bomb} has 900000000 pixels, over the limit of {limit} pixels that "
                      "guards against decompression bombs (PIL.Image.MAX_IMAGE_PIXELS x 2): resize the image "
                      "(the embedders use a few megapixels at most) or remove it from the dataset"]
    assert not out.exists() and not list((tmp_path / "o").glob("*"))


def test_large_image_below_the_bomb_limit_is_decoded_with_a_named_warning(few_images, monkeypatch, caplog):
    from PIL import Image

    from bench.data.images import load_image

    path = sorted(few_images.glob("*.jpg"))[0]
    with Image.open(path) as im:
        pixels = im.size[0] * im.size[1]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels - 1)  # over the warning limit, under 2x
    with caplog.at_level(logging.WARNING, logger="bench.data.images"):
        rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size[0] * rgb.size[1] == pixels
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"image {path} is very large"]


# ---- truncated safetensors ---------------------------------------------------------------------------
def _single_file_phi3v(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    tensors = {}
    for shard in sorted(dst.glob("model-*.safetensors")):
        tensors.update(load_file(shard))
        shard.unlink()
    (dst / "model.safetensors.index.json").unlink()
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("kind, layout, victim", [
    ("clip", "clip", "model.safetensors"),
    ("phi3v", "sharded", "model-00002-of-00002.safetensors"),      # the vision shard
    ("phi3v-lm", "sharded", "model-00001-of-00002.safetensors"),   # the language-model shard
    ("phi3v", "single", "model.safetensors"),
])
def test_truncated_safetensors_names_the_file(kind, layout, victim, tmp_path, capsys, few_images, tiny_clip_dir,
                                              tiny_phi3v_dir):
    model = tmp_path / "m"
    if layout == "clip":
        shutil.copytree(tiny_clip_dir, model)
    elif layout == "sharded":
        shutil.copytree(tiny_phi3v_dir, model)
    else:
        _single_file_phi3v(tiny_phi3v_dir, model)
    f = model / victim
    os.truncate(f, f.stat().st_size // 2)  # an interrupted download
    out = tmp_path / "x.safetensors"
    rc, err, errors = _embed(capsys, kind, model, few_images, out)
    assert rc == 2 and "Traceback" not in err and len(errors) == 1, err
    assert str(f) in errors[0] and re.search(r"incomplete or corrupt|corrupt or truncated", errors[0]), errors[0]
    assert "re-download" in errors[0]
    assert not out.exists()


# ---- pickle-only checkpoints -------------------------------------------------------------------------
class _Trap:
    """Unpickling this creates `marker`: proof that a pickle was (not) loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["clip", "phi3v", "phi3v-lm"])
def test_pickle_only_checkpoint_is_refused_unopened(kind, tmp_path, capsys, few_images, tiny_clip_dir,
                                                    tiny_phi3v_dir):
    model = shutil.copytree(tiny_clip_dir if kind == "clip" else tiny_phi3v_dir, tmp_path / "m")
    for f in [*model.glob("*.safetensors"), *model.glob("*.safetensors.index.json")]:
        f.unlink()
    marker = tmp_path / "UNPICKLED"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    rc, err, errors = _embed(capsys, kind, model, few_images, tmp_path / "x.safetensors")
    assert rc == 2 and "Traceback" not in err and len(errors) == 1, err
    assert f"{model} holds only pickle weights (pytorch_model.bin): bench loads safetensors only" in errors[0]
    assert "python -c" in errors[0] and "save_pretrained" in errors[0] and "safe_serialization=True" in errors[0]
    assert not marker.exists()


def test_pickle_conversion_command_from_the_message_works(tmp_path, capsys, few_images, tiny_clip_dir):
    """The command the error prints turns a (trusted) pickle checkpoint into one bench loads, with the same
    vectors as the original safetensors checkpoint."""
    model = shutil.copytree(tiny_clip_dir, tmp_path / "m")
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    rc, err, errors = _embed(capsys, "clip", model, few_images, tmp_path / "x.safetensors")
    assert rc == 2, err
    code = re.search(r'python -c "([^"]+)"', errors[0]).group(1)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    converted, original = tmp_path / "conv.safetensors", tmp_path / "orig.safetensors"
    assert _embed(capsys, "clip", model, few_images, converted, "--num-workers", "0")[0] == 0
    assert _embed(capsys, "clip", tiny_clip_dir, few_images, original, "--num-workers", "0")[0] == 0
    a, b = load_file(converted), load_file(original)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- lone surrogates in captions ---------------------------------------------------------------------
def test_lone_surrogate_in_a_karpathy_caption_is_replaced_and_named(tmp_path, capsys, caplog, synthetic_dir,
                                                                   tiny_clip_dir):
    data = json.loads((synthetic_dir / "dataset_coco.json").read_text())
    entry = next(e for e in data["images"] if e["split"] == "test")
    entry["sentences"][1]["raw"] = "a red \ud800 circle"
    ann = tmp_path / "karpathy.json"
    ann.write_text(json.dumps(data))  # valid JSON: the surrogate is written as the escape \ud800
    assert "\\ud800" in ann.read_text()
    cfg = {"name": "surrogate", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
           "runtime": {"device": "cpu", "batch_size": 4, "num_workers": 0},
           "datasets": {"caps": {"type": "coco_karpathy", "annotations": str(ann),
                                 "images": str(synthetic_dir / "images"), "split": "test", "max_images": 4}},
           "embedders": [{"type": "clip", "model": str(tiny_clip_dir)}],
           "tasks": [{"type": "retrieval", "dataset": "caps", "ks": [1]}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    image = synthetic_dir / "images" / entry["filepath"] / entry["filename"]
    for _ in range(2):  # computed, then from the cache
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bench.data.base"):
            rc, err, errors = _cli(capsys, "run", str(path), "--no-progress", "--out", str(tmp_path / "run"))
        assert rc == 0 and errors == [] and "Traceback" not in err, err
        assert [r.getMessage() for r in caplog.records] == [
            f"dataset 'caps': 1 caption(s) hold lone UTF-16 surrogates (invalid Unicode), replaced with "
            f"U+FFFD; first in a caption of image {image}"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["complete"] is True and results["cache"]["clip"] == {"images/caps": "hit", "texts/caps": "hit"}
    assert (tmp_path / "run" / "report.html").is_file()


def test_lone_surrogates_in_coco_captions_and_class_folders(tmp_path, synthetic_dir):
    from bench.data.coco import load_coco_captions
    from bench.data.imagefolder import load_imagefolder

    raw = json.loads((synthetic_dir / "annotations" / "captions_test.json").read_text())
    first_id = min(a["image_id"] for a in raw["annotations"])
    victim = next(a for a in raw["annotations"] if a["image_id"] == first_id)
    victim["caption"] = "\udfff lone low surrogate"
    ann = tmp_path / "captions.json"
    ann.write_text(json.dumps(raw))
    ds = load_coco_captions("c", ann, synthetic_dir / "images" / "test")
    assert "\ufffd lone low surrogate" in ds.captions[0]
    assert all(t.encode("utf-8") for caps in ds.captions for t in caps)
    assert len(ds.fingerprint()) == 16
    # A class folder whose name is not UTF-8 arrives with surrogate escapes (os.fsdecode).
    root = tmp_path / "folder"
    cls = os.path.join(os.fsencode(root), b"caf\xe9")
    os.makedirs(cls)
    shutil.copy(next((synthetic_dir / "images" / "test").glob("*.jpg")), os.fsdecode(cls) + "/a.jpg")
    lab = load_imagefolder("f", root)
    assert lab.class_names == ["caf\ufffd"] and len(lab.fingerprint()) == 16


# ---- --texts that is not UTF-8 ----------------------------------------------------------------------
def test_non_utf8_texts_file(tmp_path, capsys, few_images, tiny_clip_dir):
    texts = tmp_path / "t.txt"
    texts.write_bytes("hello\nw".encode() + b"\xe9rld\n")  # latin-1 é at byte 7
    out = tmp_path / "x.safetensors"
    rc, err, errors = _embed(capsys, "clip", tiny_clip_dir, few_images, out, "--texts", str(texts))
    assert rc == 2 and "Traceback" not in err
    assert errors == [f"bench: error: --texts {texts} is not UTF-8 text: byte 0xe9 at byte offset 7 (line 2) is "
                      "not valid UTF-8; save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"]
    assert not out.exists()
    texts.write_bytes("\ufeffhello\nwörld\n".encode())  # UTF-8 with a byte-order mark: fine, BOM dropped
    assert _embed(capsys, "clip", tiny_clip_dir, few_images, out, "--texts", str(texts), "--num-workers", "0")[0] == 0
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["texts"]) == ["hello", "wörld"]


# ---- NaN / Inf vectors -------------------------------------------------------------------------------
def _poison(monkeypatch, method: str, value: float, row: int = 1) -> None:
    from bench.embedders.clip import ClipEmbedder

    real = getattr(ClipEmbedder, method)

    def poisoned(self, x):
        out = real(self, x).clone()
        if len(out) > row:
            out[row, 0] = value
        return out

    monkeypatch.setattr(ClipEmbedder, method, poisoned)


@pytest.mark.parametrize("where", ["images", "captions", "prompts", "embed"])
def test_nan_or_inf_vectors_are_a_model_error_and_never_cached(where, tmp_path, capsys, monkeypatch,
                                                                synthetic_dir, tiny_clip_dir):
    _poison(monkeypatch, "embed_image_batch" if where in ("images", "embed") else "embed_texts",
            float("nan") if where in ("images", "embed") else float("inf"))
    if where == "embed":
        images = synthetic_dir / "images" / "val"
        out = tmp_path / "x.safetensors"
        rc, err, errors = _embed(capsys, "clip", tiny_clip_dir, images, out, "--num-workers", "0")
        second = sorted(p for p in images.rglob("*.jpg"))[1]
        assert rc == 2 and len(errors) == 1 and not out.exists(), err
        assert errors[0].startswith(f"bench: error: embedder 'clip' produced NaN/Inf values for image {second} of "
                                    f"--images {images} (1 of 8 in its batch); ")
        return
    caps = {"type": "coco_karpathy", "annotations": str(synthetic_dir / "dataset_coco.json"),
            "images": str(synthetic_dir / "images"), "split": "test", "max_images": 6}
    folder = {"type": "imagefolder", "root": str(synthetic_dir / "imagefolder" / "test"), "max_images": 6}
    task = ({"type": "zeroshot", "dataset": "ds", "templates": ["a {c}."]} if where == "prompts"
            else {"type": "retrieval", "dataset": "ds", "ks": [1]})
    cfg = {"name": "nan", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
           "runtime": {"device": "cpu", "batch_size": 4, "num_workers": 0},
           "datasets": {"ds": folder if where == "prompts" else caps},
           "embedders": [{"type": "clip", "model": str(tiny_clip_dir)}], "tasks": [task]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc, err, errors = _cli(capsys, "run", str(path), "--no-progress")
    assert rc == 2 and "Traceback" not in err and len(errors) == 1, err
    line = errors[0]
    from bench.data.coco import load_karpathy

    ds = load_karpathy("ds", caps["annotations"], caps["images"], split="test", max_images=6)
    n_caps = ds.num_captions
    expected = {
        # batch_size 4: the second image of the first batch
        "images": f"for image {ds.image_paths[1]} of dataset 'ds' (1 of 4 in its batch)",
        # captions go in steps of max(4 * batch_size, 32); caption 1 belongs to the first image (5+ each)
        "captions": f"for a caption of image {ds.image_paths[0]} of dataset 'ds' (1 of {min(32, n_caps)} in its batch)",
        # one call for every prompt; the second prompt is the second class's
        "prompts": "for prompt 'a ",
    }[where]
    assert line.startswith("bench: error: embedder 'clip' produced NaN/Inf values ") and expected in line, line
    assert "check or re-download them" in line
    # Nothing with NaN/Inf reached the cache (the healthy modality may be cached).
    shards = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(shards) == (1 if where == "captions" else 0)  # retrieval embeds the images first
    assert all(bool(torch.isfinite(load_file(f)["embeddings"]).all()) for f in shards)
