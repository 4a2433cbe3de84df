"""Fine-tuning a phi3v-lm base (bench.finetune.phi3v*): GradCache == whole batch (gradients and loss), the
saved adapter loads in peft itself and gives the trained model's embeddings, the merged checkpoint loads in
phi3v-lm, 2 gloo processes == 1, config errors, and the fine-tuned column in a bench run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench.errors import ConfigError

SETTINGS = {"image_prompt": "<|image_1|> Represent the given image.",
            "text_prompt": "Find me an everyday image that matches the given caption: {text}", "num_crops": 1}


@pytest.fixture(scope="module")
def train_set(synthetic_dir):
    from bench.data.coco import load_karpathy

    d = synthetic_dir
    return load_karpathy("train", d / "dataset_coco.json", d / "images", split="train")


def _params(**kw):
    from bench.finetune.params import parse_params

    base = dict(name="pft", base="phi3v-lm", train="train", steps=2, batch_size=4, lr=1e-3, weight_decay=0.0,
                log_every=1, seed=0)
    return parse_params({**base, **kw}).for_base("phi3v-lm")


def _batch(encoder, train_set, n=4):
    from bench.finetune.phi3v import Phi3VPairTransform
    from PIL import Image

    tf = Phi3VPairTransform(encoder)
    tf.epoch = None  # each image's first caption
    rows = {"image": [Image.open(p).convert("RGB") for p in train_set.image_paths[:n]],
            "captions": train_set.captions[:n], "idx": list(range(n))}
    return tf(rows)


@pytest.fixture(scope="module")
def lora_model(tiny_phi3v_dir):
    """The tiny base with a DoRA adapter whose lora_B is random (peft starts it at 0, which would leave
    every lora_A gradient 0 and the comparison below trivial); dropout 0 for exact comparisons."""
    import torch

    from bench.finetune.phi3v import apply_lora
    from bench.finetune.phi3v_train import load_base
    from bench.finetune.params import LoraParams

    model, encoder = load_base(tiny_phi3v_dir, SETTINGS)
    torch.manual_seed(0)
    peft_model = apply_lora(model, LoraParams(r=4, dropout=0.0))
    _randomize_lora_b(peft_model)
    model.train()
    return peft_model, encoder


def _randomize_lora_b(peft_model):
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)


def _grads(peft_model, encoder, batch, chunk, scale):
    from bench.finetune.phi3v import contrastive_step

    peft_model.zero_grad(set_to_none=True)
    scale.grad = None
    loss = contrastive_step(encoder, batch, scale, chunk)
    grads = {n: p.grad.clone() for n, p in peft_model.named_parameters()
             if p.requires_grad and p.grad is not None}
    return float(loss), grads, scale.grad.clone()


@pytest.mark.parametrize("chunk", [1, 3])
def test_gradcache_gives_the_whole_batch_gradients(lora_model, train_set, chunk):
    import math

    import torch

    peft_model, encoder = lora_model
    batch = _batch(encoder, train_set)
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.05)))  # learnable temperature: its grad too
    loss_full, full, s_full = _grads(peft_model, encoder, batch, None, scale)
    loss_chunk, chunked, s_chunk = _grads(peft_model, encoder, batch, chunk, scale)
    n_adapter = sum(1 for _, p in peft_model.named_parameters() if p.requires_grad)
    # every adapter tensor of the language model and of the CLIP tower's layers that Phi-3-V reads
    assert set(chunked) == set(full) and len(full) > n_adapter // 2
    assert any("vision_embed_tokens" in n for n in full) and any("lora_magnitude_vector" in n for n in full)
    assert loss_chunk == pytest.approx(loss_full, abs=1e-6)
    # float32 rounding relative to each tensor's scale (DoRA magnitudes' gradients reach ~35 here)
    worst = max(float((chunked[n] - full[n]).abs().max()) / max(1.0, float(full[n].abs().max()))
                for n in full)
    biggest = max(float(full[n].abs().max()) for n in full)
    assert worst <= 1e-5 and biggest > 1e-3, (worst, biggest)
    assert float((s_chunk - s_full).abs()) <= 1e-5 and float(s_full.abs()) > 1e-4


def test_gradcache_second_pass_replays_the_first_pass_dropout(tiny_phi3v_dir, train_set):
    import math

    import torch

    from bench.finetune.params import LoraParams
    from bench.finetune.phi3v import apply_lora, contrastive_step
    from bench.finetune.phi3v_train import load_base

    model, encoder = load_base(tiny_phi3v_dir, SETTINGS)
    _randomize_lora_b(apply_lora(model, LoraParams(r=4, dropout=0.5)))  # lora_B 0: dropout would not show
    model.train()
    trace: dict = {}
    contrastive_step(encoder, _batch(encoder, train_set), torch.tensor(math.log(50.0)), 2, trace=trace)
    for side in ("img", "txt"):
        np.testing.assert_allclose(trace[f"again_{side}"].numpy(), trace[f"first_{side}"].numpy(), atol=1e-6)
    model.eval()  # no dropout: differs from the training pass, so dropout was really on
    with torch.no_grad():
        plain = encoder.texts(_batch(encoder, train_set)["text_ids"])
    assert float((plain - trace["first_txt"]).abs().max()) > 1e-4


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_phi3v_dir, train_set, synthetic_dir):
    from bench.data.coco import load_karpathy
    from bench.finetune.launch import finetune

    val = load_karpathy("val", synthetic_dir / "dataset_coco.json", synthetic_dir / "images", split="val")

    out = tmp_path_factory.mktemp("pft") / "pft"
    keep: dict = {}
    # bf16 autocast and a learnable temperature on the way (their own paths through the loop)
    rec = finetune(_params(chunk_size=2, merge=True, lr=1e-2, mixed_precision="bf16", learn_temperature=True),
                   tiny_phi3v_dir, [train_set], out, val_sets=[val],
                   progress=False, threads=1, base_settings=SETTINGS, keep=keep)
    return out, rec, keep


def test_adapter_loads_in_peft_and_gives_the_trained_embeddings(trained, tiny_phi3v_dir, train_set):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from bench.finetune.phi3v import lora_view
    from bench.finetune.phi3v_train import load_base

    out, rec, keep = trained
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["use_dora"] is True and cfg["r"] == 16 and cfg["lora_alpha"] == 64
    assert sorted(cfg["target_modules"]) == sorted(["qkv_proj", "o_proj", "gate_up_proj", "down_proj",
                                                     "k_proj", "q_proj", "out_proj", "v_proj"])
    keys = load_file(str(out / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight" in keys
    assert any(k.startswith("base_model.model.model.vision_embed_tokens.img_processor.vision_model.encoder")
               for k in keys)
    assert rec["kind"] == "phi3v-lm-adapter" and len(rec["history"]) == 2
    assert rec["temperature"] != 0.02 and rec["params"]["mixed_precision"] == "bf16"
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["val_loss"]) for h in rec["history"])
    assert rec["trainable_params"] < rec["total_params"]

    batch = _batch(keep["encoder"], train_set, 3)
    with torch.no_grad():
        keep["encoder"].model.eval()
        trained_img = keep["encoder"].images(batch["images"])
        trained_txt = keep["encoder"].texts(batch["text_ids"])
        model, encoder = load_base(tiny_phi3v_dir, SETTINGS)
        base_txt = encoder.texts(batch["text_ids"])
        PeftModel.from_pretrained(lora_view(model), str(out)).eval()
        np.testing.assert_allclose(encoder.images(batch["images"]).numpy(), trained_img.numpy(), atol=1e-5)
        np.testing.assert_allclose(encoder.texts(batch["text_ids"]).numpy(), trained_txt.numpy(), atol=1e-5)
    assert float((base_txt - trained_txt).abs().max()) > 1e-3  # the adapter changed the model

    # the merged checkpoint, through the phi3v-lm embedder (its own preprocessing and prompts)
    from PIL import Image

    from bench.embedders.phi3v_lm import Phi3VLMEmbedder

    emb = Phi3VLMEmbedder(str(out / "merged"), num_crops=1)
    images = [Image.open(p).convert("RGB") for p in train_set.image_paths[:3]]
    img = emb.embed_image_batch(emb.collate([emb.preprocess(im) for im in images]))
    txt = emb.embed_texts([train_set.captions[i][0] for i in range(3)])
    np.testing.assert_allclose(img.numpy(), trained_img.numpy(), atol=1e-5)
    np.testing.assert_allclose(txt.numpy(), trained_txt.numpy(), atol=1e-5)


def test_adapter_column_reads_the_trained_model(trained, tiny_phi3v_dir, train_set):
    """phi3v-lm with `adapter:` (bench.models.phi3v.adapter, merged at load) gives the trained embeddings."""
    import torch
    from PIL import Image

    from bench.embedders.phi3v_lm import Phi3VLMEmbedder

    out, _, keep = trained
    batch = _batch(keep["encoder"], train_set, 3)
    with torch.no_grad():
        keep["encoder"].model.eval()
        trained_img = keep["encoder"].images(batch["images"])
        trained_txt = keep["encoder"].texts(batch["text_ids"])
    emb = Phi3VLMEmbedder(str(tiny_phi3v_dir), num_crops=1, adapter=str(out))
    images = [Image.open(p).convert("RGB") for p in train_set.image_paths[:3]]
    img = emb.embed_image_batch(emb.collate([emb.preprocess(im) for im in images]))
    txt = emb.embed_texts([train_set.captions[i][0] for i in range(3)])
    np.testing.assert_allclose(img.numpy(), trained_img.numpy(), atol=1e-5)
    np.testing.assert_allclose(txt.numpy(), trained_txt.numpy(), atol=1e-5)


def test_two_gloo_processes_match_one(tmp_path, tiny_phi3v_dir, train_set):
    """Global batch 4 split 2 + 2 over two torchrun processes, negatives gathered, GradCache chunk 1:
    the same losses (steps 1-2: step 2's depends on step 1's update) as one process seeing all 4."""
    from bench.finetune.launch import finetune

    p = _params(chunk_size=1, lora={"dropout": 0.0}, lr=1e-2, merge=False)
    one = finetune(p, tiny_phi3v_dir, [train_set], tmp_path / "one", progress=False, threads=1,
                   base_settings=SETTINGS)
    two = finetune(p, tiny_phi3v_dir, [train_set], tmp_path / "two", num_processes=2, progress=False,
                   threads=1, base_settings=SETTINGS)
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    l1, l2 = [h["loss"] for h in one["history"]], [h["loss"] for h in two["history"]]
    np.testing.assert_allclose(l2, l1, atol=1e-5)
    assert abs(l1[1] - l1[0]) > 1e-4  # the first step changed the model


# ---- config ---------------------------------------------------------------------------------------------
def _raw(d: Path, model: Path, tmp: Path, **ft) -> dict:
    entry = {"name": "phi3v-lm-ft", "base": "phi3v-lm", "train": "caps_train", "steps": 1, "batch_size": 4,
             "lr": 1e-2, "log_every": 1, "threads": 1, "lora": {"r": 4}, "chunk_size": 2, **ft}
    return {
        "name": "pftwire", "synthetic": True, "output_dir": str(tmp / "runs"),
        "cache_dir": str(tmp / "cache"),
        "runtime": {"device": "cpu", "batch_size": 8, "num_workers": 0, "seed": 0},
        "datasets": {f"caps_{s}": {"type": "coco_karpathy", "annotations": str(d / "dataset_coco.json"),
                                   "images": str(d / "images"), "split": s} for s in ("train", "test")},
        "embedders": [{"type": "clip", "name": "clip", "model": "m"},
                      {"type": "phi3v-lm", "name": "phi3v-lm", "model": str(model), "num_crops": 1}],
        "tasks": [{"type": "retrieval", "dataset": "caps_test", "ks": [1, 5]}],
        "finetune": [entry],
    }


@pytest.mark.parametrize("change, expected", [
    ({"base": "clip"}, "finetune[0].lora: applies to phi3v-lm bases only (the VLM2Vec recipe); 'clip' is of "
                       "type clip"),
    ({"lock_image": True}, "finetune[0].lock_image: applies to CLIP bases only"),
    ({"lora": {"r": 0}}, "finetune[0].lora.r: Input should be greater than or equal to 1"),
    ({"lora": {"rank": 4}}, "unknown key 'finetune[0].lora.rank'"),
    ({"lora": {"use_dora": "yes"}}, "finetune[0].lora.use_dora: Input should be a valid boolean"),
    ({"lora": {"target_modules": []}}, "finetune[0].lora.target_modules: must list at least one"),
    ({"lora": {"target_modules": ["q_proj", "q_proj"]}}, "'q_proj' is listed twice"),
    ({"lora": {"target_modules": ["q proj"]}}, "'q proj' is not a module name"),
    ({"lora": {"dropout": 1.0}}, "finetune[0].lora.dropout: Input should be less than 1"),
    ({"temperature": 0.001}, "finetune[0].temperature: Input should be greater than or equal to 0.01"),
    ({"learn_temperature": 1}, "finetune[0].learn_temperature: Input should be a valid boolean"),
    ({"chunk_size": 8}, "chunk_size (8) exceeds batch_size (4)"),
    ({"merge": "no"}, "finetune[0].merge: Input should be a valid boolean"),
])
def test_config_errors_name_the_key(tmp_path, change, expected):
    from bench.config import parse_config

    with pytest.raises(ConfigError) as e:
        parse_config(_raw(Path("d"), Path("m"), tmp_path, **change))
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_target_matching_nothing_is_refused(tiny_phi3v_dir):
    from bench.finetune.params import LoraParams
    from bench.finetune.phi3v import apply_lora
    from bench.finetune.phi3v_train import load_base

    model, _ = load_base(tiny_phi3v_dir, SETTINGS)
    with pytest.raises(ConfigError, match="'c_attn' matches no linear module of this Phi-3-vision model; its "
                                          "linear modules are .*qkv_proj"):
        apply_lora(model, LoraParams(target_modules=["qkv_proj", "c_attn"]))


def test_recipe_enters_the_fingerprint_and_clip_fingerprints_stay():
    from bench.finetune.params import parse_params

    clip = parse_params(dict(name="c", base="clip", train="t"))
    assert not any(k in clip.hyper() for k in ("lora", "temperature", "chunk_size", "merge"))
    a = _params().hyper()
    assert a["lora"]["use_dora"] is True and a["temperature"] == 0.02 and a["merge"] is False
    assert _params(lora={"use_dora": False}).hyper() != a and _params(temperature=0.05).hyper() != a


def test_finetuned_column_in_a_bench_run(tmp_path, synthetic_dir, tiny_phi3v_dir):
    from bench.config import load_config
    from bench.runner import run_benchmark

    raw = _raw(synthetic_dir, tiny_phi3v_dir, tmp_path)
    raw["embedders"] = raw["embedders"][1:]
    path = tmp_path / "pft.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = run_benchmark(load_config(path), path, progress=False, out_dir=tmp_path / "run")
    res = json.loads((run / "results.json").read_text())
    assert list(res["embedders"]) == ["phi3v-lm", "phi3v-lm-ft"]
    rec = res["embedders"]["phi3v-lm-ft"]["finetune"]
    assert rec["base"] == "phi3v-lm" and rec["params"]["lora"]["r"] == 4 and rec["params"]["chunk_size"] == 2
    q = {lab: {m["key"]: m["value"] for m in res["metrics"]
               if m["embedder"] == lab and m["kind"] == "quality"} for lab in ("phi3v-lm", "phi3v-lm-ft")}
    assert "retrieval/t2i_recall@5" in q["phi3v-lm-ft"] and q["phi3v-lm-ft"] != q["phi3v-lm"]
    assert "phi3v-lm-ft" in (run / "report.md").read_text()


def test_kill_then_resume_matches_uninterrupted(tmp_path, tiny_phi3v_dir, train_set):
    """Dropout on (0.1): the saved RNG state must give step 2 the same masks as the straight run."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from bench.finetune.launch import finetune, load_record, make_job, pairs
    from bench.finetune.train import EXIT_AFTER_SAVE_ENV

    p = _params(steps=2, save_every=1, merge=False, lora={"r": 4})
    finetune(p, tiny_phi3v_dir, [train_set], tmp_path / "straight", progress=False, threads=1,
             base_settings=SETTINGS)
    out = tmp_path / "killed"
    out.mkdir()
    job_file = out / "job.json"
    job = make_job(p, tiny_phi3v_dir, pairs([train_set]), None, out, SETTINGS)
    job_file.write_text(json.dumps({**job, "threads": 1}))
    cmd = [sys.executable, "-m", "bench.finetune.train", "--job", str(job_file), "--quiet"]
    killed = subprocess.run(cmd, env={**os.environ, EXIT_AFTER_SAVE_ENV: "1"}, capture_output=True, text=True)
    assert killed.returncode == 3, killed.stderr[-2000:]
    assert (out / ".train_state" / "state.pt").is_file() and load_record(out) is None
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rec = load_record(out)
    assert rec["resumed_from_step"] == 1 and [h["step"] for h in rec["history"]] == [1, 2]
    a = load_file(str(out / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
