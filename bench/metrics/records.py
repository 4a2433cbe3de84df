"""Per-query records: the compact outcome of every quality task, saved beside results.json.

One `.npz` (numpy.savez_compressed, read back with allow_pickle=False: no code runs on load) holds
any number of named records (e.g. "retrieval/caps", "zeroshot/cifar"). Array keys are
"<record>/<array>"; "<record>/__meta__" is the record's JSON metadata; "__schema__" the format
name and version, "__meta__" the file's JSON metadata (fingerprints, seed, ...).

Kinds and their arrays (validated on load: present, dtype, shape, consistent, in range):
- "retrieval" (from `retrieval.retrieval_ranks`): text_to_image, i2t_first, i2t_caption, t2i (int32).
- "classification" (probe / zero-shot single-label): labels, true_rank, predicted (int16, or int32
  for more than 32,767 classes); meta["num_classes"]. Correct at k <=> true_rank < k, so top-1
  flags are true_rank == 0 (pessimistic on ties; `predicted` is argmax, first on ties).
- "multilabel" (mAP): labels uint8 [n, C], scores float32/float64 [n, C] (kept in the dtype they
  were scored in, so recomputed APs see the same ties).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.errors import DataError

SCHEMA = "bench.per_query"
VERSION = 1
_SEP = "/"


@dataclass
class PerQuery:
    kind: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


def retrieval_record(ranks: Any, **meta: Any) -> PerQuery:
    arrays = {k: np.asarray(getattr(ranks, k), dtype=np.int32)
              for k in ("text_to_image", "i2t_first", "i2t_caption", "t2i")}
    return PerQuery("retrieval", arrays, dict(meta))


def ranks_from_record(rec: PerQuery):
    from bench.metrics.ranking import RetrievalRanks

    if rec.kind != "retrieval":
        raise ValueError(f"not a retrieval record: kind {rec.kind!r}")
    a = rec.arrays
    return RetrievalRanks(a["text_to_image"], a["i2t_first"], a["i2t_caption"], a["t2i"])


def _class_dtype(num_classes: int):
    return np.int16 if num_classes < np.iinfo(np.int16).max else np.int32


def classification_record(true_rank: Any, predicted: Any, labels: Any, num_classes: int,
                          **meta: Any) -> PerQuery:
    dt = _class_dtype(int(num_classes))
    arrays = {"labels": np.asarray(labels).astype(dt), "true_rank": np.asarray(true_rank).astype(dt),
              "predicted": np.asarray(predicted).astype(dt)}
    return PerQuery("classification", arrays, {"num_classes": int(num_classes), **meta})


def multilabel_record(labels: Any, scores: Any, **meta: Any) -> PerQuery:
    s = np.asarray(scores)
    s = s if s.dtype in (np.float32, np.float64) else s.astype(np.float64)
    return PerQuery("multilabel", {"labels": np.asarray(labels).astype(np.uint8), "scores": s}, dict(meta))


def save_per_query(path: str | os.PathLike, records: dict[str, PerQuery],
                   meta: dict[str, Any] | None = None) -> int:
    """Write the records to `path` (.npz, compressed); returns the file size in bytes. Each record is
    validated first, so an invalid one fails here rather than at the next compare."""
    out: dict[str, np.ndarray] = {"__schema__": np.array(f"{SCHEMA}/{VERSION}"),
                                  "__meta__": np.array(json.dumps(meta or {}, sort_keys=True))}
    for name, rec in records.items():
        if not name or name.startswith("__") or name.endswith(_SEP):
            raise ValueError(f"invalid record name {name!r}")
        _validate(name, rec)
        out[f"{name}{_SEP}__meta__"] = np.array(json.dumps({"kind": rec.kind, **rec.meta}, sort_keys=True))
        for key, arr in rec.arrays.items():
            out[f"{name}{_SEP}{key}"] = np.ascontiguousarray(arr)
    path = os.fspath(path)
    # Through a file object: numpy would append ".npz" to a name without it (e.g. the temporary
    # name of bench.io.atomic_path); the file is written exactly at `path`.
    with open(path, "wb") as f:
        np.savez_compressed(f, **out)
    return os.path.getsize(path)


def load_per_query(path: str | os.PathLike) -> tuple[dict[str, PerQuery], dict[str, Any]]:
    """(records by name, file metadata) from `save_per_query`'s file; DataError (one line, saying
    what to do) when it is missing, unreadable, of another schema version, or inconsistent."""
    path = os.fspath(path)
    redo = "re-run the benchmark to rewrite it"
    if not os.path.isfile(path):
        raise DataError(f"per-query file {path} not found; {redo}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"per-query file {path} is unreadable ({type(e).__name__}: {e}); {redo}") from None
    schema = str(data.pop("__schema__", ""))
    if schema != f"{SCHEMA}/{VERSION}":
        raise DataError(f"per-query file {path} has schema {schema or 'none'!r}, this bench reads "
                        f"'{SCHEMA}/{VERSION}'; {redo}")
    try:
        file_meta = json.loads(str(data.pop("__meta__")))
        groups: dict[str, dict[str, np.ndarray]] = {}
        for key, arr in data.items():
            name, _, arr_name = key.rpartition(_SEP)
            groups.setdefault(name, {})[arr_name] = arr
        records = {}
        for name, arrays in groups.items():
            meta = json.loads(str(arrays.pop("__meta__")))
            records[name] = PerQuery(meta.pop("kind"), arrays, meta)
            _validate(name, records[name])
    except (KeyError, json.JSONDecodeError, ValueError) as e:
        raise DataError(f"per-query file {path} is invalid: {e}; {redo}") from None
    return records, file_meta


_KINDS = {
    "retrieval": {"text_to_image": 1, "i2t_first": 1, "i2t_caption": 1, "t2i": 1},
    "classification": {"labels": 1, "true_rank": 1, "predicted": 1},
    "multilabel": {"labels": 2, "scores": 2},
}


def _validate(name: str, rec: PerQuery) -> None:
    """ValueError naming the record and array when a record is not self-consistent."""
    if rec.kind not in _KINDS:
        raise ValueError(f"record {name!r}: unknown kind {rec.kind!r}")
    a = rec.arrays
    for key, ndim in _KINDS[rec.kind].items():
        if key not in a:
            raise ValueError(f"record {name!r}: array {key!r} missing")
        if a[key].ndim != ndim:
            raise ValueError(f"record {name!r}: {key} must be {ndim}-D, got shape {a[key].shape}")
        want = "f" if key == "scores" else "iu"
        if a[key].dtype.kind not in want:
            raise ValueError(f"record {name!r}: {key} has dtype {a[key].dtype}")

    def in_range(key: str, lo: int, hi: int) -> None:
        v = a[key]
        if v.size and (int(v.min()) < lo or int(v.max()) >= hi):
            raise ValueError(f"record {name!r}: {key} values must be in [{lo}, {hi}), "
                             f"got [{int(v.min())}, {int(v.max())}]")

    if rec.kind == "retrieval":
        n, m = len(a["i2t_first"]), len(a["text_to_image"])
        for key in ("i2t_caption", "t2i"):
            if len(a[key]) != m:
                raise ValueError(f"record {name!r}: {key} has {len(a[key])} entries for {m} captions")
        if n == 0 or m == 0:
            raise ValueError(f"record {name!r}: needs images and captions")
        in_range("text_to_image", 0, n)
        in_range("i2t_caption", 0, m)
        in_range("t2i", 0, n)
        owner = a["text_to_image"].astype(np.int64)
        best = np.full(n, m, dtype=np.int64)
        np.minimum.at(best, owner, a["i2t_caption"].astype(np.int64))
        best[np.bincount(owner, minlength=n) == 0] = -1
        if not np.array_equal(best, a["i2t_first"]):
            raise ValueError(f"record {name!r}: i2t_first is not the best caption rank of each image")
    elif rec.kind == "classification":
        c = rec.meta.get("num_classes")
        if not isinstance(c, int) or c < 1:
            raise ValueError(f"record {name!r}: meta num_classes must be a positive int, got {c!r}")
        n = len(a["labels"])
        for key in ("true_rank", "predicted"):
            if len(a[key]) != n:
                raise ValueError(f"record {name!r}: {key} has {len(a[key])} entries for {n} samples")
        in_range("labels", 0, c)
        in_range("predicted", 0, c)
        in_range("true_rank", 0, c + 1)  # C: a NaN score for the true class
    else:
        if a["labels"].shape != a["scores"].shape:
            raise ValueError(f"record {name!r}: labels {a['labels'].shape} and scores "
                             f"{a['scores'].shape} differ")
        in_range("labels", 0, 2)
