"""Loaders for COCO-style annotation files: Karpathy splits (COCO, Flickr30k), official COCO
captions, official COCO instances (as multi-label classification).

Every loader checks that all the image files it returns exist before returning, so a wrong
`images` folder fails in a second with one message instead of deep inside an embedding run.
Names listed in a file never leave the `images` folder (bench.paths.safe_join: an absolute path or
a `..` is refused, naming the entry). With `on_bad_image: skip`, images that cannot be decoded are
dropped together with their captions or labels (bench.data.base.drop_unreadable).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from bench.data.base import CaptionDataset, LabelledDataset, drop_unreadable
from bench.errors import DataError
from bench.params import DatasetParams, Int, OnBadImage, typing_args
from bench.paths import check_relative, normalized


# ---- parameters (the config's `datasets.<name>` entries of these types) -------------------------------
class _CocoFileParams(DatasetParams):
    annotations: Path
    images: Path
    max_images: Int(ge=1) | None = None
    on_bad_image: OnBadImage = "error"


class KarpathyParams(_CocoFileParams):
    type: Literal["coco_karpathy", "flickr30k_karpathy"]
    split: Literal["train", "val", "test", "restval", "train+restval"] = "test"
    provides: ClassVar[str] = "captions"

    def example_annotations(self) -> str:
        return "dataset_flickr30k.json" if self.type == "flickr30k_karpathy" else "dataset_coco.json"


class CocoCaptionsParams(_CocoFileParams):
    type: Literal["coco_captions"]
    provides: ClassVar[str] = "captions"
    annotation_example: ClassVar[str] = "captions_val2017.json"


class CocoInstancesParams(_CocoFileParams):
    type: Literal["coco_instances"]
    provides: ClassVar[str] = "labels"
    annotation_example: ClassVar[str] = "instances_val2017.json"


KARPATHY_SPLITS = typing_args(KarpathyParams.model_fields["split"].annotation)


def read_json(path: str | Path, what: str = "annotation file") -> Any:
    """Parse a JSON file, with one clear DataError for a missing, unreadable or malformed file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} not found: {path} (check the dataset's 'annotations' path in the config)")
    if path.is_dir():
        raise DataError(f"{what} {path} is a folder; the dataset's 'annotations' key must name a .json file")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DataError(f"{what} {path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno} "
                        "(the file is truncated or corrupt; download it again)") from None
    except UnicodeDecodeError:
        raise DataError(f"{what} {path} is not UTF-8 text (is it a zip or a binary file?)") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {path}: {e.strerror or e}") from None


def _keys(obj: Any) -> str:
    if isinstance(obj, dict):
        return "keys " + (", ".join(repr(k) for k in list(obj)[:12]) or "(none)")
    return f"a JSON {type(obj).__name__}, not an object"


def _guess_format(obj: Any) -> str:
    """A hint naming the dataset type that fits a file, for format-mismatch messages."""
    if not isinstance(obj, dict):
        return ""
    images = obj.get("images")
    first = images[0] if isinstance(images, list) and images and isinstance(images[0], dict) else {}
    anns = obj.get("annotations")
    first_ann = anns[0] if isinstance(anns, list) and anns and isinstance(anns[0], dict) else {}
    if "sentences" in first:
        return " It looks like a Karpathy split file: use type coco_karpathy (or flickr30k_karpathy)."
    if "caption" in first_ann:
        return " It looks like an official COCO captions file: use type coco_captions."
    if "category_id" in first_ann or "categories" in obj:
        return " It looks like an official COCO instances file: use type coco_instances."
    return ""


def _format_error(path: Path, expected: str, obj: Any) -> DataError:
    return DataError(f"{path} is not {expected}; found {_keys(obj)}.{_guess_format(obj)}")


def _require_list_of_dicts(path: Path, obj: dict, key: str, fields: Iterable[str],
                           expected: str) -> list[dict]:
    items = obj.get(key)
    if not isinstance(items, list):
        raise _format_error(path, expected, obj)
    fields = tuple(fields)
    for i, item in enumerate(items):
        if not isinstance(item, dict) or any(f not in item for f in fields):
            lacks = ", ".join(repr(f) for f in fields)
            raise DataError(f"{path} is not {expected}; found {_keys(obj)}, and entry {i} of '{key}' lacks "
                            f"{lacks} (it has {_keys(item)}).{_guess_format(obj)}")
    return items


def check_images_exist(paths: list[Path], images: Path, annotations: Path, hint: str = "") -> None:
    """Raise one DataError when the image folder or any listed image file is missing."""
    images = Path(images)
    if images.is_file():
        raise DataError(f"the dataset's 'images' path {images} is a file, not a folder: set it to the folder "
                        f"that holds the images listed in {annotations}{hint}")
    if not images.is_dir():
        raise DataError(f"image folder not found: {images} (set the dataset's 'images' key to the folder "
                        f"that holds the images listed in {annotations}{hint})")
    missing = [p for p in paths if not os.path.isfile(p)]
    if not missing:
        return
    first = missing[0]
    extra = ""
    # Common mistakes: 'images' points one level too deep or too shallow.
    rel = first.relative_to(images) if first.is_relative_to(images) else Path(first.name)
    if len(rel.parts) > 1 and (images / rel.name).is_file():
        extra = (f"; '{images / rel.name}' exists, so 'images' should probably be the parent folder "
                 f"{images.parent}")
    else:
        below = [d for d in sorted(images.iterdir()) if d.is_dir() and (d / rel).is_file()]
        if below:
            extra = f"; '{below[0] / rel}' exists, so 'images' should probably be {below[0]}"
    raise DataError(f"{len(missing)} of {len(paths)} images listed in {annotations} are missing under "
                    f"{images}; "
                    f"first missing: {first} (check the dataset's 'images' key{hint}{extra})")


def _cut(n: int, max_images: int | None) -> int:
    if max_images is None:
        return n
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise DataError(f"max_images must be a positive integer or null, got {max_images!r}")
    return min(n, max_images)


def _id_key(image_id: Any) -> tuple:
    """Sort key for COCO image ids: numbers numerically, anything else as text after them."""
    if isinstance(image_id, (int, float)) and not isinstance(image_id, bool):
        return (0, image_id, "")
    return (1, 0, str(image_id))


# ----------------------------------------------------------------------------------------------


def load_karpathy(name: str, annotations: str | Path, images: str | Path, split: str = "test",
                  max_images: int | None = None, on_bad_image: str = "error") -> CaptionDataset:
    """Karpathy split file (dataset_coco.json / dataset_flickr30k.json) -> CaptionDataset.

    Image path = images / filepath / filename (images / filename when an entry has no filepath).
    All captions of an image are kept (the stripped `raw` text). split is one of train, val, test,
    restval or train+restval ("train" alone excludes restval). Images keep the file's order;
    max_images keeps the first N. Images without any caption are skipped. An image listed twice in
    the selected split is kept once (its first entry, with that entry's captions); the repeats and
    their captions are dropped and counted in `duplicates_dropped` and a note, so no image is counted
    twice in the gallery. `filepath`/`filename` must stay inside `images` (no absolute path, no `..`).
    """
    annotations, images = Path(annotations), Path(images)
    if split not in KARPATHY_SPLITS:
        raise DataError(f"unknown Karpathy split '{split}' for dataset '{name}'; "
                        f"allowed: {', '.join(KARPATHY_SPLITS)}")
    expected = ("a Karpathy split file (a JSON object with 'images' whose entries have 'filename', 'split' "
                "and 'sentences', like dataset_coco.json)")
    obj = read_json(annotations)
    if not isinstance(obj, dict) or "images" not in obj:
        raise _format_error(annotations, expected, obj)
    entries = _require_list_of_dicts(annotations, obj, "images", ("filename", "split", "sentences"), expected)
    wanted = {"train", "restval"} if split == "train+restval" else {split}

    paths: list[Path] = []
    captions: list[list[str]] = []
    ids: list[str] = []
    found: dict[str, int] = {}
    first_entry: dict[str, int] = {}  # normalized relative path -> entry index that listed it first
    repeats: list[tuple[int, int, str, int]] = []  # (entry, first entry, path, captions dropped)
    for i, e in enumerate(entries):
        found[str(e["split"])] = found.get(str(e["split"]), 0) + 1
        if e["split"] not in wanted:
            continue
        caps = []
        for s in e["sentences"] if isinstance(e["sentences"], list) else []:
            if isinstance(s, dict) and isinstance(s.get("raw"), str):
                text = s["raw"].strip()
            elif isinstance(s, dict) and isinstance(s.get("tokens"), list):
                text = " ".join(str(t) for t in s["tokens"]).strip()
            else:
                raise DataError(f"{annotations}: image entry {i} ({e['filename']}) has a sentence without "
                                f"'raw' text: {str(s)[:80]}")
            if text:
                caps.append(text)
        if not caps:
            continue
        filename = check_relative(e["filename"], f"{annotations}: image entry {i}'s 'filename'", images)
        rel = filename
        if e.get("filepath"):
            rel = check_relative(e["filepath"], f"{annotations}: image entry {i}'s 'filepath'", images) \
                + "/" + filename
        key = normalized(rel)
        if key in first_entry:
            repeats.append((i, first_entry[key], key, len(caps)))
            continue
        first_entry[key] = i
        paths.append(images / rel)
        captions.append(caps)
        image_id = e.get("cocoid", e.get("imgid", Path(str(e["filename"])).stem))
        ids.append(str(image_id))

    if not paths:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(found.items())) or "none"
        raise DataError(f"{annotations}: no captioned images in split '{split}' "
                        f"(images per split in the file: {counts})")
    notes, n_dup = [], len(repeats)
    if repeats:
        i, j, key, _ = repeats[0]
        n_caps = sum(r[3] for r in repeats)
        s_img, s_cap = "s" if n_dup > 1 else "", "s" if n_caps != 1 else ""
        notes.append(f"dataset '{name}': {annotations} lists {n_dup} image{s_img} of split '{split}' more "
                     f"than once (first: entry {i}, {key}, repeats entry {j}); kept the first entry of "
                     f"each and dropped {n_dup} repeat{s_img} with {n_caps} caption{s_cap}, so no image is "
                     f"counted twice in the gallery")
    n = _cut(len(paths), max_images)
    paths, captions, ids = paths[:n], captions[:n], ids[:n]
    subfolders = sorted({p.parent.relative_to(images).as_posix() for p in paths} - {"."})
    listed = ", ".join(repr(s) for s in subfolders[:3])
    hint = (f": it should be the folder that contains the sub-folder(s) {listed}" if subfolders
            else ": it should be the folder that holds the image files")
    check_images_exist(paths, images, annotations, hint)
    ds = CaptionDataset(name=name, image_paths=paths, captions=captions, image_ids=ids, notes=notes,
                        duplicates_dropped=n_dup)
    return drop_unreadable(ds, on_bad_image, annotations)


def _official(annotations: Path, images: Path, expected: str, ann_fields: tuple[str, ...],
              extra_key: str | None = None) -> tuple[dict, dict[Any, dict], list[dict]]:
    """Shared part of the official COCO formats: the parsed file, images by id, annotations."""
    obj = read_json(annotations)
    needed = ("images", "annotations") + ((extra_key,) if extra_key else ())
    if not isinstance(obj, dict) or any(k not in obj for k in needed):
        raise _format_error(annotations, expected, obj)
    image_list = _require_list_of_dicts(annotations, obj, "images", ("id", "file_name"), expected)
    anns = _require_list_of_dicts(annotations, obj, "annotations", ann_fields, expected)
    by_id: dict[Any, dict] = {}
    by_name: dict[str, Any] = {}
    for im in image_list:
        if im["id"] in by_id:
            raise DataError(f"{annotations}: image id {im['id']!r} is listed twice in 'images' "
                            f"({by_id[im['id']]['file_name']} and {im['file_name']}); the file is corrupt")
        by_id[im["id"]] = im
        # Two ids for one file would put the same image in the gallery twice.
        what = f"{annotations}: image id {im['id']!r}'s 'file_name'"
        key = normalized(check_relative(im["file_name"], what, images))
        if key in by_name:
            raise DataError(f"{annotations}: image file {key} is listed twice in 'images' (ids "
                            f"{by_name[key]!r} and {im['id']!r}); the file is corrupt: keep one entry")
        by_name[key] = im["id"]
    for i, a in enumerate(anns):
        if a["image_id"] not in by_id:
            raise DataError(f"{annotations}: annotation {i} refers to image_id {a['image_id']!r}, which is "
                            "not in 'images' (the file is corrupt or was cut)")
    return obj, by_id, anns


def load_coco_captions(name: str, annotations: str | Path, images: str | Path,
                       max_images: int | None = None, on_bad_image: str = "error") -> CaptionDataset:
    """Official COCO captions file (captions_val2017.json style) -> CaptionDataset.

    Images are ordered by image id; images without any caption are dropped; each image keeps all
    its captions (stripped) in annotation order. Image path = images / file_name (relative, inside
    `images`; a file listed under two ids is refused).
    """
    annotations, images = Path(annotations), Path(images)
    expected = ("an official COCO captions file (a JSON object with 'images' [{'id', 'file_name'}] and "
                "'annotations' [{'image_id', 'caption'}], like captions_val2017.json)")
    _, by_id, anns = _official(annotations, images, expected, ("image_id", "caption"))
    caps: dict[Any, list[str]] = {}
    for a in anns:
        text = str(a["caption"]).strip()
        if text:
            caps.setdefault(a["image_id"], []).append(text)
    order = sorted(caps, key=_id_key)
    if not order:
        raise DataError(f"{annotations}: no image has a caption "
                        f"({len(by_id)} images, {len(anns)} annotations)")
    order = order[: _cut(len(order), max_images)]
    paths = [images / str(by_id[i]["file_name"]) for i in order]  # checked by _official
    check_images_exist(paths, images, annotations, ": it should be the folder that holds the image files, "
                       "e.g. val2017/")
    ds = CaptionDataset(name=name, image_paths=paths, captions=[caps[i] for i in order],
                        image_ids=[str(i) for i in order])
    return drop_unreadable(ds, on_bad_image, annotations)


def load_coco_instances(name: str, annotations: str | Path, images: str | Path,
                        max_images: int | None = None, on_bad_image: str = "error") -> LabelledDataset:
    """Official COCO instances file (instances_val2017.json style) -> multi-label LabelledDataset.

    labels[i, c] = 1 when image i has at least one object of category c (uint8 [N, C]); classes are
    the category names ordered by category id. Images are ordered by image id. Images without any
    object annotation are dropped (COCO val2017 has 48 of them). Categories are kept even when no
    selected image has them, so the columns are the same for every split. file_name as for captions.
    """
    annotations, images = Path(annotations), Path(images)
    expected = ("an official COCO instances file (a JSON object with 'images' [{'id', 'file_name'}], "
                "'annotations' [{'image_id', 'category_id'}] and 'categories' [{'id', 'name'}], like "
                "instances_val2017.json)")
    obj, by_id, anns = _official(annotations, images, expected, ("image_id", "category_id"), "categories")
    cats = _require_list_of_dicts(annotations, obj, "categories", ("id", "name"), expected)
    if not cats:
        raise DataError(f"{annotations}: 'categories' is empty; expected {expected}")
    cats = sorted(cats, key=lambda c: _id_key(c["id"]))
    column = {c["id"]: j for j, c in enumerate(cats)}
    if len(column) != len(cats):
        raise DataError(f"{annotations}: duplicate category ids in 'categories'")
    present: dict[Any, set[int]] = {}
    for i, a in enumerate(anns):
        if a["category_id"] not in column:
            known = ", ".join(str(k) for k in list(column)[:20])
            raise DataError(f"{annotations}: annotation {i} has category_id {a['category_id']!r}, which is "
                            f"not in 'categories' (known ids: {known})")
        present.setdefault(a["image_id"], set()).add(column[a["category_id"]])
    order = sorted(present, key=_id_key)
    if not order:
        raise DataError(f"{annotations}: no image has an object annotation ({len(by_id)} images)")
    order = order[: _cut(len(order), max_images)]
    labels = np.zeros((len(order), len(cats)), dtype=np.uint8)
    for r, image_id in enumerate(order):
        labels[r, sorted(present[image_id])] = 1
    paths = [images / str(by_id[i]["file_name"]) for i in order]  # checked by _official
    check_images_exist(paths, images, annotations, ": it should be the folder that holds the image files, "
                       "e.g. val2017/")
    ds = LabelledDataset(name=name, image_paths=paths, labels=labels,
                         class_names=[str(c["name"]) for c in cats], multilabel=True)
    return drop_unreadable(ds, on_bad_image, annotations)
