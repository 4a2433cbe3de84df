"""Typos that used to slip through (issue 10, items 4 and 7): strict numbers, `ks`, model folders
and data paths of the wrong kind. Each is exit 2 with one stderr line naming the key."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.config import parse_config
from bench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "name": "t",
    "datasets": {"caps": {"type": "coco_karpathy", "annotations": "a.json", "images": "img"},
                 "folder": {"type": "imagefolder", "root": "r"}},
    "embedders": [{"type": "clip", "model": "m"}],
    "tasks": [{"type": "retrieval", "dataset": "caps"}],
}


def _parse(**over) -> str:
    raw = copy.deepcopy(BASE)
    for path, value in over.items():  # "tasks.0.ks" -> raw["tasks"][0]["ks"]
        node, parts = raw, path.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
        node[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value
    with pytest.raises(ConfigError) as e:
        parse_config(raw, source="x.yaml")
    assert "\n" not in str(e.value)
    return str(e.value)


def _cli(capsys, *args: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main(list(args))
    return rc, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


@pytest.mark.parametrize("key, value, expected", [
    ("runtime.batch_size", "8", "runtime.batch_size: Input should be a valid integer (got '8')"),
    ("runtime.batch_size", True, "runtime.batch_size: Input should be a valid integer (got True)"),
    ("runtime.batch_size", 8.0, "runtime.batch_size: Input should be a valid integer (got 8.0)"),
    ("runtime.num_workers", False, "runtime.num_workers: Input should be a valid integer (got False)"),
    ("runtime.seed", "0", "runtime.seed: Input should be a valid integer"),
    ("runtime.compile", "yes", "runtime.compile: Input should be a valid boolean (got 'yes')"),
    ("tasks.0.ks", "5", "tasks[0].ks: Input should be a valid list (got '5')"),
    ("tasks.0.ks", 5, "tasks[0].ks: Input should be a valid list (got 5)"),
    ("tasks.0.ks", True, "tasks[0].ks: Input should be a valid list (got True)"),
    ("tasks.0.ks", [1, 5.0], "tasks[0].ks[1]: Input should be a valid integer (got 5.0)"),
    ("tasks.0.ks", [True, 5], "tasks[0].ks[0]: Input should be a valid integer (got True)"),
    ("tasks.0.ks", ["5"], "tasks[0].ks[0]: Input should be a valid integer (got '5')"),
    ("tasks.0.ks", [], "tasks[0].ks: ks is empty: list at least one k, e.g. [1, 5, 10]"),
    ("tasks.0.ks", [1, 5, 5], "tasks[0].ks: ks lists 5 twice"),
    ("tasks.0.ks", [0], "tasks[0].ks[0]: Input should be greater than or equal to 1"),
    ("tasks.0.chunk_size", 512.0, "tasks[0].chunk_size: Input should be a valid integer"),
    ("datasets.caps.max_images", True,
     "datasets.caps.max_images: Input should be a valid integer (got True)"),
    ("datasets.caps.on_bad_image", "ignore", "datasets.caps.on_bad_image: invalid value 'ignore'; allowed: "
                                             "'error' or 'skip'"),
    ("embedders.0", {"type": "phi3v", "model": "m", "num_crops": 4.0},
     "embedders[0].num_crops: Input should be a valid integer (got 4.0)"),
    ("regression.quality_abs_tol", "0.5",
     "regression.quality_abs_tol: Input should be a valid number (got '0.5')"),
    ("regression.quality_abs_tol", True, "regression.quality_abs_tol: Input should be a valid number"),
    ("synthetic", "true", "synthetic: Input should be a valid boolean (got 'true')"),
])
def test_strict_numbers_and_ks(key, value, expected):
    assert expected in _parse(**{key: value})


def test_floats_still_take_integers_and_ints_take_ints():
    raw = copy.deepcopy(BASE)
    raw["regression"] = {"quality_abs_tol": 1, "per_metric": {"retrieval/i2t_recall@1": 2}}
    raw["runtime"] = {"batch_size": 8, "compile": True}
    raw["tasks"] = [{"type": "retrieval", "dataset": "caps", "ks": [1, 5]},
                    {"type": "speed", "dataset": "caps", "min_time_s": 1, "num_images": 4}]
    cfg = parse_config(raw)
    assert cfg.regression.quality_abs_tol == 1.0 and cfg.runtime.batch_size == 8 and cfg.tasks[0].ks == [1, 5]
    assert cfg.datasets["caps"].on_bad_image == "error" and cfg.datasets["folder"].on_bad_image == "error"


def test_cli_validate_strict_int_is_one_line(tmp_path):
    raw = copy.deepcopy(BASE)
    raw["runtime"] = {"batch_size": "8"}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "bench", "validate", "--no-files", str(p)], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "runtime.batch_size: Input should be a valid integer (got '8')" in r.stderr


def test_every_shipped_config_validates_through_the_cli(capsys):
    configs = sorted(str(p) for p in (ROOT / "configs").glob("*.yaml"))
    assert configs
    rc, err = _cli(capsys, "validate", "--no-files", *configs)
    assert rc == 0, err


# ----------------------------------------------------------------------------------------------
# the files a config names: right kind, and the model folders


@pytest.fixture
def files(tmp_path, tiny_clip_dir):
    (tmp_path / "img").mkdir()
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "r" / "cls").mkdir(parents=True)
    raw = copy.deepcopy(BASE)
    raw["datasets"] = {"caps": {"type": "coco_karpathy", "annotations": str(tmp_path / "a.json"),
                                "images": str(tmp_path / "img")},
                       "folder": {"type": "imagefolder", "root": str(tmp_path / "r")}}
    raw["embedders"] = [{"type": "clip", "model": str(tiny_clip_dir)}]

    def write(raw_cfg: dict) -> str:
        p = tmp_path / "c.yaml"
        p.write_text(yaml.safe_dump(raw_cfg))
        return str(p)

    return tmp_path, raw, write


def test_validate_ok_when_everything_is_there(capsys, files):
    _, raw, write = files
    rc, err = _cli(capsys, "validate", write(raw))
    assert rc == 0, err


def test_validate_reports_a_missing_model_folder(capsys, files):
    tmp, raw, write = files
    raw["embedders"].append({"type": "phi3v", "model": str(tmp / "no_such_model")})
    rc, err = _cli(capsys, "validate", write(raw))
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("bench: error: embedders[1].model: model folder not found: "
                             f"{tmp / 'no_such_model'}")
    # --no-files skips the I/O half, models included
    assert _cli(capsys, "validate", "--no-files", write(raw))[0] == 0


def test_validate_reports_a_model_that_is_a_file_or_lacks_config_json(capsys, files):
    tmp, raw, write = files
    (tmp / "weights.bin").write_bytes(b"x")
    raw["embedders"] = [{"type": "clip", "model": str(tmp / "weights.bin")}]
    rc, err = _cli(capsys, "validate", write(raw))
    assert rc == 2 and len(err) == 1, err
    assert "embedders[0].model: model path" in err[0] and "is a file" in err[0], err
    (tmp / "empty_model").mkdir()
    raw["embedders"] = [{"type": "clip", "model": str(tmp / "empty_model")}]
    rc, err = _cli(capsys, "validate", write(raw))
    assert rc == 2 and len(err) == 1 and "embedders[0].model: model folder" in err[0] and \
        "missing config.json" in err[0], err


def test_validate_reports_an_uncached_hub_id_and_its_variable(capsys, files, monkeypatch):
    tmp, raw, write = files
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp / "hf"))
    monkeypatch.delenv("MODEL_T", raising=False)
    raw["embedders"] = [{"type": "clip", "model": "${MODEL_T:-someorg/some-model}"}]
    rc, err = _cli(capsys, "validate", write(raw))
    assert rc == 2 and len(err) == 1, err
    assert "embedders[0].model: model 'someorg/some-model' not found offline" in err[0]
    assert "(MODEL_T not set, so its default was used: set MODEL_T" in err[0]


@pytest.mark.parametrize("key, make, expected", [
    ("annotations", "dir", "datasets.caps.annotations: {p} is a folder, not a file: 'annotations' must "
                           "name the annotation .json file itself, e.g. {p}/dataset_coco.json "
                           "({p} holds x.json)"),
    ("images", "file", "datasets.caps.images: {p} is a file, not a folder: 'images' must be the folder "
                       "that holds the images"),
    ("root", "file", "datasets.folder.root: {p} is a file, not a folder: 'root' must be the folder that "
                     "holds one sub-folder per class"),
])
def test_data_path_of_the_wrong_kind_says_so(capsys, files, key, make, expected):
    tmp, raw, write = files
    p = tmp / "demo" / "thing"  # 'demo' in the path used to make it say "run `make data`"
    if make == "dir":
        p.mkdir(parents=True)
        (p / "x.json").write_text("{}")
    else:
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
    raw["datasets"]["folder" if key == "root" else "caps"][key] = str(p)
    rc, err = _cli(capsys, "validate", write(raw))
    assert rc == 2 and len(err) == 1, err
    assert err[0] == "bench: error: " + expected.format(p=p)


def test_loaders_say_images_is_a_file(tmp_path):
    from bench.data.coco import load_karpathy
    from bench.errors import DataError

    ann = tmp_path / "k.json"
    entry = {"filename": "a.jpg", "split": "test", "sentences": [{"raw": "a"}]}
    ann.write_text(json.dumps({"images": [entry]}))
    (tmp_path / "img.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match=r"'images' path .*img.jpg is a file, not a folder"):
        load_karpathy("k", ann, tmp_path / "img.jpg")


# ----------------------------------------------------------------------------------------------
# ks against the gallery, at run start


def _run_cfg(tmp: Path, synthetic_dir: Path, clip: Path, ks) -> Path:
    cfg = {"name": "ks", "output_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache"),
           "runtime": {"device": "cpu", "num_workers": 0},
           "datasets": {"caps": {"type": "coco_karpathy",
                                 "annotations": str(synthetic_dir / "dataset_coco.json"),
                                 "images": str(synthetic_dir / "images"), "split": "test"}},
           "embedders": [{"type": "clip", "model": str(clip)}],
           "tasks": [{"type": "retrieval", "dataset": "caps", "ks": ks}]}
    p = tmp / "ks.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_ks_beyond_the_gallery_is_refused_before_any_output(capsys, tmp_path, synthetic_dir, tiny_clip_dir):
    p = _run_cfg(tmp_path, synthetic_dir, tiny_clip_dir, [1, 5, 1000])  # 24 test images
    rc, err = _cli(capsys, "run", str(p), "--no-progress")
    assert rc == 2 and len(err) == 1, err
    assert err[0] == ("bench: error: tasks[0].ks: k=1000 is not below the 24 images of dataset 'caps', so "
                      "recall@1000 would be 100% whatever the model; use ks below 24")
    assert not (tmp_path / "runs").exists()
    # k = N is trivial too (the whole gallery is in the top N); N - 1 is the largest allowed
    p = _run_cfg(tmp_path, synthetic_dir, tiny_clip_dir, [24])
    assert _cli(capsys, "run", str(p), "--no-progress")[0] == 2


def test_empty_ks_is_refused_by_validate_and_run(capsys, tmp_path, synthetic_dir, tiny_clip_dir):
    p = _run_cfg(tmp_path, synthetic_dir, tiny_clip_dir, [])
    for cmd in ("validate", "run"):
        rc, err = _cli(capsys, cmd, str(p))
        assert rc == 2 and len(err) == 1 and "tasks[0].ks: ks is empty" in err[0], (cmd, err)
    assert not (tmp_path / "runs").exists()
