"""References to images that are not files of their own: a member of a tar shard, a row of a
parquet or Arrow table. Used as elements of `image_paths` by the `hf` and `webdataset` loaders.

A reference is small, frozen (hashable), picklable, and knows how to fetch its bytes on its own,
so DataLoader workers decode it exactly like a file path (`bench.data.images.load_image`
dispatches on `ImageRef`). Nothing is parsed in the workers that the main process could do once:
a tar member is located by its byte offset and size (one seek + read, no tar parsing), a table row
by (file, row index) with the file opened once per worker process.

Protocol (what callers may use):
  ref.read_bytes() -> bytes   the encoded image (raises DataError when unreadable)
  ref.decode()     -> PIL RGB the decoded image (DataError naming the shard/file and member/row)
  ref.name         -> str     location-independent name (like Path.name), used in fingerprints
  ref.size_hint    -> int|None encoded size in bytes when known without reading
  str(ref)                    full, stable location, used in messages

Also here: the dataset records the two loaders return (subclasses of the records of
bench/data/base.py that add the source's content fingerprint and zero-shot templates), and
`hash_data_file`, the content hash of a data file used by those fingerprints.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data.base import CaptionDataset, LabelledDataset, fingerprint_records
from bench.errors import DataError


class ImageRef:
    """Base class of image references (see the module docstring for the protocol)."""

    __slots__ = ()

    def read_bytes(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def name(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def size_hint(self) -> int | None:
        return None

    def describe(self) -> str:
        """Human wording of the location, for error messages."""
        return str(self)

    def decode(self):
        """PIL RGB image, with one DataError naming the container and member for corrupt data, and the
        decompression-bomb rule of image files (bench.data.images.decode_image)."""
        from bench.data.images import decode_image

        return decode_image(io.BytesIO(self.read_bytes()), self.describe(),
                            "the stored image is corrupt or not an image; re-create or re-download that file")


@dataclass(frozen=True)
class TarMember(ImageRef):
    """One member of an uncompressed tar shard, located by the byte offset of its data."""

    shard: str
    member: str
    offset: int
    size: int

    def read_bytes(self) -> bytes:
        # A fresh open per read: no file offset shared between forked workers; cheap next to decoding.
        try:
            with open(self.shard, "rb") as f:
                f.seek(self.offset)
                data = f.read(self.size)
        except OSError as e:
            raise DataError(f"cannot read {self.describe()}: {e.strerror or e} (was the shard moved or "
                            "deleted after loading?)") from None
        if len(data) != self.size:
            raise DataError(f"cannot read {self.describe()}: the shard is shorter than its index says "
                            "(truncated or replaced after loading)")
        return data

    @property
    def name(self) -> str:
        return f"{Path(self.shard).name}/{self.member}"

    @property
    def size_hint(self) -> int:
        return self.size

    def describe(self) -> str:
        return f"member '{self.member}' of shard {self.shard}"

    def __str__(self) -> str:
        return f"{self.shard}::{self.member}"


@dataclass(frozen=True)
class TableRow(ImageRef):
    """The image of one row of a parquet or Arrow (datasets `save_to_disk`) file.

    `column` holds either raw bytes (binary) or a datasets Image struct {bytes, path}; a row whose
    bytes are null falls back to its path (relative paths resolve against `root`).
    """

    file: str
    row: int
    column: str
    fmt: str  # "parquet" | "arrow"
    root: str = ""

    def read_bytes(self) -> bytes:
        value = _table_value(self)
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and path:
                p = Path(path)
                p = p if p.is_absolute() else Path(self.root or Path(self.file).parent) / p
                try:
                    return p.read_bytes()
                except OSError as e:
                    raise DataError(f"{self.describe()} has no image bytes and its path {p} cannot be read: "
                                    f"{e.strerror or e} (set the dataset's 'image_root' to the folder the "
                                    "paths are relative to)") from None
            value = data
        if value is None:
            raise DataError(f"{self.describe()} has no image (null in column '{self.column}')")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise DataError(f"{self.describe()}: column '{self.column}' holds {type(value).__name__}, "
                            "not image bytes")
        return bytes(value)

    @property
    def name(self) -> str:
        return f"{Path(self.file).name}#{self.row}"

    def describe(self) -> str:
        return f"row {self.row} of {self.file}"

    def __str__(self) -> str:
        return f"{self.file}#{self.row}"


# ---- per-process readers for TableRow ----------------------------------------------------------
# Keyed by pid: a reader inherited through fork is never shared with the parent.
_READERS: OrderedDict[tuple, Any] = OrderedDict()
_MAX_READERS = 8
_GROUPS: OrderedDict[tuple, Any] = OrderedDict()
_MAX_GROUPS = 2  # rows arrive in order within a batch: the current and the next row group


def _lru_get(cache: OrderedDict, key: tuple, make, limit: int):
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = make()
    cache[key] = value
    while len(cache) > limit:
        cache.popitem(last=False)
    return value


def _open_reader(ref: TableRow):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if ref.fmt == "parquet":
            pf = pq.ParquetFile(ref.file, memory_map=True)
            md = pf.metadata
            starts = [0]
            for i in range(md.num_row_groups):
                starts.append(starts[-1] + md.row_group(i).num_rows)
            return pf, starts
        return read_arrow_table(ref.file), None
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot open {ref.file}: {e} (was it moved, truncated or replaced after loading?)") \
            from None


def read_arrow_table(path: str | Path):
    """A memory-mapped Arrow table from an IPC stream (datasets' .arrow files) or IPC file."""
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source = pa.memory_map(str(path))
        return pa.ipc.open_file(source).read_all()


def _table_value(ref: TableRow):
    import bisect

    import pyarrow as pa

    pid = os.getpid()
    reader, starts = _lru_get(_READERS, (pid, ref.file, ref.fmt), lambda: _open_reader(ref), _MAX_READERS)
    try:
        if starts is None:  # arrow: the memory-mapped table itself
            if ref.row >= reader.num_rows:
                raise DataError(f"{ref.describe()}: the file has only {reader.num_rows} rows "
                                "(replaced after loading?)")
            return reader.column(ref.column)[ref.row].as_py()
        group = bisect.bisect_right(starts, ref.row) - 1
        if group >= len(starts) - 1:
            raise DataError(f"{ref.describe()}: the file has only {starts[-1]} rows (replaced after loading?)")
        column = _lru_get(_GROUPS, (pid, ref.file, group, ref.column),
                          lambda: reader.read_row_group(group, columns=[ref.column]).column(0), _MAX_GROUPS)
        return column[ref.row - starts[group]].as_py()
    except (KeyError, pa.ArrowException) as e:
        raise DataError(f"cannot read {ref.describe()}: {e} (was the file replaced after loading?)") from None


# ---- content fingerprints ----------------------------------------------------------------------
_BLOB = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_HASHED: dict[tuple, str] = {}



def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (OSError to the caller)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

def hash_data_file(path: str | Path) -> str:
    """Content hash of a data file (parquet, arrow, tar shard): sha256 of all its bytes.

    Embedding reads every image anyway, so one more sequential read of the same bytes is small next
    to decoding (hundreds of MB/s). Two shortcuts: a file in the Hugging Face cache is a link to a
    blob named by its content hash (sha256 for LFS files, git sha1 otherwise), so that name is used
    without reading; and hashes are remembered per process by (path, size, mtime, inode).
    """
    path = Path(path)
    try:
        if path.is_symlink():
            target = Path(os.path.realpath(path))
            if target.parent.name == "blobs" and _BLOB.match(target.name):
                return "blob:" + target.name
        st = path.stat()
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHED:
        try:
            _HASHED[key] = sha256_file(path)
        except OSError as e:
            raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None
    return _HASHED[key]


def _fingerprint(image_paths: list, source: str, extra: list[str]) -> str:
    """Files are hashed as base.fingerprint_records does; references contribute their names (their
    bytes are covered by `source`, the content hash of the files that hold them)."""
    files = [p for p in image_paths if not isinstance(p, ImageRef)]
    names = ["ref:" + p.name for p in image_paths if isinstance(p, ImageRef)]
    return fingerprint_records(files, ["source:" + source] + names + extra)


@dataclass
class SourcedCaptionDataset(CaptionDataset):
    """CaptionDataset whose images may be ImageRefs; `source` fingerprints the files that hold them
    (content hashes and revision)."""

    source: str = ""
    # samples the loader dropped (counted, said in `notes`): a shard sample without caption, a row
    # without any caption; `skipped` (base class) lists the unreadable images of on_bad_image: skip.
    skipped_samples: int = 0

    def fingerprint(self) -> str:
        return _fingerprint(self.image_paths, self.source, [" | ".join(c) for c in self.captions])


@dataclass
class SourcedLabelledDataset(LabelledDataset):
    """LabelledDataset whose images may be ImageRefs; carries the dataset's own zero-shot templates
    (`{c}` = class name) when it ships them."""

    source: str = ""
    templates: list[str] | None = None
    skipped_samples: int = 0

    def fingerprint(self) -> str:
        labels = [str(row.tolist()) if self.multilabel else str(int(row)) for row in self.labels]
        return _fingerprint(self.image_paths, self.source,
                            labels + ["classes:" + ",".join(self.class_names),
                                      "templates:" + "\n".join(self.templates or [])])
