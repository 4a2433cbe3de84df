"""Phi-3(.5)-vision checkpoints: configs, tensor index, tensor-by-tensor reads of safetensors shards.

Only the shards holding the requested tensors are opened (through `model.safetensors.index.json`'s
`weight_map`, or a single `model.safetensors`), and each tensor is copied out of the memory map on its
own, so loading the ~0.3B-parameter vision part never touches the ~3.8B language-model tensors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from bench.errors import ModelError
from bench.paths import check_relative

VISION_PREFIX = "model.vision_embed_tokens."
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_PICKLE = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_MAX_LISTED = 8
# What safetensors raises for a corrupt, truncated or unreadable file.
_READ_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError, EOFError)
# Buffers some exports saved with the tower; they are recomputed, never loaded.
_IGNORED_SUFFIXES = ("embeddings.position_ids",)


def _listing(items: Iterable[str]) -> str:
    items = list(items)
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(
            f"cannot read {path}: {e} (the file is corrupt; re-download the checkpoint)"
        ) from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


REOPEN_BYTES = 64 << 20


class Phi3VCheckpoint:
    """A Phi-3-vision checkpoint folder (or hub id in the local HF cache): configs + lazy tensor access."""

    def __init__(self, folder_or_hub_id: str | Path, revision: str | None = None) -> None:
        from bench.models.hub import resolve_model_dir

        self.folder = resolve_model_dir(str(folder_or_hub_id), revision, required=("config.json",))
        self.revision = revision
        self.config = _read_json(self.folder / "config.json")
        if self.config.get("model_type") != "phi3_v":
            raise ModelError(
                f"{self.folder / 'config.json'}: model_type is {self.config.get('model_type')!r}; "
                f"a Phi-3-vision checkpoint (model_type 'phi3_v', e.g. "
                f"microsoft/Phi-3.5-vision-instruct) is needed"
            )
        pre = self.folder / "preprocessor_config.json"
        self.preprocessor_config = _read_json(pre) if pre.is_file() else {}
        self._weight_map = self._load_weight_map()
        self._hash: str | None = None

    def _load_weight_map(self) -> dict[str, str]:
        index = self.folder / INDEX
        if index.is_file():
            data = _read_json(index)
            weight_map = data.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ModelError(f"{index} has no weight_map (the index is corrupt; re-download it)")
            # Shard names must stay inside the checkpoint folder (no absolute path, no '..'): checked
            # for every entry now, before any file is opened.
            fix = "the index is corrupt or was tampered with; re-download it"
            return {str(k): check_relative(v, f"{index}: weight_map entry {str(k)!r} -> shard", self.folder,
                                           ModelError, fix)
                    for k, v in weight_map.items()}
        single = self.folder / SINGLE
        if single.is_file():
            from safetensors import safe_open

            try:
                with safe_open(str(single), framework="pt") as f:
                    return dict.fromkeys(f.keys(), SINGLE)
            except _READ_ERRORS as e:
                raise ModelError(
                    f"cannot read {single}: {e} (corrupt or truncated; re-download it)"
                ) from None
        if any((self.folder / name).is_file() for name in _PICKLE):
            from bench.models.hub import pickle_only_error

            raise pickle_only_error(self.folder)
        raise ModelError(
            f"no weights in {self.folder}: expected {INDEX} with its shards, or {SINGLE} "
            f"(an interrupted download?)"
        )

    # ---- inspection --------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._weight_map)

    def shard_of(self, key: str) -> Path:
        if key not in self._weight_map:
            raise ModelError(f"tensor {key} is not in checkpoint {self.folder}")
        return self.folder / self._weight_map[key]

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape from the shard's header (no tensor data read)."""
        return self.shapes([key])[key]

    def shapes(self, keys: Iterable[str]) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for shard, names in self._by_shard(keys).items():
            with self._open(shard) as f:
                for name in names:
                    out[name] = tuple(int(d) for d in f.get_slice(name).get_shape())
        return out

    def hash(self) -> str:
        """Fingerprint of the checkpoint's files (cached)."""
        if self._hash is None:
            from bench.models.hub import hash_model_files

            self._hash = hash_model_files(self.folder)
        return self._hash

    # ---- reading -----------------------------------------------------------------------------
    def _by_shard(self, keys: Iterable[str]) -> dict[str, list[str]]:
        keys = list(keys)
        missing = [k for k in keys if k not in self._weight_map]
        if missing:
            raise ModelError(
                f"checkpoint {self.folder} lacks tensors: {_listing(missing)} (truncated or from "
                f"another model; re-download it)"
            )
        groups: dict[str, list[str]] = {}
        for k in keys:
            groups.setdefault(self._weight_map[k], []).append(k)
        return groups

    def _open(self, shard: str):
        from safetensors import safe_open

        path = self.folder / shard
        if not path.is_file():
            raise ModelError(f"shard {path} named by {INDEX} is missing (an interrupted download?)")
        try:
            return safe_open(str(path), framework="pt")
        except _READ_ERRORS as e:
            raise ModelError(
                f"cannot read shard {path}: {e} (corrupt or truncated; re-download it)"
            ) from None

    def read(self, keys_or_prefix: str | Iterable[str], dtype: Any = None) -> dict[str, Any]:
        """Tensors by name (or every name starting with a prefix), each converted to `dtype` as it is read."""
        if isinstance(keys_or_prefix, str):
            keys = [k for k in self._weight_map if k.startswith(keys_or_prefix)]
            if not keys:
                raise ModelError(f"checkpoint {self.folder} has no tensors named {keys_or_prefix}*")
        else:
            keys = list(keys_or_prefix)
        out: dict[str, Any] = {}
        for shard, names in self._by_shard(keys).items():
            # safetensors maps the shard into memory; the pages read stay in this process's RSS until
            # the file is closed. Reopening every REOPEN_BYTES keeps that overhead bounded, so peak
            # memory is about the tensors kept (in `dtype`), not those plus the mapped shard.
            f, mapped = self._open(shard), 0
            try:
                for name in names:
                    try:
                        tensor = f.get_tensor(name)
                    except _READ_ERRORS as e:
                        raise ModelError(
                            f"cannot read tensor {name} from {self.folder / shard}: {e}"
                        ) from None
                    mapped += tensor.numel() * tensor.element_size()
                    out[name] = tensor.to(dtype) if dtype is not None and tensor.dtype != dtype else tensor
                    del tensor
                    if mapped >= REOPEN_BYTES:
                        f.__exit__(None, None, None)
                        f, mapped = self._open(shard), 0
            finally:
                f.__exit__(None, None, None)
        return {k: out[k] for k in keys}


def load_image_embedding(
    ckpt_or_folder: Phi3VCheckpoint | str | Path, dtype: Any = None, device: str = "cpu"
):
    """Phi3VImageEmbedding with the checkpoint's `model.vision_embed_tokens.*` tensors, strictly checked.

    Built on the meta device and filled with `load_state_dict(assign=True)`: no random init, and peak
    memory is about the vision tensors in `dtype` (default float32).
    """
    import torch

    from bench.models.phi3v.image_embedding import Phi3VImageEmbedding

    ckpt = ckpt_or_folder if isinstance(ckpt_or_folder, Phi3VCheckpoint) else Phi3VCheckpoint(ckpt_or_folder)
    dtype = dtype or torch.float32
    with torch.device("meta"):
        module = Phi3VImageEmbedding.from_config(ckpt.config)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    names = [k for k in ckpt.keys() if k.startswith(VISION_PREFIX) and not k.endswith(_IGNORED_SUFFIXES)]
    found = {k[len(VISION_PREFIX) :]: k for k in names}
    shapes = ckpt.shapes(names)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [
        f"{found[k]} (expected {expected[k]}, found {shapes[found[k]]})"
        for k in sorted(set(expected) & set(found))
        if shapes[found[k]] != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_listing(VISION_PREFIX + k for k in missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_listing(found[k] for k in unexpected)}")
    if mismatched:
        problems.append(f"tensors whose shape does not match config.json: {_listing(mismatched)}")
    if problems:
        raise ModelError(
            f"image embedding of checkpoint {ckpt.folder} does not match its config.json: "
            f"{'; '.join(problems)} (the weights are truncated, corrupt or from another model; "
            f"re-download them)"
        )
    tensors = ckpt.read(names, dtype=dtype)
    state = {k[len(VISION_PREFIX) :]: tensors.pop(k).to(device) for k in names}
    module.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers are not in the checkpoint: recompute them for real.
    emb = module.vision_model.embeddings
    emb.position_ids = torch.arange(emb.num_positions, device=device).expand((1, -1))
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise ModelError(f"internal: tensors left unloaded in the image embedding: {_listing(left)}")
    module.eval()
    module.requires_grad_(False)
    return module
