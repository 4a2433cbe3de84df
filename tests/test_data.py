"""Data layer: the synthetic generator, and the COCO / Karpathy / ImageFolder loaders."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from bench.data.coco import load_coco_captions, load_coco_instances, load_karpathy
from bench.data.imagefolder import load_imagefolder
from bench.demo.synthetic import COLOURS, KINDS, caption_vocabulary, make_synthetic
from bench.errors import DataError

N = {"train": 48, "val": 16, "test": 24}  # what tests/conftest.py asks for


def _karpathy(d: Path, split: str, **kw):
    return load_karpathy("syn", annotations=d / "dataset_coco.json", images=d / "images", split=split, **kw)


def _captions(d: Path, split: str, **kw):
    return load_coco_captions("syn", annotations=d / "annotations" / f"captions_{split}.json",
                              images=d / "images" / split, **kw)


def _instances(d: Path, split: str, **kw):
    return load_coco_instances("syn", annotations=d / "annotations" / f"instances_{split}.json",
                               images=d / "images" / split, **kw)


def _raw_instances(d: Path, split: str) -> dict:
    return json.loads((d / "annotations" / f"instances_{split}.json").read_text())


# ----------------------------------------------------------------------------------------------
# synthetic data through the real loaders


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_synthetic_karpathy_splits(synthetic_dir, split):
    ds = _karpathy(synthetic_dir, split)
    assert len(ds) == N[split]
    assert all(p.is_file() and p.parent == synthetic_dir / "images" / split for p in ds.image_paths)
    assert all(5 <= len(c) <= 7 for c in ds.captions)
    # The file's order is generation order, and ids were handed out sequentially.
    ids = [int(i) for i in ds.image_ids]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    texts, owner = ds.flat_captions()
    assert len(texts) == ds.num_captions == sum(len(c) for c in ds.captions)
    assert owner.tolist() == [i for i, c in enumerate(ds.captions) for _ in c]


def test_synthetic_karpathy_restval_and_max_images(synthetic_dir):
    # The generator writes no restval, so train+restval == train.
    train = _karpathy(synthetic_dir, "train")
    assert _karpathy(synthetic_dir, "train+restval").image_paths == train.image_paths
    with pytest.raises(DataError, match="no captioned images in split 'restval'.*test=24, train=48, val=16"):
        _karpathy(synthetic_dir, "restval")
    full = _karpathy(synthetic_dir, "test")
    cut = _karpathy(synthetic_dir, "test", max_images=5)
    assert cut.image_paths == full.image_paths[:5] and cut.captions == full.captions[:5]


def test_synthetic_has_6_and_7_caption_images_kept_whole(synthetic_dir):
    raw = json.loads((synthetic_dir / "dataset_coco.json").read_text())
    for split in ("train", "val", "test"):
        ds = _karpathy(synthetic_dir, split)
        counts = [len(c) for c in ds.captions]
        assert 6 in counts and 7 in counts, (split, counts)
        expected = [[s["raw"] for s in e["sentences"]] for e in raw["images"] if e["split"] == split]
        assert ds.captions == expected
        # The official captions file (shuffled image list, interleaved annotations) gives the same data.
        cap = _captions(synthetic_dir, split)
        assert cap.image_ids == ds.image_ids
        assert [p.name for p in cap.image_paths] == [p.name for p in ds.image_paths]
        assert cap.captions == ds.captions
    raw_cap = json.loads((synthetic_dir / "annotations" / "captions_test.json").read_text())
    listed = [im["id"] for im in raw_cap["images"]]
    assert listed != sorted(listed)  # the loader really had to sort
    assert raw_cap["annotations"][0]["image_id"] != raw_cap["annotations"][1]["image_id"]  # interleaved


def test_synthetic_tokens_and_vocabulary(synthetic_dir):
    vocab = set(caption_vocabulary())
    assert all(re.fullmatch(r"[a-z]+", w) for w in vocab)
    assert set(KINDS) | set(COLOURS) | {"small", "large", "left", "right", "top", "bottom"} <= vocab
    raw = json.loads((synthetic_dir / "dataset_coco.json").read_text())
    used = set()
    for e in raw["images"]:
        for s in e["sentences"]:
            assert re.fullmatch(r"[a-z ,:]+", s["raw"]), s["raw"]
            assert s["tokens"] == re.findall(r"[a-z]+", s["raw"])
            used.update(s["tokens"])
    classes = json.loads((synthetic_dir / "classes.json").read_text())
    assert classes["classes"] == list(KINDS)
    for k, prompts in classes["prompts"].items():
        assert all(k in p for p in prompts)
        used.update(w for p in prompts for w in re.findall(r"[a-z]+", p))
    assert used <= vocab, used - vocab
    # Nearly all of the vocabulary is actually used (no dead words), even on 88 images.
    assert len(vocab - used) <= 3, vocab - used


def _nearest_colour(rgb) -> str:
    return min(COLOURS, key=lambda c: sum((int(a) - b) ** 2 for a, b in zip(rgb, COLOURS[c])))


@pytest.mark.parametrize("split", ["train", "test"])
def test_synthetic_instances_match_pixels_captions_and_imagefolder(synthetic_dir, split):
    from PIL import Image

    inst = _instances(synthetic_dir, split)
    raw = _raw_instances(synthetic_dir, split)
    assert len(inst) == N[split] and inst.multilabel
    assert inst.class_names == list(KINDS) and [c["id"] for c in raw["categories"]] == [1, 2, 3, 4, 5, 6]
    assert inst.labels.dtype == np.uint8 and inst.labels.shape == (N[split], len(KINDS))
    assert set(np.unique(inst.labels)) <= {0, 1} and inst.labels.sum(1).min() >= 1

    folder = load_imagefolder("syn", synthetic_dir / "imagefolder" / split)
    assert folder.class_names == sorted(KINDS) and len(folder) == N[split]
    folder_class = {p.name: folder.class_names[int(y)] for p, y in zip(folder.image_paths, folder.labels)}
    kar = _karpathy(synthetic_dir, split)
    kar_caps = {p.name: c for p, c in zip(kar.image_paths, kar.captions)}

    images = {im["id"]: im for im in raw["images"]}
    by_image: dict[int, list[dict]] = {}
    for a in raw["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for row, path in enumerate(inst.image_paths):
        image_id = int(path.stem)
        anns = by_image[image_id]
        # Naive recomputation of the multi-hot row.
        expect = np.zeros(len(KINDS), np.uint8)
        for a in anns:
            expect[a["category_id"] - 1] = 1
        assert inst.labels[row].tolist() == expect.tolist()

        im = np.asarray(Image.open(path).convert("RGB"))
        h, w, _ = im.shape
        assert (w, h) == (images[image_id]["width"], images[image_id]["height"])
        for a in anns:
            x, y, bw, bh = a["bbox"]
            assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
            assert 0 < a["area"] <= bw * bh + 1e-6 and a["iscrowd"] == 0
        largest = max(anns, key=lambda a: a["area"])
        kind = KINDS[largest["category_id"] - 1]
        # The imagefolder class is the kind of the largest shape, and every caption names it.
        assert folder_class[path.name] == kind
        # The pixel at the centre of the largest shape's box has that shape's colour, and every
        # caption names that colour and kind.
        x, y, bw, bh = largest["bbox"]
        colour = _nearest_colour(im[int(y + bh / 2), int(x + bw / 2)])
        for cap in kar_caps[path.name]:
            assert f"{colour} {kind}" in cap or f"{kind} colored {colour}" in cap, (cap, colour, kind)
        # Multi-shape images: the largest one is clearly larger than the others.
        others = [a["area"] for a in anns if a is not largest]
        if others:
            assert largest["area"] > max(others)


def test_synthetic_imagefolder_balanced(synthetic_dir):
    folder = load_imagefolder("syn", synthetic_dir / "imagefolder" / "train")
    assert np.bincount(folder.labels, minlength=6).tolist() == [8] * 6
    assert all(os.path.samefile(p, synthetic_dir / "images" / "train" / p.name) or
               p.read_bytes() == (synthetic_dir / "images" / "train" / p.name).read_bytes()
               for p in folder.image_paths)
    # Images vary in shape: landscape, portrait and square.
    from PIL import Image

    sizes = {Image.open(p).size for p in folder.image_paths}
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes) and any(w == h for w, h in sizes)
    assert max(max(s) for s in sizes) <= 200


def test_synthetic_shape_kind_is_learnable(synthetic_dir):
    """A linear classifier on crude features (the largest shape's silhouette) beats chance by far."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    def features(split):
        raw = _raw_instances(synthetic_dir, split)
        files = {im["id"]: im["file_name"] for im in raw["images"]}
        largest: dict[int, dict] = {}
        for a in raw["annotations"]:
            if a["image_id"] not in largest or a["area"] > largest[a["image_id"]]["area"]:
                largest[a["image_id"]] = a
        xs, ys = [], []
        for image_id, a in sorted(largest.items()):
            im = Image.open(synthetic_dir / "images" / split / files[image_id]).convert("RGB")
            x, y, w, h = a["bbox"]
            box = (int(x), int(y), int(x + w + 1), int(y + h + 1))
            crop = np.asarray(im.crop(box).resize((12, 12)), float)
            background = np.median(np.asarray(im, float), (0, 1))  # most pixels are background
            xs.append((np.abs(crop - background).sum(-1) > 60).reshape(-1).astype(float))
            ys.append(a["category_id"])
        return np.array(xs), np.array(ys)

    xtr, ytr = features("train")
    xte, yte = features("test")
    acc = LogisticRegression(max_iter=2000).fit(xtr, ytr).score(xte, yte)
    assert acc >= 0.6, acc  # chance is 1/6


# ----------------------------------------------------------------------------------------------
# generator behaviour


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_synthetic_deterministic_and_seed_dependent(tmp_path):
    a = make_synthetic(tmp_path / "a", n_train=6, n_val=3, n_test=3, seed=0)
    make_synthetic(tmp_path / "b", n_train=6, n_val=3, n_test=3, seed=0)
    make_synthetic(tmp_path / "c", n_train=6, n_val=3, n_test=3, seed=1)
    ta, tb, tc = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert ta == tb
    assert ta.keys() - {f for f in ta if f.startswith("imagefolder/")} <= tc.keys()
    assert ta["images/train/000000000001.jpg"] != tc["images/train/000000000001.jpg"]
    assert ta["dataset_coco.json"] != tc["dataset_coco.json"]
    expected_keys = {"root", "images", "karpathy", "imagefolder", "classes", "readme", "stamp"} | {
        f"{k}_{s}" for k in ("captions", "instances") for s in ("train", "val", "test")}
    assert set(a) == expected_keys and all(p.exists() for p in a.values())
    assert "Synthetic" in a["readme"].read_text()
    # Val/test pictures do not depend on n_train (per-split generators); ids shift, pixels do not.
    make_synthetic(tmp_path / "d", n_train=2, n_val=3, n_test=3, seed=0)
    td = _tree(tmp_path / "d")
    assert td["images/val/000000000003.jpg"] == ta["images/val/000000000007.jpg"]


def test_synthetic_skips_complete_and_redoes_incomplete(tmp_path):
    out = tmp_path / "s"
    paths = make_synthetic(out, n_train=3, n_val=2, n_test=2, seed=0)
    before = _tree(out)
    stamp_mtime = paths["stamp"].stat().st_mtime_ns
    make_synthetic(out, n_train=3, n_val=2, n_test=2, seed=0)
    assert paths["stamp"].stat().st_mtime_ns == stamp_mtime  # nothing rewritten
    # A run killed before the stamp is redone: delete the stamp and an image.
    paths["stamp"].unlink()
    (out / "images" / "train" / "000000000001.jpg").unlink()
    make_synthetic(out, n_train=3, n_val=2, n_test=2, seed=0)
    assert _tree(out) == before
    # Other parameters: regenerated, and no stale files from the bigger run remain.
    make_synthetic(out, n_train=1, n_val=1, n_test=1, seed=0)
    assert len(list((out / "images").rglob("*.jpg"))) == 3
    assert len(list((out / "imagefolder").rglob("*.jpg"))) == 3
    assert json.loads(paths["stamp"].read_text())["params"]["n_train"] == 1


def test_synthetic_refuses_foreign_folder_and_bad_args(tmp_path):
    from bench.errors import BenchError

    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(DataError, match="not empty and does not hold a synthetic dataset"):
        make_synthetic(tmp_path, n_train=1, n_val=1, n_test=1)
    assert (tmp_path / "mine.txt").read_text() == "precious"
    with pytest.raises(BenchError, match="n_train must be an integer >= 0"):
        make_synthetic(tmp_path / "x", n_train=-1)
    with pytest.raises(BenchError, match="image_size"):
        make_synthetic(tmp_path / "x", image_size=(8, 8))


# ----------------------------------------------------------------------------------------------
# hand-written fixtures


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _sent(*raws):
    return [{"raw": r, "tokens": r.split()} for r in raws]


@pytest.fixture
def karpathy_fixture(tmp_path):
    entries = [
        {"filepath": "val2014", "filename": "r.jpg", "split": "restval", "sentences": _sent("r1", "r2"),
         "cocoid": 40},
        {"filepath": "train2014", "filename": "t.jpg", "split": "train", "sentences": _sent("t1"),
         "cocoid": 10},
        {"filepath": "val2014", "filename": "c.jpg", "split": "test",
         "sentences": _sent(" c1 ", "c2", "c3", "c4", "c5", "c6\n"), "cocoid": 30},
        {"filepath": "val2014", "filename": "v.jpg", "split": "val", "sentences": _sent("v1"), "cocoid": 20},
        {"filepath": "val2014", "filename": "e.jpg", "split": "test", "sentences": _sent("e1", "e2"),
         "cocoid": 5},
        {"filepath": "val2014", "filename": "none.jpg", "split": "test", "sentences": [], "cocoid": 6},
    ]
    ann = _write(tmp_path / "dataset_coco.json", {"images": entries, "dataset": "coco"})
    img = tmp_path / "img"
    _touch(img / "val2014" / "r.jpg", img / "train2014" / "t.jpg", img / "val2014" / "c.jpg",
           img / "val2014" / "v.jpg", img / "val2014" / "e.jpg")
    return ann, img


def test_karpathy_splits_restval_and_order(karpathy_fixture):
    ann, img = karpathy_fixture

    def names(split, **kw):
        return [p.name for p in load_karpathy("k", ann, img, split=split, **kw).image_paths]

    assert names("train") == ["t.jpg"]
    assert names("restval") == ["r.jpg"]
    assert names("train+restval") == ["r.jpg", "t.jpg"]  # file order, not split order
    assert names("val") == ["v.jpg"]
    ds = load_karpathy("k", str(ann), str(img), split="test")  # strings work too
    assert [p.name for p in ds.image_paths] == ["c.jpg", "e.jpg"]  # image without sentences skipped
    assert ds.image_paths[0] == img / "val2014" / "c.jpg"
    assert ds.captions == [["c1", "c2", "c3", "c4", "c5", "c6"], ["e1", "e2"]]
    assert ds.image_ids == ["30", "5"] and ds.num_captions == 8 and ds.name == "k"
    assert names("test", max_images=1) == ["c.jpg"]
    assert names("test", max_images=10) == ["c.jpg", "e.jpg"]


def test_karpathy_flickr_without_filepath(tmp_path):
    entries = [{"filename": "1.jpg", "split": "test", "imgid": 0, "sentences": _sent("a dog", "a cat")},
               {"filename": "2.jpg", "split": "test", "imgid": 1,
                "sentences": [{"tokens": ["only", "tokens"]}]}]
    ann = _write(tmp_path / "dataset_flickr30k.json", {"images": entries, "dataset": "flickr30k"})
    _touch(tmp_path / "flickr" / "1.jpg", tmp_path / "flickr" / "2.jpg")
    ds = load_karpathy("f", ann, tmp_path / "flickr")
    assert ds.image_paths == [tmp_path / "flickr" / "1.jpg", tmp_path / "flickr" / "2.jpg"]
    assert ds.image_ids == ["0", "1"] and ds.captions == [["a dog", "a cat"], ["only tokens"]]


def test_karpathy_errors(karpathy_fixture, tmp_path):
    ann, img = karpathy_fixture
    with pytest.raises(DataError, match=r"unknown Karpathy split 'testing'.*"
                                        r"allowed: train, val, test, restval, train\+restval"):
        load_karpathy("k", ann, img, split="testing")
    with pytest.raises(DataError, match="annotation file not found: .*nope.json.*'annotations'"):
        load_karpathy("k", tmp_path / "nope.json", img)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n  {"filename": "a.jpg",')
    with pytest.raises(DataError, match=r"bad.json is not valid JSON: .* at line 2"):
        load_karpathy("k", bad, img)
    caps = _write(tmp_path / "caps.json", {"info": {}, "images": [{"id": 1, "file_name": "a.jpg"}],
                                           "annotations": [{"image_id": 1, "caption": "x"}]})
    with pytest.raises(DataError, match=r"not a Karpathy split file.*"
                                        r"found keys 'info', 'images', 'annotations'.*"
                                        r"use type coco_captions"):
        load_karpathy("k", caps, img)
    with pytest.raises(DataError, match="found a JSON list"):
        load_karpathy("k", _write(tmp_path / "list.json", [1, 2]), img)
    # Missing images: count, first missing path, and a hint at the 'images' key.
    (img / "val2014" / "e.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 2 images listed in .*dataset_coco.json are missing "
                                        r"under .*img; first missing: .*val2014/e.jpg "
                                        r"\(check the dataset's 'images' key: .*'val2014'"):
        load_karpathy("k", ann, img)
    # 'images' pointing inside val2014 (a common slip): the message names the right folder.
    _touch(img / "val2014" / "e.jpg")
    with pytest.raises(DataError, match=r"2 of 2 .*'.*val2014/c.jpg' exists, so 'images' should "
                                        r"probably be the parent folder .*img\)"):
        load_karpathy("k", ann, img / "val2014", split="test")
    with pytest.raises(DataError, match="image folder not found: .*elsewhere"):
        load_karpathy("k", ann, tmp_path / "elsewhere")


@pytest.fixture
def captions_fixture(tmp_path):
    obj = {
        "images": [{"id": 30, "file_name": "30.jpg"}, {"id": 5, "file_name": "5.jpg"},
                   {"id": 12, "file_name": "12.jpg"}],
        "annotations": [{"id": 1, "image_id": 30, "caption": "thirty one"},
                        {"id": 2, "image_id": 5, "caption": " five one "},
                        {"id": 3, "image_id": 30, "caption": "thirty two"},
                        {"id": 4, "image_id": 5, "caption": "five two"},
                        {"id": 5, "image_id": 30, "caption": "thirty three"}],
    }
    ann = _write(tmp_path / "captions_val2017.json", obj)
    _touch(tmp_path / "val2017" / "30.jpg", tmp_path / "val2017" / "5.jpg")  # 12.jpg absent: it is dropped
    return ann, tmp_path / "val2017"


def test_coco_captions_order_grouping_and_drop(captions_fixture):
    ann, img = captions_fixture
    ds = load_coco_captions("c", ann, img)
    assert ds.image_ids == ["5", "30"]
    assert ds.image_paths == [img / "5.jpg", img / "30.jpg"]
    assert ds.captions == [["five one", "five two"], ["thirty one", "thirty two", "thirty three"]]
    one = load_coco_captions("c", ann, img, max_images=1)
    assert one.image_ids == ["5"] and one.captions == [["five one", "five two"]]


def test_coco_captions_errors(captions_fixture, tmp_path):
    ann, img = captions_fixture
    inst = _write(tmp_path / "inst.json", {"images": [{"id": 1, "file_name": "a.jpg"}],
                                           "annotations": [{"image_id": 1, "category_id": 1}],
                                           "categories": [{"id": 1, "name": "cat"}]})
    with pytest.raises(DataError, match=r"not an official COCO captions file.*"
                                        r"found keys 'images', 'annotations', 'categories', and "
                                        r"entry 0 of 'annotations' lacks 'image_id', 'caption'.*"
                                        r"use type coco_instances"):
        load_coco_captions("c", inst, img)
    kar = _write(tmp_path / "kar.json", {"images": [{"filename": "a.jpg", "split": "test", "sentences": []}]})
    with pytest.raises(DataError, match=r"not an official COCO captions file.*"
                                        r"found keys 'images'.*coco_karpathy"):
        load_coco_captions("c", kar, img)
    orphan = _write(tmp_path / "orphan.json", {"images": [{"id": 1, "file_name": "a.jpg"}],
                                               "annotations": [{"image_id": 2, "caption": "x"}]})
    with pytest.raises(DataError, match="annotation 0 refers to image_id 2, which is not in 'images'"):
        load_coco_captions("c", orphan, img)
    empty = _write(tmp_path / "empty.json", {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []})
    with pytest.raises(DataError, match=r"no image has a caption \(1 images, 0 annotations\)"):
        load_coco_captions("c", empty, img)
    (img / "30.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 2 images .* first missing: .*30.jpg .*'images' key"):
        load_coco_captions("c", ann, img)
    # Only the selected images need to exist.
    assert load_coco_captions("c", ann, img, max_images=1).image_ids == ["5"]
    # 'images' one level too high: the hint names the sub-folder that holds the files.
    with pytest.raises(DataError, match=r"should probably be .*val2017"):
        load_coco_captions("c", ann, img.parent, max_images=1)


@pytest.fixture
def instances_fixture(tmp_path):
    obj = {
        "images": [{"id": 3, "file_name": "3.jpg"}, {"id": 1, "file_name": "1.jpg"},
                   {"id": 2, "file_name": "2.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1]},
                        {"id": 2, "image_id": 3, "category_id": 2},
                        {"id": 3, "image_id": 1, "category_id": 7},
                        {"id": 4, "image_id": 3, "category_id": 7}],
        "categories": [{"id": 7, "name": "dog", "supercategory": "animal"},
                       {"id": 2, "name": "cat", "supercategory": "animal"},
                       {"id": 9, "name": "zebra", "supercategory": "animal"}],
    }
    ann = _write(tmp_path / "instances_val2017.json", obj)
    _touch(*(tmp_path / "val2017" / f"{i}.jpg" for i in (1, 2, 3)))
    return ann, tmp_path / "val2017"


def test_coco_instances_labels(instances_fixture):
    ann, img = instances_fixture
    ds = load_coco_instances("i", ann, img)
    assert ds.multilabel and ds.class_names == ["cat", "dog", "zebra"]  # by category id: 2, 7, 9
    assert ds.image_paths == [img / "1.jpg", img / "3.jpg"]  # by image id; 2 has no object: dropped
    assert ds.labels.dtype == np.uint8
    assert ds.labels.tolist() == [[0, 1, 0], [1, 1, 0]]
    one = load_coco_instances("i", ann, img, max_images=1)
    assert one.labels.tolist() == [[0, 1, 0]] and one.class_names == ["cat", "dog", "zebra"]


def test_coco_instances_errors(instances_fixture, tmp_path):
    ann, img = instances_fixture
    obj = json.loads(ann.read_text())
    no_cats = _write(tmp_path / "nocats.json", {k: v for k, v in obj.items() if k != "categories"})
    with pytest.raises(DataError, match=r"not an official COCO instances file.*'categories'.*found keys "
                                        r"'images', 'annotations'"):
        load_coco_instances("i", no_cats, img)
    bad_cat = dict(obj, annotations=obj["annotations"] + [{"image_id": 1, "category_id": 99}])
    with pytest.raises(DataError, match="annotation 4 has category_id 99, which is not in 'categories'"):
        load_coco_instances("i", _write(tmp_path / "badcat.json", bad_cat), img)
    no_objects = dict(obj, annotations=[])
    with pytest.raises(DataError, match="no image has an object annotation"):
        load_coco_instances("i", _write(tmp_path / "noobj.json", no_objects), img)
    with pytest.raises(DataError, match="image folder not found"):
        load_coco_instances("i", ann, tmp_path / "missing")


# ----------------------------------------------------------------------------------------------
# imagefolder


@pytest.fixture
def folder_fixture(tmp_path):
    root = tmp_path / "root"
    _touch(root / "b" / "x.jpg", root / "a" / "sub" / "z.png", root / "a" / "y.JPG",
           root / "a" / ".hidden.jpg", root / "a" / "notes.txt", root / ".git" / "obj.jpg",
           root / "b" / "w.jpeg")
    (root / "c").mkdir()
    (root / "README.md").write_text("not a class")
    return root


def test_imagefolder_layout(folder_fixture):
    root = folder_fixture
    ds = load_imagefolder("f", root)
    assert ds.class_names == ["a", "b", "c"] and not ds.multilabel
    rel = [p.relative_to(root).as_posix() for p in ds.image_paths]
    assert rel == ["a/sub/z.png", "a/y.JPG", "b/w.jpeg", "b/x.jpg"]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 1, 1]
    # max_images: round-robin over classes, result sorted by path.
    two = load_imagefolder("f", root, max_images=2)
    assert [p.relative_to(root).as_posix() for p in two.image_paths] == ["a/sub/z.png", "b/w.jpeg"]
    three = load_imagefolder("f", root, max_images=3)
    assert [p.relative_to(root).as_posix() for p in three.image_paths] == [
        "a/sub/z.png", "a/y.JPG", "b/w.jpeg"]
    png = load_imagefolder("f", str(root), extensions=["png"])
    assert [p.name for p in png.image_paths] == ["z.png"] and png.labels.tolist() == [0]


def test_imagefolder_errors(tmp_path, folder_fixture):
    with pytest.raises(DataError, match="image folder not found: .*nothere.*'root'"):
        load_imagefolder("f", tmp_path / "nothere")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file"):
        load_imagefolder("f", tmp_path / "file.jpg")
    flat = tmp_path / "flat"
    _touch(flat / "1.jpg")
    with pytest.raises(DataError, match=r"no class sub-folders; expected .*flat/<class>/<image>.jpg"):
        load_imagefolder("f", flat)
    with pytest.raises(DataError, match=r"has class folders \(a, b, c\) but no images with extensions .webp"):
        load_imagefolder("f", folder_fixture, extensions=[".webp"])
