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
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np

from bench.errors import ConfigError, DataError
from bench.io import write_text_atomic

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")
KINDS = ("circle", "square", "triangle", "star", "cross", "diamond")  # category ids 1..6 in this order
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 155, 50),
    "blue": (35, 70, 215),
    "yellow": (235, 200, 20),
    "purple": (135, 45, 170),
    "orange": (245, 125, 15),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "gray": (212, 212, 212),
    "beige": (238, 228, 200),
}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
# Zero-shot prompt templates written to classes.json; "{}" is the class name.
ZEROSHOT_TEMPLATES = ("a {}", "a picture of a {}", "a drawing of a {}", "a photo of a {}",
                      "a simple {} shape")

# Radius of the circle that encloses a shape, as a fraction of min(width, height). The ranges are
# chosen so that the smallest large shape has a larger area than the biggest small one (whatever
# the kinds), which makes "largest shape" unambiguous.
_LARGE_R = (0.21, 0.26)
_SMALL_R = (0.09, 0.12)
_JPEG = dict(quality=90, optimize=False, progressive=False, subsampling=2)
_README_HEAD = "Synthetic shapes dataset made by bench.demo.synthetic"
_STAMP = "_synthetic.json"

# Fixed words of the caption templates and prompts below (kept in sync by tests/test_data.py).
_TEMPLATE_WORDS = (
    "a an and on the in at of with next to left right top bottom center corner background picture "
    "image simple drawing drawn shape shapes biggest is including colored photo one two three"
)


def caption_vocabulary() -> list[str]:
    """Every lower-case word the generator can emit in captions, class names and prompts (sorted).

    Captions are lower-case words separated by single spaces, plus the punctuation ',' and ':'.
    """
    words = set(_TEMPLATE_WORDS.split())
    words.update(KINDS)
    words.update(COLOURS)
    words.update(BACKGROUNDS)
    words.update(("small", "large"))
    for t in ZEROSHOT_TEMPLATES:
        words.update(_tokens(t.replace("{}", "")))
    return sorted(words)


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


# ----------------------------------------------------------------------------------------------
# geometry


def _unit_polygon(kind: str) -> np.ndarray:
    """Vertices [K, 2] of a shape centred at 0 and enclosed by the unit circle (y points down)."""
    if kind == "circle":
        a = np.linspace(0.0, 2 * math.pi, 40, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if kind == "square":
        h = 1 / math.sqrt(2)
        return np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
    if kind == "triangle":
        a = np.deg2rad([-90.0, 30.0, 150.0])
        return np.stack([np.cos(a), np.sin(a)], 1)
    if kind == "star":
        a = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if kind == "cross":
        w = 0.3
        L = math.sqrt(1 - w * w)
        return np.array([[-w, -L], [w, -L], [w, -w], [L, -w], [L, w], [w, w], [w, L], [-w, L],
                         [-w, w], [-L, w], [-L, -w], [-w, -w]])
    if kind == "diamond":
        return np.array([[0.0, -1.0], [0.6, 0.0], [0.0, 1.0], [-0.6, 0.0]])
    raise ValueError(kind)


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


_ROWS = ("top", "middle", "bottom")
_COLS = ("left", "middle", "right")


def _position_phrase(row: str, col: str) -> str:
    if row == "middle" and col == "middle":
        return "in the center"
    if row == "middle":
        return f"on the {col}"
    if col == "middle":
        return f"at the {row}"
    return f"in the {row} {col} corner"


def _image_sizes(image_size: tuple[int, int]) -> list[tuple[int, int]]:
    """Landscape, portrait, square and wide variants, so Phi-3-vision's HD crops see variety."""
    w, h = image_size
    m = (w + h) // 2
    return [(w, h), (h, w), (m, m), (round(w * 1.25), h)]


class _Shape:
    def __init__(self, kind: str, colour: str, large: bool, cx: float, cy: float, r: float, angle: float,
                 width: int, height: int) -> None:
        self.kind, self.colour, self.large, self.radius = kind, colour, large, r
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        self.points = _unit_polygon(kind) @ rot.T * r + np.array([cx, cy])
        self.area = _polygon_area(self.points)
        self.cx, self.cy = cx, cy
        self.row = _ROWS[min(2, int(3 * cy / height))]
        self.col = _COLS[min(2, int(3 * cx / width))]

    @property
    def size(self) -> str:
        return "large" if self.large else "small"

    @property
    def position(self) -> str:
        return _position_phrase(self.row, self.col)

    def bbox(self) -> list[float]:
        x0, y0 = self.points.min(0)
        x1, y1 = self.points.max(0)
        return [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]


def _place_shapes(rng: np.random.Generator, main_kind: str, width: int, height: int) -> list[_Shape]:
    """1-3 non-overlapping shapes in distinct grid cells; the first ("main") one is the largest."""
    m = min(width, height)
    n_wanted = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    shapes: list[_Shape] = []
    used: set[tuple[str, str]] = set()
    cells_taken: set[tuple[int, int]] = set()
    tries = 0
    while len(shapes) < n_wanted and tries < 200:
        tries += 1
        first = not shapes
        kind = main_kind if first else KINDS[int(rng.integers(len(KINDS)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        # With several shapes only the main one is large; a lone shape is large 70% of the time.
        large = first and (n_wanted > 1 or rng.random() < 0.7)
        lo, hi = _LARGE_R if large else _SMALL_R
        r = float(rng.uniform(lo, hi)) * m
        row, col = int(rng.integers(3)), int(rng.integers(3))
        angle = 0.0 if kind == "circle" else float(np.deg2rad(rng.uniform(-12, 12)))
        ux, uy = float(rng.random()), float(rng.random())
        if (kind, colour) in used or (row, col) in cells_taken:
            continue
        cx = _coord_in_cell(col, width, r, ux)
        cy = _coord_in_cell(row, height, r, uy)
        if any(math.hypot(cx - s.cx, cy - s.cy) < r + s.radius + 0.03 * m for s in shapes):
            continue
        shapes.append(_Shape(kind, colour, large, cx, cy, r, angle, width, height))
        used.add((kind, colour))
        cells_taken.add((row, col))
    return shapes


def _coord_in_cell(cell: int, extent: int, r: float, u: float) -> float:
    """A coordinate inside grid cell `cell` (0..2) that keeps a shape of radius r inside the image."""
    lo = max(cell * extent / 3, r + 1)
    hi = min((cell + 1) * extent / 3 - 1e-3, extent - r - 1)
    if hi < lo:  # tiny images: stay inside the picture, the label follows the actual position
        lo = hi = min(max(extent / 2, r + 1), extent - r - 1)
    return lo + u * (hi - lo)


def _draw(width: int, height: int, background: str, shapes: list[_Shape], rng: np.random.Generator):
    """Render at 2x and downsample, which anti-aliases the edges."""
    from PIL import Image, ImageDraw

    bg = _jitter(BACKGROUNDS[background], 4, rng)
    im = Image.new("RGB", (2 * width, 2 * height), bg)
    draw = ImageDraw.Draw(im)
    for s in shapes:
        fill = _jitter(COLOURS[s.colour], 12, rng)
        draw.polygon([(float(2 * x), float(2 * y)) for x, y in s.points], fill=fill)
    return im.resize((width, height), Image.Resampling.LANCZOS)


def _jitter(rgb: tuple[int, int, int], amount: int, rng: np.random.Generator) -> tuple[int, int, int]:
    d = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.array(rgb) + d, 0, 255))


# ----------------------------------------------------------------------------------------------
# captions


def _np(s: _Shape, size: bool = False) -> str:
    """Noun phrase: 'a large red circle', 'an orange star'."""
    words = ([s.size] if size else []) + [s.colour, s.kind]
    return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _caption_candidates(shapes: list[_Shape], background: str) -> list[str]:
    """At least 8 distinct true descriptions; each names the colour and kind of the main shape."""
    main = shapes[0]
    if len(shapes) == 1:
        s = main
        return [
            f"{_np(s, True)} {s.position}",
            f"{_np(s)} on a {background} background",
            f"a picture of {_np(s, True)}",
            f"one {s.colour} {s.kind} {s.position}",
            f"a {s.kind} colored {s.colour} {s.position}",
            f"{_np(s)} drawn {s.position} of the picture",
            f"a {background} image with {_np(s, True)}",
            f"a simple drawing of {_np(s)} {s.position}",
        ]
    n = NUMBER_WORDS[len(shapes)]
    others = shapes[1:]
    return [
        f"{n} shapes: {_join([_np(s, True) for s in shapes])}",
        _join([f"{_np(s, True)} {s.position}" for s in shapes]),
        f"{_np(main, True)} next to {_join([_np(s, True) for s in others])}",
        f"{n} shapes on a {background} background, the biggest is {_np(main)}",
        f"a picture of {_join([_np(s) for s in shapes])}",
        f"{_np(main, True)} {main.position} with {_join([_np(s, True) for s in others])}",
        f"a simple drawing of {_join([_np(s) for s in shapes])}",
        f"{n} colored shapes, including {_np(main, True)} {main.position}",
    ]


def _num_captions(j: int) -> int:
    """5 captions, with a few images getting 6 or 7 like real COCO (fixed pattern: every split of
    at least 8 images has both)."""
    if j % 13 == 7:
        return 7
    if j % 9 == 4:
        return 6
    return 5


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
    sizes = _image_sizes(image_size)
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
            shapes = _place_shapes(rng, main_kinds[j], width, height)
            im = _draw(width, height, background, shapes, rng)
            file_name = f"{image_id:012d}.jpg"
            img_path = paths["images"] / split / file_name
            im.save(img_path, "JPEG", **_JPEG)
            # The main shape is the largest by construction; the imagefolder label is its kind.
            largest = max(shapes, key=lambda s: s.area)
            _link_or_copy(img_path, paths["imagefolder"] / split / largest.kind / file_name)

            candidates = _caption_candidates(shapes, background)
            order = rng.permutation(len(candidates))[: _num_captions(j)]
            captions = [candidates[int(k)] for k in order]
            sentences = []
            for c in captions:
                sentences.append({"tokens": _tokens(c), "raw": c, "imgid": len(karpathy_images),
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
