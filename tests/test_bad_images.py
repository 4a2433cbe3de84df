"""`on_bad_image: skip` and repeated Karpathy entries (issue 10, item 7).

The claim to test: skipping drops each unreadable image together with its captions or labels and
never misaligns them, and a repeated image is never counted twice. The independent route: the same
run on annotation files written without the bad image and the repeat must give the same figures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from bench.cli import main
from bench.data.base import CaptionDataset, LabelledDataset, drop_unreadable
from bench.errors import DataError


def _truncated_jpeg(src: Path, dst: Path) -> None:
    """Half a JPEG: PIL's cheap verify() passes it, a full decode fails (the check must decode)."""
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def twin_datasets(tmp_path_factory, synthetic_dir):
    """Two copies of the synthetic test data: A with a bad image per dataset (and a repeated
    Karpathy entry), B the same data written without them. Returns (tmp, A paths, B paths, facts)."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("bad_images")
    src = synthetic_dir
    facts = {}
    out = {}
    for side in ("A", "B"):
        root = tmp / side
        shutil.copytree(src / "images" / "test", root / "images" / "test")
        shutil.copytree(src / "images" / "test", root / "inst_images")  # its own copy: one victim each
        shutil.copytree(src / "images" / "train", root / "images" / "train")
        shutil.copytree(src / "imagefolder" / "test", root / "fold")
        out[side] = root

    # Karpathy: the victim sits in the middle, so a misalignment would shift every later caption.
    kar = json.loads((src / "dataset_coco.json").read_text())
    test = [e for e in kar["images"] if e["split"] == "test"]
    victim = test[9]
    repeat = dict(test[3], sentences=[{"raw": "a caption only the repeated entry has"}])
    a_entries = test[:14] + [repeat] + test[14:]
    _truncated_jpeg(out["A"] / "images" / "test" / victim["filename"],
                    out["A"] / "images" / "test" / victim["filename"])
    with Image.open(src / "images" / "test" / victim["filename"]) as im:
        im.verify()  # the original is fine
    (out["A"] / "kar.json").write_text(json.dumps({"images": a_entries}))
    (out["B"] / "kar.json").write_text(json.dumps({"images": [e for e in test if e is not victim]}))
    facts["victim_captions"] = len(victim["sentences"])
    facts["n_test"] = len(test)

    # COCO instances (multi-label probe target): an empty file in A; B's file lists the other images.
    inst = json.loads((src / "annotations" / "instances_test.json").read_text())
    annotated = {a["image_id"] for a in inst["annotations"]}
    order = sorted(im["id"] for im in inst["images"] if im["id"] in annotated)
    gone_id = order[len(order) // 2]
    gone = next(im for im in inst["images"] if im["id"] == gone_id)
    (out["A"] / "inst_images" / gone["file_name"]).write_bytes(b"")
    (out["A"] / "inst.json").write_text(json.dumps(inst))
    inst_b = dict(inst, images=[im for im in inst["images"] if im["id"] != gone_id],
                  annotations=[a for a in inst["annotations"] if a["image_id"] != gone_id])
    (out["B"] / "inst.json").write_text(json.dumps(inst_b))
    shutil.copy(src / "annotations" / "instances_train.json", tmp / "inst_train.json")

    # ImageFolder (zero-shot): garbage bytes in A, the file removed in B.
    fold_victim = sorted((out["A"] / "fold").rglob("*.jpg"))[7].relative_to(out["A"] / "fold")
    (out["A"] / "fold" / fold_victim).write_bytes(b"not an image")
    (out["B"] / "fold" / fold_victim).unlink()
    return tmp, out, facts


def _config(tmp: Path, root: Path, clip: Path, skip: bool) -> Path:
    extra = {"on_bad_image": "skip"} if skip else {}
    cfg = {"name": f"skip-{root.name}", "output_dir": str(tmp / "runs"), "cache_dir": str(root / "cache"),
           "runtime": {"device": "cpu", "num_workers": 0, "batch_size": 5},
           "datasets": {
               "caps": {"type": "coco_karpathy", "annotations": str(root / "kar.json"),
                        "images": str(root / "images"), **extra},
               "obj_train": {"type": "coco_instances", "annotations": str(tmp / "inst_train.json"),
                             "images": str(root / "images" / "train")},
               "obj": {"type": "coco_instances", "annotations": str(root / "inst.json"),
                       "images": str(root / "inst_images"), **extra},
               "fold": {"type": "imagefolder", "root": str(root / "fold"), **extra}},
           "embedders": [{"type": "clip", "model": str(clip)}],
           "tasks": [{"type": "retrieval", "dataset": "caps", "ks": [1, 5, 10]},
                     {"type": "linear_probe", "train": "obj_train", "test": "obj"},
                     {"type": "zeroshot", "dataset": "fold", "templates": ["a {c}."]}]}
    p = root / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
def twin_runs(twin_datasets, tiny_clip_dir):
    tmp, roots, facts = twin_datasets
    results = {}
    for side, skip in (("A", True), ("B", False)):
        out = tmp / f"run{side}"
        assert main(["run", str(_config(tmp, roots[side], tiny_clip_dir, skip)), "--no-progress",
                     "--out", str(out)]) == 0
        results[side] = (out, json.loads((out / "results.json").read_text()))
    return results, facts


def test_skip_gives_the_figures_of_the_data_without_the_bad_images(twin_runs):
    results, _ = twin_runs
    (_, a), (_, b) = results["A"], results["B"]
    qa = {(m["dataset"], m["key"]): m["value"] for m in a["metrics"] if m["kind"] == "quality"}
    qb = {(m["dataset"], m["key"]): m["value"] for m in b["metrics"] if m["kind"] == "quality"}
    assert qa.keys() == qb.keys() and len(qa) >= 6 + 1 + 3
    for k, v in qb.items():
        assert v is not None and qa[k] == pytest.approx(v, abs=1e-9), k
    # Same images and captions in the same order: the data fingerprints agree too.
    for name in ("caps", "obj", "fold"):
        assert a["datasets"][name]["fingerprint"] == b["datasets"][name]["fingerprint"], name
        assert a["datasets"][name]["num_images"] == b["datasets"][name]["num_images"], name


def test_skip_and_repeats_are_counted_in_results_and_report(twin_runs):
    results, facts = twin_runs
    out, a = results["A"]
    caps = a["datasets"]["caps"]
    assert caps["num_images"] == facts["n_test"] - 1  # the repeat dropped, the bad image skipped
    assert caps["skipped_images"] == 1 and caps["skipped_captions"] == facts["victim_captions"]
    assert caps["duplicates_dropped"] == 1
    assert a["datasets"]["obj"]["skipped_images"] == 1 and a["datasets"]["fold"]["skipped_images"] == 1
    assert "skipped_captions" not in a["datasets"]["fold"]
    notes = a["notes"]
    skipped = f"skipped 1 unreadable image and {facts['victim_captions']} captions (on_bad_image: skip)"
    assert any(n.startswith(f"dataset 'caps': {skipped}") for n in notes), notes
    assert any("dataset 'caps':" in n and "more than once" in n and "dropped 1 repeat with 1 caption" in n
               for n in notes), notes
    assert any(n.startswith("dataset 'fold': skipped 1 unreadable image and its labels") for n in notes), \
        notes
    report = (out / "report.md").read_text()
    assert "skipped 1 unreadable image" in report and "more than once" in report
    _, b = results["B"]
    assert "skipped_images" not in b["datasets"]["caps"] and "duplicates_dropped" not in b["datasets"]["caps"]


def test_default_is_error(twin_datasets, tiny_clip_dir, capsys):
    tmp, roots, _ = twin_datasets
    p = _config(tmp, roots["A"], tiny_clip_dir, skip=False)
    capsys.readouterr()
    assert main(["run", str(p), "--no-progress", "--out", str(tmp / "run_error")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("bench: error")]
    assert len(err) == 1 and "cannot decode image" in err[0], err


# ----------------------------------------------------------------------------------------------
# drop_unreadable on its own


def _images(tmp: Path, n: int, bad: set[int]) -> list[Path]:
    from PIL import Image

    paths = []
    for i in range(n):
        p = tmp / f"{i}.png"
        if i in bad:
            p.write_bytes(b"\x89PNG broken")
        else:
            Image.new("RGB", (8, 8), (i, 0, 0)).save(p)
        paths.append(p)
    return paths


def test_drop_unreadable_keeps_rows_together(tmp_path):
    paths = _images(tmp_path, 6, bad={1, 4})
    caps = CaptionDataset("c", paths, [[f"{i}a", f"{i}b"] if i % 2 else [f"{i}a"] for i in range(6)],
                          image_ids=[str(10 + i) for i in range(6)])
    out = drop_unreadable(caps, "skip")
    assert out.image_paths == [paths[i] for i in (0, 2, 3, 5)]
    assert out.captions == [["0a"], ["2a"], ["3a", "3b"], ["5a", "5b"]]
    assert out.image_ids == ["10", "12", "13", "15"]
    assert out.skipped == [str(paths[1]), str(paths[4])] and out.skipped_captions == 2 + 1
    texts, owner = out.flat_captions()
    assert [t[0] for t in texts] == [str(o) for o in np.array([0, 2, 3, 3, 5, 5])] and \
        [int(t[0]) for t in texts] == [[0, 2, 3, 5][j] for j in owner]
    assert len(caps) == 6 and caps.skipped == []  # the input is not modified

    labels = np.eye(6, dtype=np.uint8)[:, ::-1]  # row i has a single 1 in column 5 - i
    lab = LabelledDataset("l", paths, labels, [f"k{j}" for j in range(6)], multilabel=True)
    out = drop_unreadable(lab, "skip")
    assert out.labels.tolist() == labels[[0, 2, 3, 5]].tolist() and out.class_names == lab.class_names
    assert "skipped 2 unreadable images and their labels" in out.notes[0]

    single = LabelledDataset("s", paths, np.arange(6, dtype=np.int64), ["a"] * 6)
    assert drop_unreadable(single, "skip").labels.tolist() == [0, 2, 3, 5]


def test_drop_unreadable_error_policy_and_all_bad(tmp_path):
    missing = [tmp_path / "gone.jpg"]
    ds = LabelledDataset("l", missing, np.zeros(1, dtype=np.int64), ["a"])
    assert drop_unreadable(ds, "error") is ds  # 'error' decodes nothing at load time
    with pytest.raises(DataError, match=r"dataset 'l': all 1 images of src.json are unreadable \(first: "):
        drop_unreadable(ds, "skip", "src.json")
    with pytest.raises(DataError, match="on_bad_image must be one of error, skip"):
        drop_unreadable(ds, "ignore")


def test_karpathy_repeats_are_kept_once(tmp_path):
    from bench.data.coco import load_karpathy

    (tmp_path / "img" / "val").mkdir(parents=True)
    _images(tmp_path / "img" / "val", 3, bad=set())
    entries = [{"filepath": "val", "filename": "0.png", "sentences": [{"raw": "zero"}]},
               {"filepath": "val", "filename": "1.png", "sentences": [{"raw": "one"}]},
               {"filepath": "./val", "filename": "0.png", "sentences": [{"raw": "zero again"}]},  # same file
               {"filename": "val/1.png", "sentences": [{"raw": "one again"}, {"raw": "uno"}]},  # same file
               {"filepath": "val", "filename": "2.png", "sentences": [{"raw": "two"}]}]
    ann = tmp_path / "k.json"
    ann.write_text(json.dumps({"images": [dict(e, split="test") for e in entries]}))
    ds = load_karpathy("k", ann, tmp_path / "img")
    assert [p.name for p in ds.image_paths] == ["0.png", "1.png", "2.png"]
    assert ds.captions == [["zero"], ["one"], ["two"]] and ds.duplicates_dropped == 2
    assert ds.notes == [f"dataset 'k': {ann} lists 2 images of split 'test' more than once (first: "
                        f"entry 2, val/0.png, repeats entry 0); kept the first entry of each and dropped 2 "
                        f"repeats with 3 captions, so no image is counted twice in the gallery"]
    # max_images counts distinct images
    assert len(load_karpathy("k", ann, tmp_path / "img", max_images=2)) == 2


def test_coco_file_listed_under_two_ids_is_refused(tmp_path):
    from bench.data.coco import load_coco_captions

    _images(tmp_path, 1, bad=set())
    ann = tmp_path / "c.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "0.png"}, {"id": 2, "file_name": "./0.png"}],
                               "annotations": [{"image_id": 1, "caption": "a"},
                                               {"image_id": 2, "caption": "b"}]}))
    with pytest.raises(DataError, match=r"image file 0.png is listed twice in 'images' \(ids 1 and 2\)"):
        load_coco_captions("c", ann, tmp_path)


def test_imagefolder_link_loop_lists_each_image_once(tmp_path):
    from bench.data.imagefolder import load_imagefolder

    (tmp_path / "root" / "a" / "sub").mkdir(parents=True)
    (tmp_path / "root" / "b").mkdir()
    _images(tmp_path / "root" / "a" / "sub", 2, bad=set())
    _images(tmp_path / "root" / "b", 1, bad=set())
    (tmp_path / "root" / "a" / "sub" / "loop").symlink_to(tmp_path / "root" / "a", target_is_directory=True)
    ds = load_imagefolder("f", tmp_path / "root")
    assert [p.relative_to(tmp_path / "root").as_posix() for p in ds.image_paths] == [
        "a/sub/0.png", "a/sub/1.png", "b/0.png"]
    assert ds.labels.tolist() == [0, 0, 1]
