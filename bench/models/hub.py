"""Find a checkpoint folder offline (local path or hub id in the HF cache) and fingerprint its files.

No network, ever: a hub id is looked up only in the local Hugging Face cache, through
`huggingface_hub.snapshot_download(..., local_files_only=True)` (which reads `refs/<branch>` and
returns `models--org--name/snapshots/<sha>/`). Only what the hub library does not do is written
here: abbreviated commit shas, a hand-copied cache without refs, and errors that list what is cached.
Shared by every embedder (CLIP, Phi-3-vision).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from bench.errors import ModelError

# "name" or "org/name" with the characters the hub allows; anything else can only be a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_SHA = re.compile(r"^[0-9a-f]{40}$")

# Small text files that define the model: hashed whole.
_TEXT_SUFFIXES = {".json", ".txt", ".model", ".tiktoken", ".vocab", ".yaml", ".yml"}
# Files that never change the vectors.
_SKIP_SUFFIXES = {".md", ".py", ".png", ".jpg", ".jpeg", ".gif", ".lock", ".incomplete"}
_CHUNK = 1 << 20  # head/tail hashed for big files


def hf_cache_dir() -> Path:
    """The hub cache folder, read from the environment at call time (HF_HUB_CACHE > HF_HOME > default)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith(("/", "./", "../", "~", "."))
        or "\\" in model
        or model.count("/") > 1
        or not _HUB_ID.match(model)
    )


def _missing(folder: Path, required: Iterable[str]) -> list[str]:
    # Path.is_file follows symlinks, so a dangling blob link (interrupted download) counts as missing.
    return [name for name in required if not (folder / name).is_file()]


def _fix_hint(model: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (f"download it on a machine with internet with `huggingface-cli download {model}{rev}` "
            f"(or `hf download {model}{rev}`) and copy the cache folder here, set HF_HUB_CACHE/HF_HOME "
            f"to that cache, or pass a local folder")


def resolve_model_dir(model: str, revision: str | None = None,
                      required: Iterable[str] = ("config.json",)) -> Path:
    """Return the folder holding `model`: an existing local folder, else the hub id's cached snapshot.

    `revision` (branch, tag or commit sha) applies to hub ids only. Raises ModelError naming
    every place looked at and how to fix it when the folder or a `required` file is missing.
    """
    required = tuple(required)
    if not isinstance(model, str) or not model.strip():
        raise ModelError(f"model must be a local folder or a hub id like 'openai/clip-vit-base-patch32', "
                         f"got {model!r}")
    model = model.strip()
    local = Path(model).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"model path {local.resolve()} is a file; pass the checkpoint folder that holds "
                             f"{', '.join(required) or 'config.json'}")
        missing = _missing(local, required)
        if missing:
            raise ModelError(f"model folder {local.resolve()} is incomplete: missing {', '.join(missing)} "
                             f"(re-download or re-export the checkpoint into that folder)")
        return local.resolve()

    cache = hf_cache_dir()
    if _looks_like_path(model):
        raise ModelError(f"model folder not found: {local.absolute()} (the path does not exist; "
                         f"fix the path, "
                         f"or name a hub id like 'openai/clip-vit-base-patch32' cached under {cache})")

    repo = cache / ("models--" + model.replace("/", "--"))
    looked = f"looked for the local folder {local.absolute()} and in the Hugging Face cache {repo}"
    if not (repo / "snapshots").is_dir():
        raise ModelError(f"model '{model}' not found offline: {looked}; {_fix_hint(model, revision)}")

    snapshot = _cached_snapshot(model, revision, cache) or _pick_snapshot(repo, model, revision, looked)
    missing = _missing(snapshot, required)
    if missing:
        raise ModelError(f"cached snapshot {snapshot} of '{model}' is incomplete: "
                         f"missing {', '.join(missing)} "
                         f"(an interrupted download?); {_fix_hint(model, revision)}")
    return snapshot


def _cached_snapshot(model: str, revision: str | None, cache: Path) -> Path | None:
    """The snapshot huggingface_hub finds offline for a branch, tag or full commit sha; None when it finds
    none (the caller then looks further and explains). local_files_only: the hub is never contacted."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, revision=revision, cache_dir=cache, local_files_only=True))
    except IncompleteSnapshotError as e:
        raise ModelError(f"cached snapshot of '{model}' is incomplete ({e}); "
                         f"{_fix_hint(model, revision)}") from None
    except (LocalEntryNotFoundError, ValueError):  # ValueError: an id or revision the hub library refuses
        return None


def _pick_snapshot(repo: Path, model: str, revision: str | None, looked: str) -> Path:
    """What huggingface_hub does not resolve: an abbreviated commit sha, or a cache without refs/main holding
    exactly one snapshot; otherwise a ModelError listing the cached refs and snapshots."""
    snapshots = repo / "snapshots"
    available = sorted(p.name for p in snapshots.iterdir() if p.is_dir())
    refs = repo / "refs"
    ref_names = (sorted(str(p.relative_to(refs)) for p in refs.rglob("*") if p.is_file())
                 if refs.is_dir() else [])
    wanted = revision or "main"

    ref_file = refs / wanted
    if ref_file.is_file():
        sha = ref_file.read_text().strip()
        if (snapshots / sha).is_dir():  # huggingface_hub missed it: a hand-written ref ending in a newline
            return snapshots / sha
        raise ModelError(f"'{model}' revision '{wanted}' points at snapshot {sha}, "
                         f"which is not in {snapshots}; "
                         f"{_fix_hint(model, revision)}")
    if revision:
        # A commit sha, abbreviated (as shown on the hub).
        matches = [s for s in available if s.startswith(revision.lower())] if len(revision) >= 7 else []
        if len(matches) == 1:
            return snapshots / matches[0]
        raise ModelError(f"revision '{revision}' of '{model}' is not cached: {looked}; cached refs: "
                         f"{', '.join(ref_names) or 'none'}, snapshots: {', '.join(available) or 'none'}; "
                         f"{_fix_hint(model, revision)}")
    # No refs/main (e.g. a cache copied by hand): accept a single snapshot, refuse to guess between several.
    if len(available) == 1:
        return snapshots / available[0]
    if not available:
        raise ModelError(f"model '{model}' not found offline: {looked} (no snapshots); "
                         f"{_fix_hint(model, None)}")
    raise ModelError(f"'{model}' has several cached snapshots ({', '.join(available)}) and no refs/main; "
                     f"pin one with `revision:` in the config")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_head_tail(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_CHUNK))
        f.seek(max(size - _CHUNK, 0))
        h.update(f.read(_CHUNK))
    return h.hexdigest()


def hash_model_files(folder: str | Path) -> str:
    """Fingerprint (sha256 hex) of the files that define a checkpoint.

    Config/tokenizer/preprocessor text files are hashed whole; weights by size plus the hash of
    their first and last MiB, so multi-GB checkpoints fingerprint in milliseconds. (A change
    confined to the middle of a weight file with the same size goes unnoticed: acceptable for
    a cache key, since real re-exports change the safetensors header at least.)
    Hidden files/folders (stamps, `.cache/` of `--local-dir` downloads), docs and code are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"cannot fingerprint model folder {folder}: not a folder")
    entries = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if not path.is_file() or path.suffix.lower() in _SKIP_SUFFIXES:
            continue
        size = path.stat().st_size
        if path.suffix.lower() in _TEXT_SUFFIXES or size <= 2 * _CHUNK:
            digest = _sha256_file(path)
        else:
            digest = "ht:" + _sha256_head_tail(path, size)
        entries.append([rel.as_posix(), size, digest])
    if not entries:
        raise ModelError(f"model folder {folder} holds no model files")
    return hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' info/warning chatter and its weight-loading progress bar for one call.

    Loading a phi3_v folder through AutoTokenizer makes transformers parse a config type it does not
    know and warn about it; those warnings are about transformers' own classes, not the user's files.
    Real problems still surface as exceptions (turned into ModelError by the callers).
    """
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def pickle_only_error(folder: Path) -> ModelError:
    """The error for a checkpoint folder whose weights are only pickles (pytorch_model.bin)."""
    src, dst = str(folder / "pytorch_model.bin"), str(folder / "model.safetensors")
    return ModelError(
        f"{folder} holds only pickle weights (pytorch_model.bin): bench loads safetensors only and never "
        f"unpickles a checkpoint (a pickle can run code); convert them to safetensors once, where you trust the "
        f"file: python -c \"import torch; from safetensors.torch import save_file; "
        f"sd = torch.load({src!r}, weights_only=True); "
        f"save_file({{k: v.contiguous().clone() for k, v in sd.items()}}, {dst!r}, metadata={{'format': 'pt'}})\" "
        f"(sharded .bin files: load the model with transformers and save_pretrained(folder, "
        f"safe_serialization=True)), or download the checkpoint's .safetensors files")


def check_safetensors_files(folder: Path) -> list[Path]:
    """Open the header of every weight file of a checkpoint (`model.safetensors`, or each shard named by
    `model.safetensors.index.json`); a ModelError names the first truncated, corrupt or missing one.

    safetensors checks that the header's offsets cover the file exactly, so a cut download fails here in
    milliseconds, with the file's name, instead of deep inside a model loader.
    """
    from safetensors import SafetensorError, safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map")
            names = sorted({str(v) for v in weight_map.values()})
        except (OSError, ValueError, AttributeError) as e:
            raise ModelError(f"{index} is incomplete or corrupt ({e}); re-download it") from None
        # Names only, not resolved: a hub cache's snapshot files are symlinks into its blobs/ folder.
        escaping = [n for n in names if Path(n).is_absolute() or ".." in Path(n).parts]
        if escaping:
            raise ModelError(f"{index} names a weight file outside the checkpoint folder: {escaping[0]!r} "
                             f"(refused; the index is corrupt or crafted)")
        files = [folder / n for n in names]
    else:
        files = [folder / "model.safetensors"]
    for f in files:
        if not f.is_file():
            raise ModelError(f"weight file {f} is missing (an interrupted download?); re-download it")
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelError(f"weight file {f} is incomplete or corrupt ({e}); re-download it") from None
    return files


# safetensors' dtype names of the dtypes bench runs in.
_ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


@contextlib.contextmanager
def lazy_state_dict(files: Iterable[Path], dtype):
    """Every tensor of `files` as an unread safetensors slice, for `from_pretrained(None, state_dict=...)`,
    which reads and converts them one by one; the files stay open for the block.

    A file stored in `dtype` is memory-mapped (its tensors share the page cache, as from_pretrained does
    by itself). A file that must be converted is read with pread instead: from_pretrained keeps its maps
    open until the whole model is loaded, and every mapped page read stays in this process's RSS, so a
    float32 checkpoint loaded in bfloat16 peaked at its float32 bytes plus the bfloat16 copy (1.5x the
    float32 load); read with pread, only one float32 tensor lives at a time.
    """
    from safetensors import safe_open

    want = _ST_DTYPES.get(str(dtype).removeprefix("torch."))
    handles, state = [], {}
    try:
        for f in files:
            h = safe_open(str(f), framework="pt", device="cpu")
            handles.append(h)
            floats = {h.get_slice(k).get_dtype() for k in h.keys()} & {"F64", "F32", "BF16", "F16"}
            if want is not None and floats - {want}:
                h = safe_open(str(f), framework="pt", device="cpu", backend="pread")
                handles.append(h)
            state.update({k: h.get_slice(k) for k in h.keys()})
        yield state
    finally:
        state.clear()
        for h in handles:
            h.__exit__(None, None, None)
