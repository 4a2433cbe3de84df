"""Paths named inside data and checkpoint files never leave their folder (issue 10, item 5).

Each case goes through the CLI (`bench run` / `bench embed`) and must end with exit 2 and one
stderr line naming the entry, before anything outside the folder is opened.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.errors import DataError, ModelError
from bench.paths import check_relative, safe_join


def _cli(capsys, *args: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main(list(args))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return rc, err


@pytest.mark.parametrize("rel, reason", [
    ("../../../../etc/passwd", "climbs out of its folder with '..'"),
    ("val2014/../../x.jpg", "climbs out"),
    ("..", "climbs out"),
    ("..\\..\\x.jpg", "climbs out"),
    ("/etc/passwd", "is the absolute path '/etc/passwd'"),
    ("C:\\Windows\\x.jpg", "is the absolute path"),
    ("\\\\server\\share\\x.jpg", "is the absolute path"),
    ("", "is empty"),
    ("a\0b.jpg", "NUL byte"),
])
def test_safe_join_refuses_escapes(tmp_path, rel, reason):
    with pytest.raises(DataError, match=rf"^entry 3 .*{reason}") as e:
        safe_join(tmp_path, rel, "entry 3")
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)
    with pytest.raises(ModelError):
        check_relative(rel, "entry 3", tmp_path, ModelError)


@pytest.mark.parametrize("rel", ["a.jpg", "val2014/a.jpg", "./a.jpg", "a..b.jpg", "..a.jpg", "x/.../y.jpg",
                                 12])
def test_safe_join_keeps_names_inside(tmp_path, rel):
    assert safe_join(tmp_path, rel, "entry") == tmp_path / str(rel)


# ----------------------------------------------------------------------------------------------
# datasets, through `bench run`


@pytest.fixture
def layout(tmp_path):
    """images/ with two real images, and a real image *outside* it (the '../' target)."""
    from PIL import Image

    img = tmp_path / "data" / "images"
    (img / "val2014").mkdir(parents=True)
    files = [img / "val2014" / "a.jpg", img / "val2014" / "b.jpg", tmp_path / "data" / "secret.jpg"]
    for i, p in enumerate(files):
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(p)
    return tmp_path, img


def _run_config(tmp_path: Path, dataset: dict, model: Path) -> Path:
    cfg = {"name": "esc", "output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
           "runtime": {"device": "cpu", "num_workers": 0},
           "datasets": {"d": dataset},
           "embedders": [{"type": "clip", "model": str(model)}],
           "tasks": [{"type": "retrieval", "dataset": "d", "ks": [1]}]}
    p = tmp_path / "esc.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _karpathy(entries: list[dict]) -> dict:
    return {"images": [dict(e, split="test", sentences=[{"raw": f"caption {i}"}])
                       for i, e in enumerate(entries)]}


@pytest.mark.parametrize("bad, named", [
    ({"filepath": "val2014", "filename": "../../../../etc/passwd"},
     r"image entry 1's 'filename' '../../../../etc/passwd' climbs out of its folder with '..'"),
    # a real image outside the images folder: it exists, and must still be refused
    ({"filepath": "val2014", "filename": "../../secret.jpg"},
     r"image entry 1's 'filename' '../../secret.jpg'"),
    ({"filename": "../secret.jpg"}, r"image entry 1's 'filename' '../secret.jpg' climbs out"),
    ({"filepath": "..", "filename": "secret.jpg"}, r"image entry 1's 'filepath' '..' climbs out"),
    ({"filepath": "/etc", "filename": "passwd"}, r"image entry 1's 'filepath' is the absolute path '/etc'"),
    ({"filename": "/etc/passwd"}, r"image entry 1's 'filename' is the absolute path '/etc/passwd'"),
])
def test_karpathy_path_escaping_images_is_refused(capsys, layout, tiny_clip_dir, bad, named):
    tmp, img = layout
    ann = tmp / "data" / "dataset_coco.json"
    ann.write_text(json.dumps(_karpathy([{"filepath": "val2014", "filename": "a.jpg"}, bad,
                                         {"filepath": "val2014", "filename": "b.jpg"}])))
    ds = {"type": "coco_karpathy", "annotations": str(ann), "images": str(img)}
    p = _run_config(tmp, ds, tiny_clip_dir)
    rc, err = _cli(capsys, "run", str(p), "--no-progress")
    assert rc == 2
    assert len(err) == 1, err
    assert re.search(named, err[0]) and str(ann) in err[0], err[0]
    assert not (tmp / "runs").exists()  # refused while loading, before any output


@pytest.mark.parametrize("kind", ["coco_captions", "coco_instances"])
@pytest.mark.parametrize("file_name, named", [
    ("../secret.jpg", r"image id 7's 'file_name' '../secret.jpg' climbs out of its folder with '..'"),
    ("/etc/passwd", r"image id 7's 'file_name' is the absolute path '/etc/passwd'"),
])
def test_coco_file_name_escaping_images_is_refused(capsys, layout, tiny_clip_dir, kind, file_name, named):
    tmp, img = layout
    obj = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 7, "file_name": file_name}],
           "annotations": [{"image_id": 1, "caption": "x", "category_id": 1},
                           {"image_id": 7, "caption": "y", "category_id": 1}],
           "categories": [{"id": 1, "name": "thing"}]}
    ann = tmp / "data" / "coco.json"
    ann.write_text(json.dumps(obj))
    p = _run_config(tmp, {"type": kind, "annotations": str(ann), "images": str(img / "val2014")},
                    tiny_clip_dir)
    if kind == "coco_instances":  # retrieval needs captions: probe the instances instead
        cfg = yaml.safe_load(p.read_text())
        cfg["tasks"] = [{"type": "linear_probe", "train": "d", "test": "d"}]
        p.write_text(yaml.safe_dump(cfg))
    rc, err = _cli(capsys, "run", str(p), "--no-progress")
    assert rc == 2 and len(err) == 1, err
    assert re.search(named, err[0]) and str(ann) in err[0], err[0]


def test_symlinked_folder_inside_images_is_followed(layout):
    """The check is lexical: a link inside the images folder (a sub-folder on another disk) is used."""
    from bench.data.coco import load_karpathy

    tmp, img = layout
    elsewhere = tmp / "other_disk" / "val2017"
    elsewhere.mkdir(parents=True)
    shutil.copy(img / "val2014" / "a.jpg", elsewhere / "c.jpg")
    (img / "val2017").symlink_to(elsewhere, target_is_directory=True)
    ann = tmp / "k.json"
    ann.write_text(json.dumps(_karpathy([{"filepath": "val2017", "filename": "c.jpg"}])))
    ds = load_karpathy("k", ann, img)
    assert ds.image_paths == [img / "val2017" / "c.jpg"]


# ----------------------------------------------------------------------------------------------
# the Phi-3-V safetensors index, through `bench embed`


@pytest.mark.parametrize("shard, named", [
    ("../model-00001-of-00002.safetensors", r"weight_map entry '{key}' -> shard "
                                            r"'../model-00001-of-00002.safetensors' climbs out"),
    ("/etc/passwd", r"weight_map entry '{key}' -> shard is the absolute path '/etc/passwd'"),
])
def test_weight_map_entry_escaping_the_checkpoint_is_refused(capsys, tmp_path, tiny_phi3v_dir, layout, shard,
                                                             named):
    _, img = layout
    # The copy's parent holds a real shard, so a '../' entry would open a file that exists.
    ckpt = tmp_path / "ckpt" / "phi"
    shutil.copytree(tiny_phi3v_dir, ckpt)
    shutil.copy(ckpt / "model-00001-of-00002.safetensors", tmp_path / "ckpt")
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    key = sorted(k for k in index["weight_map"] if k.startswith("model.vision_embed_tokens."))[0]
    index["weight_map"][key] = shard
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    rc, err = _cli(capsys, "embed", "phi3v", "--model", str(ckpt), "--images", str(img), "--output",
                   str(tmp_path / "out.safetensors"), "--device", "cpu", "--num-workers", "0")
    assert rc == 2 and len(err) == 1, err
    assert re.search(named.format(key=re.escape(key)), err[0]), err[0]
    assert "model.safetensors.index.json" in err[0]
    assert not (tmp_path / "out.safetensors").exists()
