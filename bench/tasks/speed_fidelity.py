"""The price of a fast mode, recorded by the speed task: fidelity of its vectors to float32's.

When the embedder runs in a fast mode (runtime.dtype bfloat16 / float16, or runtime.compile), the
speed task, after its timed loops, embeds a fixed sample of its dataset's images (seeded by
runtime.seed; up to `fidelity_images`, with each image's first caption when the dataset has captions
and the embedder embeds text) twice: with the run's embedder, and with the same checkpoint loaded once
more in float32, eager (then freed). bench.metrics.fidelity turns the two sets into the figures: cosine
per item (min, mean) and rank agreement per direction (top-1 agreement, top-k overlap, Spearman).

A float32 eager run records nothing (it IS the reference). The records are of kind "fidelity": shown
in the speed section of the report, and `bench compare` lists their verdicts but fails on them only
with `--fail-on fidelity` (they measure a trade-off the config chose, not the model's quality).
"""

from __future__ import annotations

from typing import Any

from bench.errors import ModelError
from bench.results import Metric
from bench.tasks.base import MetricSpec, TaskInputs

_PROTOCOL = ("{mode} vs the same checkpoint in float32, eager, on {n} seeded sample images{texts} of the "
             "dataset")
COSINE = MetricSpec("fidelity/{what}_cosine_{stat}", "cos", True, "fidelity",
                    "per-{what} cosine of the vectors, {stat}; " + _PROTOCOL)
TOP1 = MetricSpec("fidelity/{direction}_top1_agreement", "%", True, "fidelity",
                  "queries whose top-1 is the same; " + _PROTOCOL)
OVERLAP = MetricSpec("fidelity/{direction}_top{k}_overlap", "%", True, "fidelity",
                     "mean shared share of the top-{k}; " + _PROTOCOL)
SPEARMAN = MetricSpec("fidelity/{direction}_spearman", "ρ", True, "fidelity",
                      "mean Spearman correlation of each query's ranking; " + _PROTOCOL)
METRICS = (COSINE, TOP1, OVERLAP, SPEARMAN)
TOP_K = 5


def fast_mode(runtime: Any) -> str:
    """'' for float32 eager (the reference itself), else the mode's name, e.g. 'bfloat16 + compile'."""
    parts = [runtime.dtype] if runtime.dtype != "float32" else []
    if getattr(runtime, "compile", False):
        parts.append("torch.compile")
    return " + ".join(parts)


def sample(ds: Any, n: int, seed: int, with_text: bool) -> tuple[list, list[str] | None]:
    """Up to n image paths of `ds` chosen by `seed` (in dataset order), and their first captions."""
    import numpy as np

    rng = np.random.default_rng(seed)
    idx = sorted(rng.choice(len(ds), size=min(n, len(ds)), replace=False).tolist())
    texts = None
    if with_text and hasattr(ds, "captions"):
        texts = [ds.captions[i][0] for i in idx if ds.captions[i]]
        if len(texts) != len(idx):  # an image without a caption: no pairing, images only
            texts = None
    return [ds.image_paths[i] for i in idx], texts


def _vectors(emb: Any, paths: list, texts: list[str] | None, batch_size: int) -> tuple[Any, Any]:
    import torch

    from bench import loader

    images = torch.cat([emb.embed_image_batch(b) for b in loader.image_batches(emb, paths, batch_size, 0)])
    return images.reshape(len(images), -1).numpy(), (emb.embed_texts(texts).numpy() if texts else None)


def measure(inputs: TaskInputs, ds: Any, n_images: int, batch_size: int, rec: dict) -> list[Metric]:
    """The fidelity records of the run's embedder on `ds` ([] in float32 eager or with n_images 0)."""
    import dataclasses
    import gc

    from bench.metrics.fidelity import fidelity

    emb = inputs.embedder
    runtime = getattr(emb, "runtime", None)
    mode = fast_mode(runtime) if runtime is not None else ""
    if not mode or n_images <= 0:
        return []
    paths, texts = sample(ds, n_images, int(getattr(inputs.runtime, "seed", 0) or 0), emb.supports_text)
    fast = _vectors(emb, paths, texts, batch_size)
    facts = dict(mode=mode, n=len(paths), texts=f" and their first captions ({len(texts)})" if texts else "")
    ref = None
    try:
        ref = type(emb)(emb.params, runtime=dataclasses.replace(runtime, dtype="float32", compile=False))
        slow = _vectors(ref, paths, texts, batch_size)
    except (ModelError, RuntimeError) as e:  # e.g. no room for a float32 copy beside the run's model
        reason = f"the float32 reference could not be loaded or run beside the {mode} model: {e}"[:300]
        return [COSINE.na(**rec, reason=reason, what="image", stat="min")]
    finally:
        del ref
        gc.collect()
        if str(inputs.device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
    figures = fidelity(fast[0], slow[0], fast[1], slow[1], k=TOP_K)
    out = []
    for key, value in figures.items():
        head, _, name = key.partition("_")
        if name.startswith("cosine_"):
            spec, fields = COSINE, {"what": head, "stat": name.removeprefix("cosine_")}
        elif name == "top1_agreement":
            spec, fields = TOP1, {"direction": head}
        elif name == "spearman":
            spec, fields = SPEARMAN, {"direction": head}
        else:
            spec, fields = OVERLAP, {"direction": head, "k": name.removeprefix("top").split("_")[0]}
        # Item resolution (compare's tolerance floor) for the % figures only: one query is 100/n points.
        items = None
        if spec in (TOP1, OVERLAP):
            items = len(texts) if head == "t2i" else len(paths) - (head == "i2i")
        out.append(spec.record(**rec, value=value, num_items=items, **fields, **facts))
    inputs.detail(f"speed/{rec['dataset']}/fidelity", {"mode": mode, "images": [str(p) for p in paths],
                                                       "figures": figures})
    return out
