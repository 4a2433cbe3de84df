"""Fine-tuning engine (bench.finetune), in-process: checkpoint round trip, freezing, reuse, leakage, data."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from bench.errors import ConfigError


@pytest.fixture(scope="module")
def sets(synthetic_dir):
    from bench.data.coco import load_karpathy

    d = synthetic_dir
    return {s: load_karpathy(s, d / "dataset_coco.json", d / "images", split=s)
            for s in ("train", "val", "test")}


def _params(**kw):
    from bench.finetune.params import parse_params

    base = dict(name="ft", base="clip", train="train", steps=3, batch_size=8, lr=1e-3, weight_decay=0.1,
                warmup_steps=1, log_every=1, save_every=100, seed=0)
    return parse_params({**base, **kw})


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_clip_dir, sets):
    from bench.finetune.launch import finetune

    out = tmp_path_factory.mktemp("ft") / "clip-ft"
    rec = finetune(_params(), tiny_clip_dir, [sets["train"]], out, val_sets=[sets["val"]],
                   eval_sets=[sets["test"]], progress=False, threads=1)
    return out, rec


def test_record_contents(trained):
    out, rec = trained
    assert [h["step"] for h in rec["history"]] == [1, 2, 3]
    assert rec["history"][0]["lr"] == pytest.approx(1e-3)  # warm-up 1 step, then cosine over 2 steps
    assert rec["history"][1]["lr"] == pytest.approx(1e-3)  # cosine starts at the peak
    assert rec["history"][2]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 1 / 2)))
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["val_loss"]) for h in rec["history"])
    assert rec["trainable_params"] == rec["total_params"] > 0
    assert rec["samples_per_s"] > 0 and rec["peak_rss_mb"] > 0 and rec["num_train_images"] == 48
    assert not (out / ".train_state").exists()


def test_checkpoint_plain_transformers_matches_bench_embedder(trained, tiny_clip_dir, sets):
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from bench.embedders.clip import ClipEmbedder

    out, _ = trained
    paths = sets["test"].image_paths[:4]
    texts = [c[0] for c in sets["test"].captions[:4]]
    model = CLIPModel.from_pretrained(out).eval()
    proc, tok = CLIPImageProcessor.from_pretrained(out), CLIPTokenizer.from_pretrained(out)
    images = [Image.open(p).convert("RGB") for p in paths]
    with torch.no_grad():
        o = model(pixel_values=proc(images=images, return_tensors="pt")["pixel_values"],
                  **tok(texts, padding=True, return_tensors="pt"))
    emb = ClipEmbedder(str(out))
    img = emb.embed_image_batch(torch.stack([emb.preprocess(im) for im in images]))
    txt = emb.embed_texts(texts)
    np.testing.assert_allclose(img.numpy(), o.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(txt.numpy(), o.text_embeds.numpy(), atol=1e-5)
    base = ClipEmbedder(str(tiny_clip_dir)).embed_texts(texts)
    assert (base - txt).abs().max() > 1e-3  # training changed the model


def test_reuse_and_fingerprint_change(trained, tiny_clip_dir, sets):
    from bench.finetune.launch import finetune, load_record, make_job, needs_training, pairs

    out, rec = trained
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    again = finetune(_params(), tiny_clip_dir, [sets["train"]], out, val_sets=[sets["val"]], progress=False,
                     threads=1)
    assert again == rec and (out / "model.safetensors").stat().st_mtime_ns == mtime  # reused
    changed = make_job(_params(lr=5e-4), tiny_clip_dir, pairs([sets["train"]]), pairs([sets["val"]]), out)
    assert needs_training(out, changed["fingerprint"]) and not needs_training(out, rec["fingerprint"])
    # copy, then retrain with other data: the fingerprint differs and the weights change
    other = out.parent / "other"
    shutil.copytree(out, other)
    sub = sets["train"].subset(range(40))
    rec2 = finetune(_params(), tiny_clip_dir, [sub], other, progress=False, threads=1)
    assert rec2["fingerprint"] != rec["fingerprint"] and load_record(other) == rec2
    assert rec2["num_train_images"] == 40


def test_locked_tower_and_unlocked_layers(tmp_path, tiny_clip_dir, sets):
    import torch

    from bench.finetune.launch import finetune

    base = _weights(tiny_clip_dir)
    rec = finetune(_params(lock_image=True, steps=2), tiny_clip_dir, [sets["train"]], tmp_path / "a",
                   progress=False, threads=1)
    w = _weights(tmp_path / "a")
    vision = [k for k in base if k.startswith(("vision_model.", "visual_projection."))]
    assert vision and all(torch.equal(base[k], w[k]) for k in vision)  # bit-identical
    assert not torch.equal(base["text_projection.weight"], w["text_projection.weight"])
    assert rec["trainable_params"] == sum(v.numel() for k, v in base.items() if k not in vision)

    finetune(_params(unlocked_layers=1, steps=2), tiny_clip_dir, [sets["train"]], tmp_path / "b",
             progress=False, threads=1)
    w = _weights(tmp_path / "b")
    for tower in ("vision_model", "text_model"):
        frozen = [k for k in base if k.startswith((f"{tower}.encoder.layers.0.", f"{tower}.embeddings."))]
        assert frozen and all(torch.equal(base[k], w[k]) for k in frozen)
        assert not torch.equal(base[f"{tower}.encoder.layers.1.mlp.fc1.weight"],
                               w[f"{tower}.encoder.layers.1.mlp.fc1.weight"])
    assert not torch.equal(base["logit_scale"], w["logit_scale"])


def test_leakage_refused(tmp_path, tiny_clip_dir, sets):
    from bench.finetune.launch import finetune
    from bench.finetune.leakage import check_no_leakage

    test_img = sets["test"].image_paths[3]
    copy = tmp_path / "renamed.jpg"
    shutil.copyfile(test_img, copy)  # same bytes, other name
    train = list(sets["train"].image_paths[:5]) + [copy]
    with pytest.raises(ConfigError, match=r"1 training image file\(s\).*renamed\.jpg.*same content"):
        check_no_leakage(train, sets["test"].image_paths)
    with pytest.raises(ConfigError, match=r"2 training image.*first: .*" + test_img.name):
        check_no_leakage([test_img, sets["test"].image_paths[0]], sets["test"].image_paths)
    check_no_leakage(sets["train"].image_paths, sets["test"].image_paths)  # disjoint: fine
    leaky = sets["train"].subset(range(20))
    leaky.image_paths[7] = copy
    with pytest.raises(ConfigError, match="leakage"):
        finetune(_params(), tiny_clip_dir, [leaky], tmp_path / "x", eval_sets=[sets["test"]], progress=False,
                 threads=1)
    assert not (tmp_path / "x").exists()


def test_bf16_on_cpu_and_fp16_refused(tmp_path, trained, tiny_clip_dir, sets):
    from bench.finetune.launch import finetune

    rec = finetune(_params(mixed_precision="bf16", steps=1), tiny_clip_dir, [sets["train"]], tmp_path / "bf",
                   progress=False, threads=1)
    fp32_first = trained[1]["history"][0]["loss"]  # same model, same first batch, float32
    assert rec["history"][0]["loss"] == pytest.approx(fp32_first, abs=0.03)
    assert rec["history"][0]["loss"] != fp32_first  # bf16 autocast really ran
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        finetune(_params(mixed_precision="fp16"), tiny_clip_dir, [sets["train"]], tmp_path / "fp",
                 progress=False, threads=1)
    assert not (tmp_path / "fp").exists()


def test_params_validation():
    from bench.finetune.params import check_device

    with pytest.raises(ConfigError, match="steps"):
        _params(steps="3")
    with pytest.raises(ConfigError, match="bogus"):
        _params(bogus=1)
    with pytest.raises(ConfigError, match="nothing left to train"):
        _params(lock_image=True, lock_text=True)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        check_device(_params(mixed_precision="fp16"), "cpu")
    check_device(_params(mixed_precision="bf16"), "cpu")


def test_batch_plan_independent_of_world_size():
    from bench.finetune.data import BatchPlan, caption_index

    one, two, four = (BatchPlan(50, 8, seed=3, world_size=w) for w in (1, 2, 4))
    seen = []
    for m in range(12):  # 6 batches per epoch: two epochs
        epoch, idx = one.global_batch(m)
        assert epoch == m // 6
        for plan in (two, four):
            parts = [plan.local(m, r)[1] for r in range(plan.world_size)]
            np.testing.assert_array_equal(np.concatenate(parts), idx)
        seen.append(idx)
    first = np.concatenate(seen[:6])
    assert len(set(first.tolist())) == 48  # no repeats within an epoch
    assert not np.array_equal(seen[0], seen[6])  # reshuffled next epoch
    picks = [caption_index(0, e, 5, 5) for e in range(20)]
    assert picks == [caption_index(0, e, 5, 5) for e in range(20)] and len(set(picks)) > 1
    with pytest.raises(ConfigError, match="not divisible"):
        BatchPlan(50, 8, seed=0, world_size=3)


def test_clip_loss_by_hand():
    import torch

    from bench.finetune.loss import clip_loss

    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1)
    scale = torch.tensor(math.log(200.0))  # clamped to ln(100)
    s = 100.0 * a.numpy().astype(np.float64) @ b.numpy().astype(np.float64).T

    def ce(m):
        return float(np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(m)]))

    assert float(clip_loss(a, b, scale)) == pytest.approx(0.5 * (ce(s) + ce(s.T)), rel=1e-5)
