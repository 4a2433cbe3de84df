"""`type: hf` — Hugging Face datasets as they are kept on disk: a `save_to_disk` folder, a folder or
glob of parquet/Arrow files, or a hub dataset id already in the local HF cache (never downloaded).

Only the annotation columns (captions / labels / `where` filters) are read in the main process;
images stay in their files and are referenced by `TableRow` (bytes) or `Path` (datasets that store
file paths), decoded lazily in the loader workers (bench/data/refs.py). No loading scripts and no
trust_remote_code: data files are read with pyarrow; `datasets` is only asked which files make up
a split (README `configs:` and its split-name patterns), as `load_dataset` would pick them.
"""

from __future__ import annotations

import glob
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import numpy as np
from pydantic import Field, model_validator

from bench.data.base import drop_unreadable
from bench.data.hub import resolve_hub_dataset
from bench.data.refs import (ImageRef, SourcedCaptionDataset, SourcedLabelledDataset, TableRow,
                             hash_data_file, read_arrow_table)
from bench.errors import DataError, did_you_mean
from bench.params import DatasetParams, Int, OnBadImage

log = logging.getLogger(__name__)

Scalar = Union[str, int, float, bool]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_GLOB = re.compile(r"[*?\[]")


class EntryProvides:
    """`provides` of a dataset type whose entries decide it (bench.params.DatasetParams.provides): read
    on the class, "captions|labels" (tasks of either kind may name such a type); read on an entry, what
    that entry gives ("captions", "labels", or "captions|labels" when only the data can tell: the
    runner then checks the loaded dataset, bench.tasks.check_tasks_against_data)."""

    def __init__(self, decide) -> None:
        self.decide = decide

    def __get__(self, entry, owner=None) -> str:
        return "captions|labels" if entry is None else self.decide(entry)


class HFParams(DatasetParams):
    """Parameters of `type: hf` (exactly one of caption_column / label_column)."""

    type: Literal["hf"] = "hf"
    provides: ClassVar[Any] = EntryProvides(lambda p: "captions" if p.caption_column else "labels")
    path: str = Field(description="save_to_disk folder, folder/glob of .parquet/.arrow files, or a hub "
                                  "dataset id in the local HF cache")
    name: str | None = Field(None, description="config (subset) name, for folders with several configs")
    split: str = Field("test", description="split to read (a save_to_disk Dataset folder has one split)")
    revision: str | None = Field(None, description="hub ids only: branch, tag or commit sha of the snapshot")
    image_column: str = "image"
    caption_column: str | None = Field(None, description="string column, or list-of-strings column")
    label_column: str | None = Field(None, description="int (ClassLabel), string, or list of ints "
                                                       "(multi-label) column")
    class_names: list[str] | None = Field(None, description="class names when the label column has no "
                                                            "ClassLabel names")
    image_root: str | None = Field(None, description="folder that relative image paths are relative to "
                                                     "(default: the data file's folder)")
    where: dict[str, Union[Scalar, list[Scalar]]] | None = Field(
        None, description="keep rows whose column equals the value (or one of the values)")
    max_images: Int(ge=1) | None = Field(None, description="keep the first N images")
    on_bad_image: OnBadImage = Field("error", description="skip: decode every image at load time and drop "
                                                          "the unreadable ones with their captions/labels")

    @model_validator(mode="after")
    def _one_target(self) -> HFParams:
        if (self.caption_column is None) == (self.label_column is None):
            raise ValueError("set exactly one of caption_column (retrieval) or label_column "
                             "(probe / zero-shot)")
        return self


@dataclass
class _Source:
    files: list[Path]
    fmt: str  # "parquet" | "arrow"
    base: Path  # folder the files are named relative to (fingerprints, default image root)
    revision: str | None
    origin: str  # for messages
    features: dict | None = None  # datasets Features as JSON, when known


# ---- where the files are ------------------------------------------------------------------------


def _fmt(files: list[Path], origin: str) -> str:
    exts = {f.suffix.lower() for f in files}
    if exts == {".parquet"}:
        return "parquet"
    if exts == {".arrow"}:
        return "arrow"
    if ".tar" in exts:
        raise DataError(f"{origin} holds tar shards: use type webdataset for them")
    raise DataError(f"{origin}: type hf reads .parquet or .arrow files, found {', '.join(sorted(exts))} "
                    "(for a folder of images use type imagefolder)")


def _save_to_disk(folder: Path, origin: str) -> _Source:
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        files = [folder / d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{folder}/state.json is not a datasets save_to_disk state file: {e}") from None
    features = None
    try:
        features = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8")).get("features")
    except (OSError, ValueError, AttributeError):
        pass  # the Arrow schema metadata carries the features too
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{origin}: data file {missing[0]} listed in state.json is missing (copy incomplete?)")
    return _Source(files, "arrow", folder, None, origin, features)


def _data_folder(folder: Path, params: HFParams, revision: str | None, origin: str) -> _Source:
    """Files of (config, split) in a plain folder or hub snapshot, resolved as `load_dataset` does."""
    import tempfile

    import datasets

    if (folder / params.split / "state.json").is_file():  # a save_to_disk DatasetDict inside a hub repo
        return _save_to_disk(folder / params.split, origin)
    scripts = sorted(p.name for p in folder.glob("*.py"))
    name = params.name
    if name and (folder / name).is_dir() and not (folder / "README.md").is_file():
        # the hub's parquet conversion (revision refs/convert/parquet): <config>/<split>/NNNN.parquet
        folder, name = folder / name, None
    with tempfile.TemporaryDirectory() as tmp:  # the builder wants a cache folder: keep it out of ~/.cache
        try:
            builder = datasets.load_dataset_builder(str(folder), name=name, cache_dir=tmp)
        except Exception as e:  # datasets raises many types here; all mean "cannot use this folder"
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if scripts:
                raise DataError(f"{origin} is a dataset with a loading script ({', '.join(scripts)}); bench runs "
                                "no loading scripts and no trust_remote_code: point path at its parquet/arrow "
                                "files (many hub datasets have them on the refs/convert/parquet revision)") from None
            raise DataError(f"{origin}: cannot find data files for config {params.name or 'default'}: "
                            f"{msg}") from None
        data_files = dict(builder.config.data_files or {})
        features = builder.info.features.to_dict() if builder.info.features is not None else None
    if params.split not in data_files:
        raise DataError(f"{origin} has no split '{params.split}'{did_you_mean(params.split, data_files) or ';'} "
                        f"splits: {', '.join(sorted(data_files)) or 'none'}")
    files = sorted({Path(f) for f in data_files[params.split]}, key=lambda p: p.as_posix())
    if not files:
        raise DataError(f"{origin}: split '{params.split}' has no data files")
    return _Source(files, _fmt(files, origin), folder, revision, origin, features)


def resolve_source(params: HFParams) -> _Source:
    local = Path(params.path).expanduser().absolute()  # workers may run elsewhere: no relative paths
    origin = f"hf dataset {params.path}"
    if local.is_file():
        return _Source([local], _fmt([local], origin), local.parent, None, origin)
    if local.is_dir():
        if (local / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in local.iterdir() if (p / "state.json").is_file())
            if params.split not in splits:
                raise DataError(f"{origin} (save_to_disk) has no split '{params.split}'"
                                f"{did_you_mean(params.split, splits) or ';'} splits: {', '.join(splits) or 'none'}")
            return _save_to_disk(local / params.split, origin)
        if (local / "state.json").is_file():
            return _save_to_disk(local, origin)
        return _data_folder(local, params, None, origin)
    if _GLOB.search(params.path):
        files = sorted((Path(f) for f in glob.glob(str(local), recursive=True)), key=lambda p: p.as_posix())
        files = [f for f in files if f.is_file()]
        if not files:
            raise DataError(f"{origin}: the pattern matches no files")
        fixed = next(i for i, part in enumerate(local.parts) if glob.has_magic(part))
        return _Source(files, _fmt(files, origin), Path(*local.parts[:fixed]), None, origin)
    if params.path.startswith(("/", ".", "~")) or not _HUB_ID.match(params.path):
        raise DataError(f"{origin}: no such file or folder ({local.absolute()}); give a save_to_disk folder, "
                        "parquet/arrow files or a hub dataset id like 'owner/name'")
    snapshot = resolve_hub_dataset(params.path, params.revision)
    return _data_folder(snapshot, params, snapshot.name, f"hub dataset {params.path}@{snapshot.name[:12]}")


# ---- reading the annotation columns -------------------------------------------------------------


def _schema_and_features(path: Path, fmt: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path) if fmt == "parquet" else read_arrow_table(path).schema
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read {path}: {e} (not a {fmt} file, or truncated)") from None
    features = None
    meta = schema.metadata or {}
    if b"huggingface" in meta:
        try:
            features = json.loads(meta[b"huggingface"])["info"]["features"]
        except (ValueError, KeyError, TypeError):
            pass
    return schema, features


def _read_columns(path: Path, fmt: str, columns: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if fmt == "parquet":
            return pq.read_table(path, columns=columns)
        return read_arrow_table(path).select(columns)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read columns {', '.join(columns)} of {path}: {e}") from None


def _need(schema, column: str, role: str, where: str) -> None:
    if column not in schema.names:
        raise DataError(f"{where} has no column '{column}' (the {role}){did_you_mean(column, schema.names) or ';'} "
                        f"columns: {', '.join(schema.names)}")


def _image_mode(path: Path, fmt: str, schema, column: str, where: str) -> str:
    """'bytes' (refs), 'paths' (Path objects), decided from the column type (and, for datasets Image
    structs, whether any row carries bytes: a struct whose bytes are all null stores paths)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = schema.field(column).type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "paths"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "bytes"
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        if t.get_field_index("path") < 0:
            return "bytes"
        if fmt == "parquet":  # the column statistics say it without reading any image
            md = pq.ParquetFile(path).metadata
            groups = [md.row_group(i) for i in range(md.num_row_groups)]
            leaf = [j for j in range(md.num_columns)
                    if groups and groups[0].column(j).path_in_schema == f"{column}.bytes"]
            all_null = bool(groups) and bool(leaf) and all(
                g.column(leaf[0]).statistics is not None and g.column(leaf[0]).statistics.has_null_count
                and g.column(leaf[0]).statistics.null_count == g.num_rows for g in groups)
        else:
            col = read_arrow_table(path).column(column)
            all_null = col.length() > 0 and all(c.field("bytes").null_count == len(c) for c in col.chunks)
        return "paths" if all_null else "bytes"
    raise DataError(f"{where}: column '{column}' holds {t}, not images (expected bytes, a path string, or a "
                    "datasets Image {bytes, path}); set image_column")


def _image_items(path: Path, fmt: str, mode: str, column: str, schema, root: Path, n: int) -> list:
    if mode == "bytes":
        file, base = str(path), str(root)  # one string shared by all rows of the file
        return [TableRow(file, i, column, fmt, base) for i in range(n)]
    nested = pa_is_struct(schema.field(column).type)
    if fmt == "parquet":
        values = _read_columns(path, fmt, [f"{column}.path" if nested else column]).column(0).to_pylist()
    else:
        col = read_arrow_table(path).column(column)
        values = [v["path"] for v in col.to_pylist()] if nested else col.to_pylist()
    return [None if not v else Path(v) if Path(v).is_absolute() else root / v for v in values]


def pa_is_struct(t) -> bool:
    import pyarrow as pa

    return pa.types.is_struct(t)


def _captions(values: list, column: str, where: str) -> list[list[str]]:
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append([])
        elif isinstance(v, str):
            out.append([v.strip()] if v.strip() else [])
        elif isinstance(v, list) and all(isinstance(s, str) or s is None for s in v):
            out.append([s.strip() for s in v if s and s.strip()])
        else:
            raise DataError(f"{where}: caption column '{column}' row {i} holds {type(v).__name__}; expected a "
                            "string or a list of strings")
    return out


def _labels(values: list, column: str, feature: dict | None, params: HFParams, where: str):
    """-> (labels array, class names, multilabel)."""
    names = None
    feature = feature or {}
    inner = feature.get("feature") if feature.get("_type") in ("List", "Sequence", "LargeList") else None
    if feature.get("_type") == "ClassLabel":
        names = list(feature.get("names") or [])
    elif isinstance(inner, dict) and inner.get("_type") == "ClassLabel":
        names = list(inner.get("names") or [])
    names = list(params.class_names) if params.class_names else names
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, str) for v in present):
        names = names or sorted(set(present))
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(present) - set(index))
        if unknown:
            raise DataError(f"{where}: label '{unknown[0]}' is not in class_names ({len(names)} names)")
        values = [index[v] if v is not None else None for v in values]
    multilabel = bool(present) and isinstance(present[0], list)
    if any(isinstance(v, list) != multilabel for v in present):
        raise DataError(f"{where}: label column '{column}' mixes lists and single labels")
    flat = [x for v in values if v is not None for x in (v if isinstance(v, list) else [v])]
    if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in flat):
        raise DataError(f"{where}: label column '{column}' must hold class ids, class-name strings or lists of "
                        "class ids")
    unlabelled = sum(1 for v in values if v is None or (not multilabel and v < 0))
    if unlabelled:
        raise DataError(f"{where}: {unlabelled} of {len(values)} rows have no label in '{column}' (null or -1: an "
                        "unlabelled split?); pick a labelled split or filter them with 'where'")
    top = max(flat, default=-1)
    names = names or [str(i) for i in range(top + 1)]
    if top >= len(names):
        raise DataError(f"{where}: label id {top} but only {len(names)} class names")
    if multilabel:
        labels = np.zeros((len(values), len(names)), dtype=np.uint8)
        for i, v in enumerate(values):
            labels[i, list(v)] = 1
    else:
        labels = np.asarray(values, dtype=np.int64)
    return labels, names, multilabel


def _keep(table, where: dict, schema, origin: str) -> list[bool]:
    keep = [True] * table.num_rows
    for col, wanted in where.items():
        _need(schema, col, "'where' filter", origin)
        allowed = wanted if isinstance(wanted, list) else [wanted]
        keep = [k and (v in allowed) for k, v in zip(keep, table.column(col).to_pylist())]
    return keep


def load_hf(name: str, params: HFParams | None = None, /, **settings: Any
            ) -> SourcedCaptionDataset | SourcedLabelledDataset:
    """Read a `type: hf` dataset: annotations in memory, images as references (see module docstring).

    `params`, or the settings of a config entry (validated by HFParams). Rows keep the files' order
    (files sorted by name); rows failing `where`, and for captions rows without any non-empty caption
    (counted in `skipped_samples`), are dropped with their image, never shifted. With on_bad_image
    'skip' every image is decoded once now and the unreadable ones are dropped with their captions or
    labels (bench.data.base.drop_unreadable).
    """
    params = params if params is not None else HFParams(**settings)
    ds = _load(name, params)
    return drop_unreadable(ds, params.on_bad_image, params.path)


def _load(name: str, params: HFParams) -> SourcedCaptionDataset | SourcedLabelledDataset:
    src = resolve_source(params)
    target = params.caption_column or params.label_column
    role = "caption column" if params.caption_column else "label column"
    root = Path(params.image_root).expanduser().absolute() if params.image_root else None
    limit = params.max_images or float("inf")
    images: list = []
    values: list = []
    features = src.features
    total = skipped = 0
    used: list[Path] = []
    for path in src.files:
        if len(images) >= limit:
            break
        used.append(path)
        schema, file_features = _schema_and_features(path, src.fmt)
        features = features or file_features
        where = f"{src.origin} ({path.name})"
        _need(schema, params.image_column, "image column", where)
        _need(schema, target, role, where)
        cols = [target] + [c for c in (params.where or {}) if c != target]
        table = _read_columns(path, src.fmt, [c for c in cols if c in schema.names])
        keep = _keep(table, params.where or {}, schema, where) if params.where else [True] * table.num_rows
        total += sum(keep)
        column = table.column(target).to_pylist()
        if params.caption_column:
            column = _captions(column, target, where)
            skipped += sum(1 for c, k in zip(column, keep) if k and not c)
            keep = [k and bool(c) for c, k in zip(column, keep)]
        mode = _image_mode(path, src.fmt, schema, params.image_column, where)
        items = _image_items(path, src.fmt, mode, params.image_column, schema, root or path.parent,
                             table.num_rows)
        for i in (i for i, k in enumerate(keep) if k):
            if items[i] is None:
                raise DataError(f"row {i} of {path} has neither image bytes nor a path in column "
                                f"'{params.image_column}'")
            images.append(items[i])
            values.append(column[i])
            if len(images) >= limit:
                break
    notes = [f"dataset '{name}': skipped {skipped} row(s) of {src.origin} without a caption"] * bool(skipped)
    if not images:
        why = ("no row matches where=" + json.dumps(params.where) if params.where and not total
               else f"no row has a non-empty caption in '{target}'" if total else "it has no rows")
        raise DataError(f"{src.origin}: split '{params.split}' is empty: {why}")
    _check_paths([p for p in images if not isinstance(p, ImageRef)], src.origin)
    source = _source_fingerprint(src, used, params)
    if params.caption_column:
        return SourcedCaptionDataset(name=name, image_paths=images, captions=values,
                                     image_ids=[p.name for p in images], source=source,
                                     skipped_samples=skipped, notes=notes)
    feature = features.get(target) if isinstance(features, dict) else None
    labels, names, multilabel = _labels(values, target, feature, params, src.origin)
    return SourcedLabelledDataset(name=name, image_paths=images, labels=labels, class_names=names,
                                  multilabel=multilabel, source=source)


def _check_paths(paths: list[Path], origin: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{origin}: {len(missing)} of {len(paths)} image paths stored in the dataset do not exist; "
                        f"first: {missing[0]} (set 'image_root' to the folder they are relative to)")


def _source_fingerprint(src: _Source, used: list[Path], params: HFParams) -> str:
    def rel(p: Path) -> str:
        try:
            return p.relative_to(src.base).as_posix()
        except ValueError:
            return p.name

    entry: dict[str, Any] = {"revision": src.revision, "format": src.fmt, "image_column": params.image_column,
                             "files": [[rel(f), hash_data_file(f)] for f in used]}
    return json.dumps(entry, sort_keys=True, separators=(",", ":"))
