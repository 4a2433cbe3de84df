"""A toy embedder and a toy dataset type, each one file's worth of code: what a contributor writes
to add a component (see CONTRIBUTING.md). tests/test_components.py registers them with one line each."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from bench.embedders.base import Embedder, RuntimeOptions
from bench.params import DatasetParams, EmbedderParams, Int


class ToyParams(EmbedderParams):
    type: Literal["toy"] = "toy"
    bins: Int(ge=1, le=8) = 2  # colour levels per channel


class ToyEmbedder(Embedder):
    """Image -> its colour histogram (bins^3 values), L2-normalized. Image-only."""

    kind = "toy"
    Params = ToyParams

    def __init__(self, params: ToyParams | str | None = None, /, runtime: RuntimeOptions | None = None,
                 **settings: Any) -> None:
        super().__init__(params, runtime, **settings)

    @property
    def dim(self) -> int:
        return self.params.bins ** 3

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "bins": self.params.bins}

    def preprocess(self, image: Any) -> Any:
        import numpy as np
        import torch

        b = self.params.bins
        q = (np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.int64) * b) // 256
        idx = (q[..., 0] * b + q[..., 1]) * b + q[..., 2]
        return torch.bincount(torch.from_numpy(idx.reshape(-1)), minlength=self.dim).float()

    def embed_image_batch(self, batch: Any) -> Any:
        import torch.nn.functional as F

        return F.normalize(batch.float(), dim=-1)


class ToyFolderParams(DatasetParams):
    type: Literal["toy_folder"]
    root: Path
    provides: ClassVar[str] = "labels"


def load_toy(name: str, root: Path) -> Any:
    from bench.data.imagefolder import load_imagefolder

    return load_imagefolder(name=name, root=root)
