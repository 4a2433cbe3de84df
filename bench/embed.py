"""`bench embed`: the feature-extraction use of the seed, for any embedder.

Writes one float32 tensor per image, keyed by its path relative to the images folder, and, for
text-capable embedders given --texts, one per text line keyed `text:<line number>` (the texts
themselves are kept in the file's metadata under "texts", as JSON).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from bench.errors import BenchError, CapabilityError, DataError, OutputError
from bench.io import atomic_path
from bench.outputs import check_writable_dir

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"--images: folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"--images: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}")
    return files


def embed_options() -> dict[str, dict[str, Any]]:
    """`bench embed`'s per-type options, read from the registered embedders' parameter models:
    field -> {"types": embedder types that take it, "choices": allowed values (a Literal) or None,
    "type": int or str}."""
    from bench import registry
    from bench.params import typing_args

    out: dict[str, dict[str, Any]] = {}
    for kind in registry.names("embedder"):
        for field, info in registry.params_model("embedder", kind).options().items():
            opt = out.setdefault(field, {"types": [], "choices": None, "type": str})
            opt["types"].append(kind)
            choices = typing_args(info.annotation)
            if choices:
                opt["choices"] = list(dict.fromkeys([*(opt["choices"] or []), *choices]))
            elif "int" in str(info.annotation).lower():
                opt["type"] = int
    return out


def embed_folder(kind: str, *, model: str, images: Path, output: Path, texts: Path | None = None,
                 revision: str | None = None, options: dict[str, Any] | None = None, device: str = "auto",
                 dtype: str = "float32", batch_size: int = 8, num_workers: int = 1) -> Path:
    """Embed every image under `images` (and each line of `texts`) with embedder `kind`; `options` are
    its type-specific settings (e.g. {"num_crops": 4}; None values are left out), validated by its
    parameter model."""
    import torch
    from safetensors.torch import save_file

    from bench import registry
    from bench.embedders.base import RuntimeOptions, check_finite
    from bench.environment import resolve_device
    from bench.loader import DEFAULT_PREFETCH_BYTES, image_batches, start_image_batches
    from bench.threads import ThreadTuner

    if output.suffix != ".safetensors":
        raise BenchError(f"--output must end in .safetensors (got {output})")
    if output.is_dir():
        raise OutputError(f"--output {output} is a folder; name a file in it, e.g. "
                          f"{output / 'embeddings.safetensors'}")
    # Before the model loads: a read-only, full or mistyped folder fails now, not after the embedding.
    check_writable_dir(output.parent, "--output folder", "choose an --output path in a folder you can write to")
    from bench.params import validate_params

    model_cls = registry.params_model("embedder", kind).embed_model()
    given = {k: v for k, v in (options or {}).items() if v is not None}
    for opt in given:
        if opt not in model_cls.model_fields:
            allowed = embed_options().get(opt, {}).get("types", [])
            raise BenchError(f"--{opt.replace('_', '-')} does not apply to '{kind}' "
                             f"(only to {', '.join(sorted(allowed)) or 'no embedder'})")
    params = validate_params(model_cls, {"type": kind, "model": model, "revision": revision, **given}, kind)
    files = list_images(images)
    lines = None
    if texts is not None:
        if not texts.is_file():
            raise DataError(f"--texts: file not found: {texts}")
        lines = read_text_lines(texts)
    dev = resolve_device(device)
    cls = registry.resolve("embedder", kind)
    if lines is not None and "text" not in cls.modalities:
        raise CapabilityError(f"'{kind}' embeds images only: drop --texts or use a text-capable embedder "
                              "(clip, phi3v-lm)")
    runtime = RuntimeOptions(device=dev, dtype=dtype, batch_size=batch_size)
    # The loader's workers start decoding before the model loads (imports and weights take seconds on
    # one core; the decoder has the other), reading ahead up to DEFAULT_PREFETCH_BYTES.
    pipeline = cls.image_pipeline(params, runtime) if num_workers > 0 else None
    batches = None
    if pipeline is not None:
        batches = start_image_batches(*pipeline, files, batch_size, num_workers,
                                      prefetch_bytes=DEFAULT_PREFETCH_BYTES)
    try:
        emb = cls(params, runtime=runtime)
    except BaseException:
        if batches is not None:
            batches.close()  # stops the workers now, not at exit
        raise
    if batches is None:
        batches = image_batches(emb, files, batch_size, num_workers)
    tensors: dict[str, torch.Tensor] = {}
    i = 0
    tuner = ThreadTuner() if dev == "cpu" else None
    batches = iter(batches)
    while True:
        if tuner is not None:
            tuner.before()
        batch = next(batches, None)
        if batch is None:
            break
        out = check_finite(emb.embed_image_batch(batch), kind, lambda j, at=i: f"image {files[at + j]}",
                           f"--images {images}", dtype)
        if tuner is not None:
            tuner.after(len(out))
        for vec in out:
            tensors[files[i].relative_to(images).as_posix()] = vec.detach().float().contiguous().clone()
            i += 1
    if tuner is not None:
        log.debug("torch threads per batch: %s", tuner.history)
        tuner.restore()
    if lines is not None:
        vecs = emb.embed_texts(lines) if lines else torch.empty(0)
        check_finite(vecs, kind, lambda j: f"line {j + 1}", f"--texts {texts}", dtype)
        for n, vec in enumerate(vecs):
            tensors[f"text:{n}"] = vec.float().contiguous().clone()
    meta = {"embedder": kind, "model": str(model), "fingerprint": json.dumps(emb.fingerprint(), default=str),
            "num_images": str(len(files))}
    if lines is not None:
        meta["texts"] = json.dumps(lines)
    with atomic_path(output) as tmp:  # a full disk: one line naming --output, no half file
        save_file(tensors, tmp, metadata=meta)
    return output


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (a leading BOM dropped); DataError naming the first bad byte."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"--texts: cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"--texts {path} is not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} "
                        f"(line {line}) is not valid UTF-8; save the file as UTF-8 (e.g. `iconv -f latin1 "
                        f"-t utf-8`)") from None
    return text.removeprefix("\ufeff").splitlines()
