"""The one small interface every embedder implements.

Data flow for images (the runner drives it; embedders never read files themselves):
    PIL image (RGB, decoded in DataLoader workers)
      -> embedder.preprocess(image)        per image, CPU, picklable output, runs in workers
      -> embedder.collate(list_of_items)   -> one batch (tensors), runs in workers
      -> embedder.embed_image_batch(batch) -> float32 CPU tensor [B, dim] (or [B, T, dim] for
                                              token export), L2-normalized when pooled
Texts: embedder.embed_texts(list[str]) -> float32 CPU tensor [N, dim], L2-normalized.

`fingerprint()` identifies everything that changes the vectors: model files, preprocessing
settings, pooling, dtype. The cache keys embeddings on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from bench.errors import CapabilityError
from bench.params import DType, EmbedderParams, typing_args, validate_params


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how an embedder runs; resolved by the runner from the config's `runtime`."""

    device: str = "cpu"  # "cpu" | "cuda" | "cuda:N" (already resolved, never "auto")
    dtype: str = "float32"  # "float32" | "bfloat16" | "float16"
    batch_size: int = 16
    compile: bool = False


DTYPES = typing_args(DType)


def resolve_torch_dtype(kind: str, runtime: RuntimeOptions):
    """The torch dtype an embedder loads its weights in, from `runtime.dtype` and `runtime.device`
    (`kind` names the embedder in the message; the runner passes "" to check before any work).

    float32 runs everywhere; bfloat16 on CUDA and on the CPU (torch has CPU bf16 kernels: half the
    weights' memory, speed depends on the processor); float16 only on CUDA (CPU float16 kernels are
    missing or very slow). A CUDA device without CUDA is refused here too, before any weights load.
    """
    import torch

    from bench.errors import ConfigError

    dtype, device = runtime.dtype, runtime.device
    if dtype not in DTYPES:
        by = f" by the {kind} embedder" if kind else ""
        raise ConfigError(f"runtime.dtype '{dtype}' is not supported{by}; use one of {', '.join(DTYPES)}")
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device '{device}' but CUDA is not available; use device cpu")
    if dtype == "float16" and not cuda:
        raise ConfigError(f"runtime.dtype float16 needs a CUDA device (device is '{device}'); "
                          f"on the CPU use float32 or bfloat16")
    return getattr(torch, dtype)


class Embedder(ABC):
    """Base class. Subclasses set `kind` (registry name), `Params` (their parameter model, defined
    beside them) and `modalities`.

    The constructor takes the already validated parameters (what the runner passes: the config's
    entry), or, for scripts and tests, the model folder and settings as keywords, which are validated
    by the same `Params` model (its `embed_model()`): each rule is written once, in the model.
    """

    kind: str = ""
    Params: ClassVar[type[EmbedderParams]] = EmbedderParams
    modalities: frozenset[str] = frozenset({"image"})

    def __init__(self, params: EmbedderParams | str | None = None, /, runtime: RuntimeOptions | None = None,
                 **settings: Any) -> None:
        if isinstance(params, self.Params) and not settings:
            self.params = params
        elif isinstance(params, EmbedderParams):
            raise TypeError(f"{type(self).__name__} takes {self.Params.__name__}, "
                            f"got {type(params).__name__}")
        else:
            if params is not None:
                settings["model"] = params
            self.params = validate_params(self.Params.embed_model(), {"type": self.kind, **settings},
                                          self.kind)
        self.runtime = runtime or RuntimeOptions()

    @classmethod
    def preload(cls) -> None:
        """Import the libraries the embedder's loading needs, so that a one-time import is not counted
        in the first embedder's load time (speed/load_s). Default: nothing."""

    @classmethod
    def image_pipeline(cls, params: EmbedderParams,
                       runtime: RuntimeOptions) -> tuple[Callable, Callable] | None:
        """(preprocess, collate) as the embedder built from `params` would have them, without loading
        its model, so that `bench embed` can start decoding while the model loads; None (the default)
        when that needs the model. Any problem: None too (the constructor then raises its own error)."""
        return None

    def _resolve_dtype(self):
        """The torch dtype of the weights: the one dtype rule, `resolve_torch_dtype`."""
        return resolve_torch_dtype(self.kind, self.runtime)

    # ---- capabilities -------------------------------------------------------------------
    @property
    def supports_text(self) -> bool:
        return "text" in self.modalities

    @property
    def dim(self) -> int:
        """Embedding dimension of pooled vectors."""
        raise NotImplementedError

    # ---- identity -----------------------------------------------------------------------
    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """JSON-able dict: model files hash + every setting that changes the output."""

    def describe(self) -> dict[str, Any]:
        """Facts for the report (parameter count, image size, ...)."""
        return {}

    # ---- images -------------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, image: Any) -> Any:
        """PIL RGB image -> picklable per-image item (usually a tensor). Runs in workers."""

    def collate(self, items: list[Any]) -> Any:
        """Per-image items -> one batch. Default: stack tensors."""
        import torch

        return torch.stack(items)

    @abstractmethod
    def embed_image_batch(self, batch: Any) -> Any:
        """Collated batch -> float32 CPU tensor [B, dim], L2-normalized."""

    def batch_size_of(self, batch: Any) -> int:
        """Number of images in a collated batch."""
        return len(batch)

    # ---- texts --------------------------------------------------------------------------
    def embed_texts(self, texts: list[str]) -> Any:
        """Texts -> float32 CPU tensor [N, dim], L2-normalized. Batches internally."""
        raise CapabilityError(f"embedder '{self.kind}' is image-only: it cannot embed text")


def check_finite(vectors: Any, embedder: str, name_of: Callable[[int], str], where: str,
                 dtype: str = "float32") -> Any:
    """Return `vectors` (a tensor [N, ...] or a list of N tensors) when every value is finite; else a
    ModelError naming the embedder, the first bad item (`name_of(row)`) and `where` (e.g. "dataset 'caps'").

    Checked where embeddings are computed, so NaN/Inf never reach the cache, a score or a file.
    """
    import torch

    from bench.errors import ModelError

    rows = list(vectors) if isinstance(vectors, (list, tuple)) else None
    if rows is None:
        if vectors.numel() == 0 or bool(torch.isfinite(vectors).all()):
            return vectors
        bad = (~torch.isfinite(vectors.reshape(len(vectors), -1))).any(dim=1).tolist()
    else:
        bad = [not bool(torch.isfinite(r).all()) for r in rows]
        if not any(bad):
            return vectors
    first = bad.index(True)
    why = (f"runtime dtype {dtype} may overflow: try float32" if dtype != "float32" else
           "the checkpoint's weights may hold NaN/Inf (corrupt or badly trained): check or re-download them")
    raise ModelError(f"embedder '{embedder}' produced NaN/Inf values for {name_of(first)} of {where} "
                     f"({sum(bad)} of {len(bad)} in its batch); {why}")
