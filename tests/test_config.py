"""Config validation: every kind of mistake gets one line naming the key path and allowed values."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.config import find_config, load_config, parse_config
from bench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "name": "t",
    "datasets": {
        "caps": {"type": "coco_karpathy", "annotations": "a.json", "images": "img"},
        "folder": {"type": "imagefolder", "root": "r"},
    },
    "embedders": [{"type": "clip", "model": "m"}, {"type": "phi3v", "model": "p"}],
    "tasks": [{"type": "retrieval", "dataset": "caps"}],
}


def _err(**over) -> str:
    raw = copy.deepcopy(BASE)
    raw.update(over)
    with pytest.raises(ConfigError) as e:
        parse_config(raw, source="x.yaml")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("x.yaml: ")
    return msg


def test_valid_base_parses_with_defaults():
    cfg = parse_config(copy.deepcopy(BASE))
    assert cfg.runtime.device == "auto" and cfg.runtime.batch_size == 16
    assert [e.label for e in cfg.embedders] == ["clip", "phi3v"]
    assert cfg.embedders[1].pooling == "mean"
    assert cfg.embedders[0].params() == {"model": "m", "revision": None}


@pytest.mark.parametrize("over, expected", [
    ({"nmae": "x"}, "unknown key 'nmae'; did you mean 'name'? allowed here:"),
    ({"runtime": {"devcie": "cpu"}}, "unknown key 'runtime.devcie'; did you mean 'device'?"),
    ({"runtime": {"device": "gpu"}}, "runtime.device: invalid value 'gpu'; allowed: 'auto', 'cpu' or 'cuda'"),
    ({"runtime": {"batch_size": "big"}}, "runtime.batch_size: Input should be a valid integer"),
    ({"runtime": {"batch_size": 0}}, "runtime.batch_size: Input should be greater than or equal to 1"),
    ({"runtime": {"dtype": "fp8"}}, "runtime.dtype: invalid value 'fp8'; allowed: 'float32', 'bfloat16' or 'float16'"),
    ({"embedders": [{"type": "clp", "model": "m"}]},
     "embedders[0].type: unknown embedder 'clp'; did you mean 'clip'? known: clip, phi3v, phi3v-lm"),
    ({"embedders": [{"model": "m"}]}, "embedders[0]: missing 'type'; allowed embedder types: clip, phi3v, phi3v-lm"),
    ({"embedders": [{"type": "clip"}]}, "missing required key 'embedders[0].model'"),
    ({"embedders": [{"type": "clip", "model": "m", "pooling": "mean"}]},
     "unknown key 'embedders[0].pooling' allowed here: model, name, revision, type"),
    ({"embedders": [{"type": "phi3v", "model": "m", "pooling": "max"}]},
     "embedders[0].pooling: invalid value 'max'; allowed: 'mean', 'global' or 'clip'"),
    ({"embedders": [{"type": "phi3v", "model": "m", "num_crops": 0}]}, "embedders[0].num_crops"),
    ({"embedders": [{"type": "phi3v-lm", "model": "m", "template": "custom"}]},
     "template 'custom' needs both image_prompt and text_prompt"),
    ({"embedders": [{"type": "phi3v-lm", "model": "m", "text_prompt": "no slot"}]}, "must contain '{text}'"),
    ({"embedders": [{"type": "clip", "model": "m"}, {"type": "clip", "model": "n"}]},
     "embedders: names must be unique; 'clip' appears twice"),
    ({"embedders": []}, "embedders: List should have at least 1 item"),
    ({"datasets": {"caps": {"type": "coco_karpaty", "annotations": "a", "images": "i"}}},
     "datasets.caps.type: unknown dataset 'coco_karpaty'; did you mean 'coco_karpathy'?"),
    ({"datasets": {"caps": {"type": "coco_karpathy", "annotations": "a", "images": "i", "splt": "test"}}},
     "unknown key 'datasets.caps.splt'; did you mean 'split'?"),
    ({"datasets": {"caps": {"type": "coco_karpathy", "annotations": "a", "images": "i", "split": "dev"}}},
     "datasets.caps.split: invalid value 'dev'; allowed: 'train', 'val', 'test', 'restval' or 'train+restval'"),
    ({"tasks": [{"type": "retreival", "dataset": "caps"}]},
     "tasks[0].type: unknown task 'retreival'; did you mean 'retrieval'?"),
    ({"tasks": [{"type": "retrieval", "dataset": "cpas"}]},
     "tasks[0].dataset: unknown dataset 'cpas'; did you mean 'caps'? defined: caps, folder"),
    ({"tasks": [{"type": "retrieval", "dataset": "folder"}]},
     "tasks[0].dataset: task 'retrieval' needs a dataset of type coco_captions|coco_karpathy|flickr30k_karpathy"),
    ({"tasks": [{"type": "linear_probe", "train": "folder", "test": "caps"}]}, "tasks[0].test: task 'linear_probe'"),
    ({"tasks": [{"type": "zeroshot", "dataset": "folder", "templates": ["a photo"]}]},
     "tasks[0].templates: template 'a photo' has no '{c}' slot"),
    ({"tasks": [{"type": "speed", "dataset": "caps", "num_images": -1}]}, "tasks[0].num_images"),
    ({"name": "has space"}, "name: String should match pattern"),
    ({"regression": {"speed_rel": 0.1}}, "unknown key 'regression.speed_rel'; did you mean 'speed_rel_tol'?"),
])
def test_bad_config_messages(over, expected):
    assert expected in _err(**over)


def test_missing_top_level_key():
    raw = copy.deepcopy(BASE)
    del raw["tasks"]
    with pytest.raises(ConfigError, match="missing required key 'tasks'"):
        parse_config(raw)


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndatasets: {a: [\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_config(p)


def test_top_level_not_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


def test_env_expansion(tmp_path, monkeypatch):
    raw = copy.deepcopy(BASE)
    raw["datasets"]["caps"]["annotations"] = "${MY_ROOT}/a.json"
    raw["datasets"]["caps"]["images"] = "${UNSET_VAR_X:-/default}/img"
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("MY_ROOT", "/data/coco")
    cfg = load_config(p)
    assert str(cfg.datasets["caps"].annotations) == "/data/coco/a.json"
    assert str(cfg.datasets["caps"].images) == "/default/img"
    monkeypatch.delenv("MY_ROOT")
    with pytest.raises(ConfigError, match=r"datasets.caps.annotations: environment variable \$\{MY_ROOT\} is not set"):
        load_config(p)


def test_find_config_bare_name_and_typo():
    assert find_config("demo", ROOT / "configs").name == "demo.yaml"
    assert find_config("demo.yaml", ROOT / "configs").name == "demo.yaml"
    with pytest.raises(ConfigError, match="did you mean 'demo.yaml'"):
        find_config("dmeo.yaml", ROOT / "configs")


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.embedders and cfg.tasks


def test_cli_validate_exit_code_2_one_line(tmp_path):
    raw = copy.deepcopy(BASE)
    raw["embedders"][0]["type"] = "clp"
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "bench", "validate", str(p)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "unknown embedder 'clp'; did you mean 'clip'?" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_validate_missing_file_is_error(tmp_path):
    raw = copy.deepcopy(BASE)
    raw["datasets"] = {"caps": {"type": "coco_karpathy", "annotations": str(tmp_path / "nope.json"),
                                "images": str(tmp_path)}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "bench", "validate", str(p)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert "datasets.caps.annotations: file not found" in r.stderr
    r = subprocess.run([sys.executable, "-m", "bench", "validate", "--no-files", str(p)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_validate_does_not_import_torch():
    code = ("import sys; from bench.cli import main; main(['validate', '--no-files', 'configs/demo.yaml']); "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip().endswith("False"), r.stdout + r.stderr


def test_missing_data_path_names_the_variable_to_set(tmp_path, monkeypatch):
    """A path built from ${VAR:-default} that does not exist says whether VAR was set and what to do."""
    from bench.config import check_paths

    (tmp_path / "img").mkdir()
    (tmp_path / "a.json").write_text("{}")
    for m in ("m", "p"):  # check_paths also checks the model folders
        (tmp_path / m).mkdir()
        (tmp_path / m / "config.json").write_text("{}")
    raw = copy.deepcopy(BASE)
    raw["datasets"] = {"caps": {"type": "coco_karpathy", "annotations": "${DATA_ROOT_T:-nowhere}/a.json",
                                "images": str(tmp_path / "img")}}
    raw["embedders"] = [{"type": "clip", "model": str(tmp_path / "m")},
                        {"type": "phi3v", "model": str(tmp_path / "p")}]
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))

    monkeypatch.delenv("DATA_ROOT_T", raising=False)
    with pytest.raises(ConfigError) as e:
        check_paths(load_config(p))
    assert str(e.value).startswith("datasets.caps.annotations: file not found: nowhere/a.json (DATA_ROOT_T not set")
    assert f"or change the path in {p}" in str(e.value)

    monkeypatch.setenv("DATA_ROOT_T", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match=r"from DATA_ROOT_T=.*elsewhere: put the file there"):
        check_paths(load_config(p))

    monkeypatch.setenv("DATA_ROOT_T", str(tmp_path))
    check_paths(load_config(p))  # found: no error

    raw["datasets"]["caps"]["annotations"] = str(tmp_path / "gone.json")
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"file not found: .*gone.json \(put the file there, or change the path in "):
        check_paths(load_config(p))
