"""`bench embed`: one tensor per image (relative path) and per text line, float32, round trip."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, synthetic_dir):
    out = tmp_path_factory.mktemp("embed_imgs")
    files = sorted((synthetic_dir / "images" / "test").glob("*.jpg"))[:5]
    (out / "sub").mkdir()
    for i, f in enumerate(files):
        shutil.copy(f, (out / "sub" if i % 2 else out) / f.name)
    return out


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", "embed", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_clip_images_and_texts_round_trip(tmp_path, image_folder, tiny_clip_dir):
    texts = tmp_path / "t.txt"
    texts.write_text("a red circle\na blue square on the left\n")
    out = tmp_path / "clip.safetensors"
    r = _run("clip", "--model", str(tiny_clip_dir), "--images", str(image_folder), "--texts", str(texts),
             "--output", str(out), "--device", "cpu", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    t = load_file(out)
    rel = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.jpg"))
    assert sorted(k for k in t if not k.startswith("text:")) == rel
    assert any("/" in k for k in rel)
    assert {"text:0", "text:1"} <= set(t)
    for v in t.values():
        assert v.dtype == torch.float32 and v.ndim == 1
        assert torch.linalg.vector_norm(v).item() == pytest.approx(1.0, abs=1e-4)
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["texts"]) == ["a red circle", "a blue square on the left"]
    # Same vectors as the embedder called directly.
    from bench.data.images import load_image
    from bench.embedders.clip import ClipEmbedder

    emb = ClipEmbedder(model=str(tiny_clip_dir))
    direct = emb.embed_image_batch(emb.collate([emb.preprocess(load_image(image_folder / rel[0]))]))[0]
    assert torch.allclose(direct, t[rel[0]], atol=1e-5)


def test_phi3v_tokens_and_pooled(tmp_path, image_folder, tiny_phi3v_dir):
    out = tmp_path / "phi.safetensors"
    r = _run("phi3v", "--model", str(tiny_phi3v_dir), "--images", str(image_folder), "--num-crops", "2",
             "--pooling", "tokens", "--output", str(out), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    t = load_file(out)
    assert len(t) == 5
    for v in t.values():
        assert v.ndim == 2 and v.dtype == torch.float32
        # num_img_tokens = 144*h*w + 12*h + 157 for some crop grid with h*w <= 2
        assert v.shape[0] in {144 * a * b + 12 * a + 157 for a in (1, 2) for b in (1, 2) if a * b <= 2}
    out2 = tmp_path / "phi_mean.safetensors"
    r = _run("phi3v", "--model", str(tiny_phi3v_dir), "--images", str(image_folder), "--num-crops", "2",
             "--output", str(out2), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    for v in load_file(out2).values():
        assert v.ndim == 1 and torch.linalg.vector_norm(v).item() == pytest.approx(1.0, abs=1e-4)


def test_image_only_embedder_refuses_texts(tmp_path, image_folder, tiny_phi3v_dir):
    texts = tmp_path / "t.txt"
    texts.write_text("x\n")
    r = _run("phi3v", "--model", str(tiny_phi3v_dir), "--images", str(image_folder), "--texts", str(texts),
             "--output", str(tmp_path / "x.safetensors"))
    assert r.returncode == 2 and "embeds images only" in r.stderr and "Traceback" not in r.stderr


def test_missing_model_is_clear(tmp_path, image_folder):
    r = _run("clip", "--model", str(tmp_path / "nope"), "--images", str(image_folder),
             "--output", str(tmp_path / "x.safetensors"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(tmp_path / "nope") in r.stderr or "nope" in r.stderr


def test_help_and_list_are_fast_and_torch_free():
    code = ("import sys, contextlib, io; from bench.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()): main(['list'])\n"
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "False", r.stdout + r.stderr
