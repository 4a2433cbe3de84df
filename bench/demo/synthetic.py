"""A small, deterministic synthetic dataset in the real COCO on-disk formats.

Each image is a plain light background with 1-3 coloured shapes. The captions truly describe the
image (kind, colour, size, position of every shape), and every caption names the colour and kind of
the largest shape, so retrieval, a linear probe and zero-shot classification are all learnable.

Determinism: the same parameters give byte-identical files (numpy Generator seeded per split,
PIL drawing, fixed JPEG settings, JSON written with fixed key order). Generation of a few hundred
images takes about a second.

Layout under out_dir (see README.txt there):
  images/<split>/<id>.jpg                       the pictures (split = train, val, test)
  dataset_coco.json                             Karpathy format (filepath = split folder name)
  annotations/captions_<split>.json             official COCO captions format
  annotations/instances_<split>.json            official COCO instances format (bbox, area, segmentation)
  imagefolder/<split>/<class>/<id>.jpg          single label = kind of the largest shape (hard links)
  classes.json                                  class names and zero-shot prompts
  _synthetic.json                               parameter stamp, written last
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from bench.demo.shapes import (
    BACKGROUNDS,
    COLOURS,
    KINDS,
    ZEROSHOT_TEMPLATES,
    caption_candidates,
    caption_vocabulary,
    draw_scene,
    image_sizes,
    num_captions,
    place_shapes,
    tokens,
)
from bench.errors import ConfigError, DataError
from bench.io import write_text_atomic

__all__ = ["COLOURS", "GENERATOR_VERSION", "KINDS", "SPLITS", "caption_vocabulary", "make_synthetic"]

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")
_JPEG = dict(quality=90, optimize=False, progressive=False, subsampling=2)
_README_HEAD = "Synthetic shapes dataset made by bench.demo.synthetic"
_STAMP = "_synthetic.json"



# ----------------------------------------------------------------------------------------------
# writer


def _params(n_train: int, n_val: int, n_test: int, seed: int, image_size: tuple[int, int]) -> dict:
    return {"generator_version": GENERATOR_VERSION, "n_train": n_train, "n_val": n_val, "n_test": n_test,
            "seed": seed, "image_size": list(image_size)}


def _paths(out: Path) -> dict[str, Path]:
    p: dict[str, Path] = {
        "root": out,
        "images": out / "images",
        "karpathy": out / "dataset_coco.json",
        "imagefolder": out / "imagefolder",
        "classes": out / "classes.json",
        "readme": out / "README.txt",
        "stamp": out / _STAMP,
    }
    for split in SPLITS:
        p[f"captions_{split}"] = out / "annotations" / f"captions_{split}.json"
        p[f"instances_{split}"] = out / "annotations" / f"instances_{split}.json"
    return p


def _write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, separators=(",", ":")), fsync=False,
                      map_errors=False)


def _is_complete(paths: dict[str, Path], params: dict) -> bool:
    try:
        stamp = json.loads(paths["stamp"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if stamp.get("params") != params:
        return False
    if not all(p.exists() for p in paths.values()):
        return False
    n = sum(len(list((paths["images"] / s).glob("*.jpg"))) for s in SPLITS)
    return n == params["n_train"] + params["n_val"] + params["n_test"]


def _prepare_dir(out: Path, paths: dict[str, Path]) -> None:
    """Empty our own previous output; refuse to write into a folder that is not ours."""
    if out.exists() and not out.is_dir():
        raise DataError(f"make-data output {out} exists and is not a folder; choose another path")
    out.mkdir(parents=True, exist_ok=True)
    readme = paths["readme"]
    ours = paths["stamp"].exists() or (
        readme.exists() and readme.read_text(encoding="utf-8", errors="replace").startswith(_README_HEAD))
    if any(out.iterdir()) and not ours:
        raise DataError(f"make-data output {out} is not empty and does not hold a synthetic dataset; "
                        "choose an empty or new folder")
    paths["stamp"].unlink(missing_ok=True)  # first, so a run killed below is redone next time
    for key in ("images", "imagefolder"):
        shutil.rmtree(paths[key], ignore_errors=True)
    shutil.rmtree(out / "annotations", ignore_errors=True)
    for key in ("karpathy", "classes"):
        paths[key].unlink(missing_ok=True)


def _readme(params: dict, counts: dict[str, int]) -> str:
    return f"""{_README_HEAD} (generator version {GENERATOR_VERSION}).

Not real photos: each image is a light plain background ({', '.join(BACKGROUNDS)}) with 1-3 shapes
(kinds: {', '.join(KINDS)}; colours: {', '.join(COLOURS)}; sizes: small, large; positions on a 3x3 grid).
With several shapes, the first-named one is large and the others are small. Every caption names the
colour and kind of the largest shape. Most images have 5 captions, a few have 6 or 7.

Parameters: {json.dumps(params, sort_keys=True)}
Images: train={counts['train']} val={counts['val']} test={counts['test']}

images/<split>/<id>.jpg                  the images
dataset_coco.json                        Karpathy split file (type coco_karpathy, images: images/)
annotations/captions_<split>.json        COCO captions (type coco_captions, images: images/<split>)
annotations/instances_<split>.json       COCO instances, categories = shape kinds (type coco_instances)
imagefolder/<split>/<class>/<id>.jpg     single label = kind of the largest shape (type imagefolder)
classes.json                             class names and zero-shot prompts
"""


def make_synthetic(out_dir: str | Path, n_train: int = 200, n_val: int = 50, n_test: int = 100, seed: int = 0,
                   image_size: tuple[int, int] = (160, 120)) -> dict[str, Path]:
    """Write the synthetic dataset under out_dir (skipped when already complete with the same
    parameters) and return the paths of what it wrote (keys: root, images, karpathy, imagefolder,
    classes, readme, stamp, captions_<split>, instances_<split>)."""

    counts = {"train": n_train, "val": n_val, "test": n_test}
    for key, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"make-data: n_{key} must be an integer >= 0, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"make-data: seed must be an integer >= 0, got {seed!r}")
    try:
        image_size = (int(image_size[0]), int(image_size[1]))
    except (TypeError, ValueError, IndexError):
        raise ConfigError(f"make-data: image_size must be (width, height), got {image_size!r}") from None
    if min(image_size) < 32 or max(image_size) > 1024:
        raise ConfigError(f"make-data: image_size sides must be within 32..1024 pixels, got {image_size}")

    out = Path(out_dir)
    paths = _paths(out)
    params = _params(n_train, n_val, n_test, seed, image_size)
    if _is_complete(paths, params):
        return paths
    _prepare_dir(out, paths)
    paths["readme"].write_text(_readme(params, counts), encoding="utf-8")  # marks the folder as ours
    (out / "annotations").mkdir()
    for split in SPLITS:
        (paths["images"] / split).mkdir(parents=True)
        for kind in KINDS:  # every class folder in every split, so class lists agree across splits
            (paths["imagefolder"] / split / kind).mkdir(parents=True)

    categories = [{"id": i + 1, "name": k, "supercategory": "shape"} for i, k in enumerate(KINDS)]
    cat_id = {k: i + 1 for i, k in enumerate(KINDS)}
    sizes = image_sizes(image_size)
    karpathy_images: list[dict] = []
    next_id, next_sent, next_ann = 1, 0, 1
    for split_index, split in enumerate(SPLITS):
        n = counts[split]
        # Per-split generators: changing n_train does not change the val/test pictures.
        rng = np.random.default_rng([seed, split_index])
        main_kinds = [KINDS[i % len(KINDS)] for i in range(n)]  # balanced classes, shuffled below
        rng.shuffle(main_kinds)
        coco_images, cap_rows, inst_anns = [], [], []
        for j in range(n):
            image_id = next_id
            next_id += 1
            width, height = sizes[int(rng.integers(len(sizes)))]
            background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
            shapes = place_shapes(rng, main_kinds[j], width, height)
            im = draw_scene(width, height, background, shapes, rng)
            file_name = f"{image_id:012d}.jpg"
            img_path = paths["images"] / split / file_name
            im.save(img_path, "JPEG", **_JPEG)
            # The main shape is the largest by construction; the imagefolder label is its kind.
            largest = max(shapes, key=lambda s: s.area)
            _link_or_copy(img_path, paths["imagefolder"] / split / largest.kind / file_name)

            candidates = caption_candidates(shapes, background)
            order = rng.permutation(len(candidates))[: num_captions(j)]
            captions = [candidates[int(k)] for k in order]
            sentences = []
            for c in captions:
                sentences.append({"tokens": tokens(c), "raw": c, "imgid": len(karpathy_images),
                                  "sentid": next_sent})
                next_sent += 1
            karpathy_images.append({
                "filepath": split, "sentids": [s["sentid"] for s in sentences], "filename": file_name,
                "imgid": len(karpathy_images), "split": split, "sentences": sentences, "cocoid": image_id,
            })
            coco_images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                                "license": 0})
            cap_rows.append(captions)
            for s in shapes:
                inst_anns.append({
                    "id": next_ann, "image_id": image_id, "category_id": cat_id[s.kind],
                    "segmentation": [[round(float(v), 2) for v in s.points.reshape(-1)]],
                    "area": round(s.area, 2), "bbox": s.bbox(), "iscrowd": 0,
                })
                next_ann += 1

        # Real COCO files list images in no particular order and interleave captions of different
        # images; do the same (deterministically) so the loaders' grouping and sorting are exercised.
        listed = [coco_images[int(k)] for k in rng.permutation(len(coco_images))]
        cap_anns = []
        for rank in range(max((len(c) for c in cap_rows), default=0)):
            for img, caps in zip(coco_images, cap_rows):
                if rank < len(caps):
                    cap_anns.append({"image_id": img["id"], "id": 0, "caption": caps[rank]})
        for i, a in enumerate(cap_anns):
            a["id"] = i + 1
        info = {"description": f"bench synthetic shapes, {split} split", "version": str(GENERATOR_VERSION),
                "year": 2024}
        _write_json(paths[f"captions_{split}"], {"info": info, "licenses": [], "images": listed,
                                                  "annotations": cap_anns})
        _write_json(paths[f"instances_{split}"], {"info": info, "licenses": [], "images": listed,
                                                   "annotations": inst_anns, "categories": categories})

    _write_json(paths["karpathy"], {"images": karpathy_images, "dataset": "coco"})
    _write_json(paths["classes"], {
        "classes": list(KINDS),
        "templates": list(ZEROSHOT_TEMPLATES),
        "prompts": {k: [t.format(k) for t in ZEROSHOT_TEMPLATES] for k in KINDS},
    })
    _write_json(paths["stamp"], {"params": params})  # last: its presence means "complete"
    return paths


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # file systems without hard links
        shutil.copyfile(src, dst)
