"""A component is one module plus one registration: a toy embedder (tests/toy_embedder.py) and a toy
dataset type (tests/toy_dataset.py), registered with one line each, reach every registry-derived
surface: config validation (and its error messages), `bench list`, `bench embed` (choices and
options), a run."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from bench import registry
from bench.cli import build_parser, main
from bench.config import parse_config
from bench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def toys():
    # The whole registration of the two toys: one line each.
    registry.register("embedder", "toy", "toy_embedder:ToyEmbedder", "toy_embedder:ToyParams")
    registry.register("dataset", "toy_folder", "toy_dataset:load_toy", "toy_dataset:ToyFolderParams")
    yield
    registry.unregister("embedder", "toy")
    registry.unregister("dataset", "toy_folder")


RAW = {
    "name": "toy",
    "datasets": {"train": {"type": "toy_folder", "root": "a"}, "test": {"type": "toy_folder", "root": "b"}},
    "embedders": [{"type": "toy", "model": "m", "bins": 3}],
    "tasks": [{"type": "linear_probe", "train": "train", "test": "test"}],
}


def _err(raw: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, source="x.yaml")
    return str(e.value)


def test_config_validates_the_toys(toys):
    from toy_dataset import ToyFolderParams
    from toy_embedder import ToyParams

    cfg = parse_config(copy.deepcopy(RAW))
    assert isinstance(cfg.embedders[0], ToyParams) and cfg.embedders[0].bins == 3
    assert isinstance(cfg.datasets["train"], ToyFolderParams)
    raw = copy.deepcopy(RAW)
    raw["embedders"][0]["bisn"] = 2
    assert "unknown key 'embedders[0].bisn'; did you mean 'bins'? allowed here: bins, model, name, " \
           "revision, type" in _err(raw)
    raw = copy.deepcopy(RAW)
    raw["embedders"][0]["bins"] = 9
    assert "embedders[0].bins: Input should be less than or equal to 8" in _err(raw)
    raw = copy.deepcopy(RAW)
    raw["embedders"][0]["type"] = "tyo"
    assert "unknown embedder 'tyo'; did you mean 'toy'? known: clip, phi3v, phi3v-lm, toy" in _err(raw)
    raw = copy.deepcopy(RAW)
    del raw["datasets"]["train"]["type"]
    assert "allowed dataset types: coco_captions, coco_instances, coco_karpathy, flickr30k_karpathy, " \
           "hf, imagefolder, toy_folder, webdataset" in _err(raw)
    # What a dataset provides (labels) decides which tasks may use it; the type lists come from the registry.
    raw = copy.deepcopy(RAW)
    raw["tasks"] = [{"type": "retrieval", "dataset": "test"}]
    assert "task 'retrieval' needs a dataset of type coco_captions|coco_karpathy|flickr30k_karpathy|hf|" \
           "webdataset, 'test' is toy_folder" in _err(raw)
    raw["datasets"]["caps"] = {"type": "coco_captions", "annotations": "a.json", "images": "i"}
    raw["tasks"] = [{"type": "zeroshot", "dataset": "caps"}]
    assert "needs a dataset of type coco_instances|hf|imagefolder|toy_folder|webdataset" in _err(raw)


def test_unregistered_toys_are_refused():
    assert "unknown dataset 'toy_folder' known: coco_captions, coco_instances, coco_karpathy, " \
           "flickr30k_karpathy, hf, imagefolder, webdataset (and 2 more problems)" in _err(copy.deepcopy(RAW))


def test_list_shows_the_toys(toys, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "embedders: clip, phi3v, phi3v-lm, toy\n" in out
    assert "datasets: coco_captions, coco_instances, coco_karpathy, flickr30k_karpathy, hf, imagefolder, " \
           "toy_folder, webdataset\n" in out


def test_embed_offers_the_toy_and_its_option(toys, tmp_path, capsys):
    from PIL import Image
    from safetensors.torch import load_file

    args = build_parser().parse_args(["embed", "toy", "--model", "m", "--images", "i", "--output", "o",
                                      "--bins", "3"])
    assert args.type == "toy" and args.bins == 3
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (20, 12), (250, 10, 130)).save(images / "a.png")
    out = tmp_path / "toy.safetensors"
    base = ["embed", "toy", "--model", "m", "--images", str(images), "--output", str(out), "--device", "cpu"]
    assert main([*base, "--bins", "3"]) == 0
    vec = load_file(str(out))["a.png"]
    # A solid colour has one histogram bin: (250, 10, 130) at 3 levels -> (2, 0, 1) -> bin (2*3+0)*3+1 = 19.
    assert vec.shape == (27,) and vec[19] == 1.0 and float(vec.abs().sum()) == 1.0
    assert main([*base, "--pooling", "mean"]) == 2
    assert "--pooling does not apply to 'toy' (only to phi3v)" in capsys.readouterr().err
    assert main([*base, "--bins", "0"]) == 2
    assert "toy: bins: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_a_run_uses_the_toys(toys, tmp_path, synthetic_dir):
    import json

    from bench.runner import run_benchmark

    model = tmp_path / "toy-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    raw = copy.deepcopy(RAW)
    raw.update(output_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
               runtime={"device": "cpu", "num_workers": 0})
    raw["datasets"] = {"train": {"type": "toy_folder", "root": str(synthetic_dir / "imagefolder/train")},
                       "test": {"type": "toy_folder", "root": str(synthetic_dir / "imagefolder/test")}}
    raw["embedders"][0]["model"] = str(model)
    out = run_benchmark(parse_config(raw), "toy.yaml", progress=False, out_dir=tmp_path / "run", render=False)
    res = json.loads((out / "results.json").read_text())
    top1 = [m for m in res["metrics"] if m["key"] == "probe/top1"]
    assert len(top1) == 1 and top1[0]["embedder"] == "toy" and 0 <= top1[0]["value"] <= 100
    assert top1[0]["unit"] == "%" and top1[0]["higher_is_better"] is True and top1[0]["kind"] == "quality"
    assert res["datasets"]["train"]["type"] == "toy_folder"
    # Every record was made by the MetricSpec its task declares (the load time by the runner's).
    from bench.runner import LOAD
    from bench.tasks import metric_specs

    specs = {**metric_specs(), "load": (LOAD,)}
    for m in res["metrics"]:
        spec = next(s for s in specs[m["task"]] if s.matches(m["key"]))
        assert (m["unit"], m["higher_is_better"], m["kind"]) == (spec.unit, spec.higher_is_better, spec.kind)


def test_metric_specs_match_their_keys():
    from bench.tasks import metric_specs

    specs = metric_specs()
    recall = specs["retrieval"][0]
    assert recall.matches("retrieval/i2t_recall@5") and not recall.matches("retrieval/i2t_recall@5/x")
    rec = recall.record("clip", "retrieval", "caps", 41.5, num_items=100, direction="t2i", k=10)
    assert (rec.key, rec.unit, rec.higher_is_better, rec.kind, rec.num_items) == \
        ("retrieval/t2i_recall@10", "%", True, "quality", 100)
    na = recall.na("phi3v", "retrieval", "caps", "image-only", direction="i2t", k=1)
    assert na.value is None and na.na_reason == "image-only" and na.key == "retrieval/i2t_recall@1"
    keys = [s.key for ss in specs.values() for s in ss]
    assert "speed/images_per_s" in keys and "probe/{name}" in keys and len(keys) == len(set(keys))


def test_every_registered_name_is_its_params_type():
    from bench.params import typing_args

    for kind in registry.KINDS:
        for name in registry.names(kind):
            model = registry.params_model(kind, name)
            assert name in typing_args(model.model_fields["type"].annotation), (kind, name)


def test_parameter_models_and_component_modules_import_without_torch():
    """bench validate reaches every parameter model: the modules that hold them stay torch-free."""
    code = ("import sys; from bench import registry\n"
            "for kind in registry.KINDS:\n"
            "    for name in registry.names(kind):\n"
            "        registry.params_model(kind, name); registry.resolve(kind, name)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'sklearn') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


# ---- devices: cuda:N wherever a device is named ---------------------------------------------------------
def test_runtime_device_accepts_cuda_n():
    base = {"name": "x", "datasets": {}, "embedders": [{"type": "clip", "model": "m"}],
            "tasks": [{"type": "speed", "dataset": "d"}]}
    base["datasets"]["d"] = {"type": "imagefolder", "root": "r"}
    for dev in ("auto", "cpu", "cuda", "cuda:0", "cuda:3"):
        assert parse_config({**base, "runtime": {"device": dev}}).runtime.device == dev
    for bad in ("gpu", "cuda:", "cuda:x", "CUDA", "cuda0"):
        msg = _err({**base, "runtime": {"device": bad}})
        assert f"runtime.device: invalid value {bad!r}; allowed: 'auto', 'cpu' or 'cuda'" in msg


def test_embed_device_accepts_cuda_n(capsys):
    args = build_parser().parse_args(["embed", "clip", "--model", "m", "--images", "i", "--output", "o",
                                      "--device", "cuda:1"])
    assert args.device == "cuda:1"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["embed", "clip", "--model", "m", "--images", "i", "--output", "o",
                                   "--device", "gpu"])
    assert "invalid value 'gpu'" in capsys.readouterr().err


def test_resolve_device_checks_the_gpu_number(monkeypatch):
    import torch

    from bench.environment import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device("auto") == "cuda"
    with pytest.raises(ConfigError, match=r"'cuda:2' but this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda:0")


# ---- each rule once, in the parameter model ----------------------------------------------------------
def test_embedder_rules_live_in_the_params():
    from bench.embedders.phi3v import Phi3VParams
    from bench.embedders.phi3v_lm import TEMPLATES, Phi3VLMEmbedder, Phi3VLMParams

    custom = Phi3VLMParams(model="m", template="custom", image_prompt="<|image_1|> x",
                           text_prompt="q: {text}")
    assert custom.prompts() == ("<|image_1|> x", "q: {text}")
    e5v = Phi3VLMParams(model="m", template="e5v")
    assert e5v.prompts() == (TEMPLATES["e5v"]["image"], TEMPLATES["e5v"]["text"])
    # Refused by the parameter model, before any file is looked at ("m" does not exist).
    with pytest.raises(ConfigError, match=r"image_prompt must contain '<\|image_1\|>' exactly once.*found 2"):
        Phi3VLMEmbedder("m", image_prompt="<|image_1|> <|image_2|>")
    # pooling 'tokens' is an export format: bench embed takes it, a config does not.
    assert Phi3VParams.embed_model()(model="m", pooling="tokens").pooling == "tokens"
    base = {"name": "x", "datasets": {"d": {"type": "imagefolder", "root": "r"}},
            "tasks": [{"type": "speed", "dataset": "d"}]}
    msg = _err({**base, "embedders": [{"type": "phi3v", "model": "m", "pooling": "tokens"}]})
    assert "embedders[0].pooling: invalid value 'tokens'; allowed: 'mean', 'global' or 'clip'" in msg
