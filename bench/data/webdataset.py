"""`type: webdataset` — local tar shards in CLIP_benchmark's webdataset layout.

Layout (clip_benchmark.datasets.builder.build_wds_dataset, `clip-benchmark/wds_*` on the hub):

    root/
      <split>/0.tar 1.tar ... nshards.txt     shards of one split (nshards.txt optional here)
      classnames.txt                          one class name per line (classification)
      zeroshot_classification_templates.txt   one prompt per line, `{c}` = class name
      dataset_type.txt                        "retrieval" | "classification" | "multilabel" (optional)

A sample is the run of consecutive tar members sharing a key (the member name up to the first dot
of its base name, as the webdataset package groups them): `s0000000.webp|png|jpg|jpeg` (the image),
`s0000000.txt` (captions, one per line) or `s0000000.cls` (class id as text; `.npy` 0/1 vector for
multi-label). Shards are indexed once in the main process with `tarfile` (headers only; caption and
label members are read, image bytes are not); images become `TarMember` references read by offset
in the loader workers. Only uncompressed tars (the format CLIP_benchmark writes) can be indexed.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import re
import tarfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from bench.data.base import drop_unreadable
from bench.data.hf import EntryProvides
from bench.data.hub import resolve_hub_dataset
from bench.data.refs import SourcedCaptionDataset, SourcedLabelledDataset, TarMember, hash_data_file
from bench.errors import DataError, did_you_mean
from bench.params import DatasetParams, Int, OnBadImage

log = logging.getLogger(__name__)

IMAGE_KEYS = ("webp", "png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "ppm")
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
TYPE_FILE = "dataset_type.txt"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


class WebDatasetParams(DatasetParams):
    """Parameters of `type: webdataset` (path and/or shards)."""

    type: Literal["webdataset"] = "webdataset"
    provides: ClassVar[Any] = EntryProvides(lambda p: "captions|labels" if p.kind == "auto" else p.kind)
    path: str | None = Field(None, description="root folder in CLIP_benchmark layout, a glob or brace "
                                               "pattern of .tar shards (e.g. 'wds/test/{0..4}.tar'), or a "
                                               "hub dataset id (clip-benchmark/wds_cifar10) in the HF cache")
    shards: str | None = Field(None, description="glob or brace pattern of .tar shards, e.g. "
                                                 "'test/{0..4}.tar' (relative to path when path is set)")
    split: str = Field("test", description="split folder under path (ignored when shards is set)")
    revision: str | None = Field(None, description="hub ids only: branch, tag or commit sha")
    kind: Literal["auto", "captions", "labels"] = Field(
        "auto", description="captions (retrieval) or labels (probe/zero-shot); auto = dataset_type.txt, "
                            "else the first sample's keys")
    image_keys: list[str] = Field(list(IMAGE_KEYS), min_length=1, description="image extensions, by priority")
    caption_key: str = "txt"
    label_key: str | None = Field(None, description="default: cls, or npy for multilabel datasets")
    classnames: str | None = Field(None, description=f"class names file (default: {CLASSNAMES_FILE} in the root)")
    templates: str | None = Field(None, description=f"zero-shot templates file (default: {TEMPLATES_FILE} in "
                                                    "the root)")
    on_missing: Literal["error", "skip"] = Field(
        "error", description="a sample without image or caption/label: stop with an error, or skip and count it")
    max_images: Int(ge=1) | None = Field(None, description="keep the first N samples")
    on_bad_image: OnBadImage = Field("error", description="skip: decode every image at load time and drop "
                                                          "the unreadable ones with their captions/labels")

    @model_validator(mode="after")
    def _some_source(self) -> WebDatasetParams:
        if not self.path and not self.shards:
            raise ValueError("set path (a folder in CLIP_benchmark layout or a cached hub id) or shards "
                             "(a glob or brace pattern of .tar files)")
        return self


# ---- shard lists ---------------------------------------------------------------------------------


def expand_braces(pattern: str) -> list[str]:
    """`a{0..2}b` -> a0b a1b a2b (zero-padded like `{000..009}`); `{x,y}` -> both; nested left to right."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    head, body, tail = pattern[:m.start()], m.group(1), pattern[m.end():]
    r = _RANGE.match(body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        width = max(len(r.group(1)), len(r.group(2))) if r.group(1).startswith("0") or \
            r.group(2).startswith("0") else 0
        step = 1 if hi >= lo else -1
        options = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    else:
        options = body.split(",")
    return [x for opt in options for x in expand_braces(head + opt + tail)]


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.as_posix())]


def _shards_from_pattern(pattern: str, base: Path | None) -> list[Path]:
    out: list[Path] = []
    for item in expand_braces(pattern):
        p = Path(item).expanduser()
        p = (p if p.is_absolute() or base is None else base / p).absolute()
        if glob.has_magic(str(p)):
            found = sorted((Path(f) for f in glob.glob(str(p))), key=_natural)
            if not found:
                raise DataError(f"webdataset shards: '{item}' matches no file" + (f" under {base}" if base else ""))
            out += found
        elif not p.is_file():
            raise DataError(f"webdataset shard not found: {p} (from the pattern '{pattern}')")
        else:
            out.append(p)
    return out


def _split_shards(root: Path, split: str) -> list[Path]:
    folder = root / split
    if not folder.is_dir():
        splits = sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.tar")))
        raise DataError(f"webdataset {root} has no split folder '{split}'{did_you_mean(split, splits) or ';'} splits: "
                        f"{', '.join(splits) or 'none (no sub-folder with .tar shards)'}")
    nshards = folder / "nshards.txt"
    if nshards.is_file():
        try:
            n = int(nshards.read_text().strip())
        except ValueError:
            raise DataError(f"{nshards} does not hold a number of shards") from None
        shards = [folder / f"{i}.tar" for i in range(n)]
        missing = [s for s in shards if not s.is_file()]
        if missing:
            raise DataError(f"{nshards} says {n} shards but {missing[0]} is missing ({len(missing)} missing; "
                            "an incomplete download?)")
        return shards
    shards = sorted(folder.glob("*.tar"), key=_natural)
    if not shards:
        raise DataError(f"webdataset split folder {folder} holds no .tar shards")
    return shards


# ---- indexing -------------------------------------------------------------------------------------


def _key_ext(member: str) -> tuple[str, str]:
    """webdataset's grouping: key = path up to the first dot of the base name, ext = the rest."""
    folder, _, base = member.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def _samples(shard: Path):
    """Yield (key, {ext: TarInfo}, tarfile) for each run of consecutive members sharing a key."""
    try:
        tf = tarfile.open(shard, "r:")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"cannot index webdataset shard {shard}: {e} (only uncompressed .tar shards are "
                        "supported; is it truncated or compressed?)") from None
    with tf:
        key, parts = None, {}
        try:
            for m in tf:
                if not m.isfile():
                    continue
                k, ext = _key_ext(m.name)
                if k != key and parts:
                    yield key, parts, tf
                    parts = {}
                if ext in parts:
                    raise DataError(f"webdataset shard {shard}: sample '{k}' has two '.{ext}' members (keys of "
                                    "different samples must differ)")
                key = k
                parts[ext] = m
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"webdataset shard {shard} is corrupt after {key}: {e}") from None
        if parts:
            yield key, parts, tf


def _read_text(tf: tarfile.TarFile, m: tarfile.TarInfo, shard: Path) -> str:
    try:
        return tf.extractfile(m).read().decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"member '{m.name}' of shard {shard} is not UTF-8 text") from None


def _label(tf, m, ext: str, shard: Path):
    if ext == "npy":
        try:
            arr = np.load(io.BytesIO(tf.extractfile(m).read()), allow_pickle=False)
        except ValueError as e:
            raise DataError(f"member '{m.name}' of shard {shard} is not a .npy array: {e}") from None
        return [int(x) for x in np.asarray(arr).reshape(-1)]
    text = _read_text(tf, m, shard).strip()
    try:
        return int(text)
    except ValueError:
        raise DataError(f"member '{m.name}' of shard {shard} should hold a class id, holds {text[:40]!r}") \
            from None


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _meta_file(explicit: str | None, default: str, dirs: list[Path]) -> Path | None:
    if explicit:
        p = Path(explicit).expanduser()
        cands = [p] if p.is_absolute() else [d / p for d in dirs] + [p]
        for c in cands:
            if c.is_file():
                return c
        raise DataError(f"webdataset file '{explicit}' not found (looked in {', '.join(str(c) for c in cands)})")
    return next((d / default for d in dirs if (d / default).is_file()), None)


def is_pattern(path: str) -> bool:
    """Whether a webdataset `path` names shards (a glob or brace pattern, or a .tar file)."""
    return glob.has_magic(path) or bool(_BRACE.search(path)) or path.endswith(".tar")


def load_webdataset(name: str, params: WebDatasetParams | None = None, /, **settings: Any
                    ) -> SourcedCaptionDataset | SourcedLabelledDataset:
    """Index the shards and return captions or labels with TarMember image references (`params`, or
    the settings of a config entry). With on_bad_image 'skip' every image is decoded once now and the
    unreadable ones are dropped with their captions or labels (bench.data.base.drop_unreadable)."""
    params = params if params is not None else WebDatasetParams(**settings)
    if params.path and not params.shards and is_pattern(params.path):
        params = params.model_copy(update={"path": None, "shards": params.path})
        origin = params.shards
    else:
        origin = params.path or params.shards
    ds = _load(name, params)
    return drop_unreadable(ds, params.on_bad_image, origin)


def _load(name: str, params: WebDatasetParams) -> SourcedCaptionDataset | SourcedLabelledDataset:
    root, revision = None, None
    if params.path:
        local = Path(params.path).expanduser().absolute()
        if local.is_dir():
            root = local
        elif not local.exists() and _HUB_ID.match(params.path):
            root = resolve_hub_dataset(params.path, params.revision)
            revision = root.name
        else:
            raise DataError(f"webdataset path {local.absolute()} is not a folder (give the root that holds the "
                            "split folders, or a cached hub id like clip-benchmark/wds_flickr30k)")
    shards = _shards_from_pattern(params.shards, root) if params.shards else _split_shards(root, params.split)
    meta_dirs = [root] if root else []
    meta_dirs += [d for d in dict.fromkeys((shards[0].parent.parent, shards[0].parent)) if d not in meta_dirs]
    dataset_type = _meta_file(None, TYPE_FILE, meta_dirs)
    dtype = dataset_type.read_text().strip().lower() if dataset_type else ""
    kind = params.kind
    if kind == "auto" and dtype:
        kind = "captions" if dtype == "retrieval" else "labels"
    label_key = params.label_key or ("npy" if dtype == "multilabel" else "cls")
    image_keys = [k.lower().lstrip(".") for k in params.image_keys]
    origin = f"webdataset {params.path or params.shards}"

    refs: list[TarMember] = []
    targets: list = []
    keys: list[str] = []
    skipped: dict[str, int] = {}
    used: list[Path] = []
    limit = params.max_images or float("inf")
    for shard in shards:
        if len(refs) >= limit:
            break
        used.append(shard)
        shard_name = str(shard)  # one string shared by all its members
        for key, parts, tf in _samples(shard):
            if kind == "auto":
                kind = "captions" if params.caption_key in parts else "labels" if label_key in parts else "auto"
                if kind == "auto":
                    raise DataError(f"{origin}: cannot tell captions from labels: sample '{key}' of {shard} has "
                                    f"{', '.join(sorted(parts))}; set kind (and caption_key / label_key)")
            want = params.caption_key if kind == "captions" else label_key
            image = next((parts[k] for k in image_keys if k in parts), None)
            target = None
            if want in parts:
                target = (_read_text(tf, parts[want], shard).splitlines() if kind == "captions"
                          else _label(tf, parts[want], want, shard))
                if kind == "captions":
                    target = [t.strip() for t in target if t.strip()] or None
            if image is None or target is None:
                lacks = "an image (" + "/".join(image_keys) + ")" if image is None else \
                    (f"a caption (.{want})" if kind == "captions" else f"a label (.{want})")
                if params.on_missing == "error":
                    raise DataError(f"{origin}: sample '{key}' of shard {shard} has no {lacks}; it has "
                                    f"{', '.join(sorted(parts)) or 'nothing'} (fix the shard, or set "
                                    "on_missing: skip to drop such samples and count them)")
                skipped[lacks] = skipped.get(lacks, 0) + 1
                continue
            refs.append(TarMember(shard_name, image.name, image.offset_data, image.size))
            targets.append(target)
            keys.append(key)
            if len(refs) >= limit:
                break
    n_skipped = sum(skipped.values())
    notes = [f"dataset '{name}': skipped {n_skipped} sample(s) of {origin} (on_missing: skip): "
             + ", ".join(f"{v} without {k}" for k, v in skipped.items())] if n_skipped else []
    if not refs:
        raise DataError(f"{origin}: no usable samples in {len(used)} shard(s)"
                        + (f" ({n_skipped} skipped)" if n_skipped else ""))

    source = json.dumps({"revision": revision, "shards": [[_rel(s, root), hash_data_file(s)] for s in used]},
                        separators=(",", ":"))
    if kind == "captions":
        return SourcedCaptionDataset(name=name, image_paths=refs, captions=targets, image_ids=keys,
                                     source=source, skipped_samples=n_skipped, notes=notes)
    out = _labelled(name, params, refs, targets, meta_dirs, source, n_skipped, origin)
    out.notes = notes
    return out


def _rel(shard: Path, root: Path | None) -> str:
    try:
        return shard.relative_to(root).as_posix() if root else shard.name
    except ValueError:
        return shard.name


def _labelled(name, params, refs, targets, meta_dirs, source, n_skipped, origin) -> SourcedLabelledDataset:
    names_file = _meta_file(params.classnames, CLASSNAMES_FILE, meta_dirs)
    templates_file = _meta_file(params.templates, TEMPLATES_FILE, meta_dirs)
    multilabel = isinstance(targets[0], list)
    if any(isinstance(t, list) != multilabel for t in targets):
        raise DataError(f"{origin}: samples mix single labels and label vectors")
    if multilabel:
        width = {len(t) for t in targets}
        if len(width) != 1:
            raise DataError(f"{origin}: multi-label vectors have different lengths {sorted(width)}")
        labels = np.asarray(targets, dtype=np.uint8)
        n_classes = labels.shape[1]
    else:
        labels = np.asarray(targets, dtype=np.int64)
        if labels.min() < 0:
            raise DataError(f"{origin}: negative class id {labels.min()}")
        n_classes = int(labels.max()) + 1
    if names_file:
        class_names = _lines(names_file)
        if n_classes > len(class_names):
            raise DataError(f"{origin}: class id {n_classes - 1} but {names_file} names only {len(class_names)} "
                            "classes")
    else:
        log.warning("%s: no %s; classes are named by their ids (zero-shot prompts will be meaningless)",
                    origin, CLASSNAMES_FILE)
        class_names = [str(i) for i in range(n_classes)]
    templates = None
    if templates_file:
        templates = _lines(templates_file)
        bad = [t for t in templates if "{c}" not in t]
        if bad or not templates:
            raise DataError(f"{templates_file}: every template needs the class-name placeholder {{c}}, "
                            f"e.g. 'a photo of a {{c}}.'; found {bad[0]!r}" if bad else f"{templates_file} is empty")
    return SourcedLabelledDataset(name=name, image_paths=refs, labels=labels, class_names=class_names,
                                  multilabel=multilabel, source=source, templates=templates,
                                  skipped_samples=n_skipped)
