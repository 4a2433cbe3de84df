"""A toy embedder: the one file a contributor writes to add an embedder (see CONTRIBUTING.md);
tests/test_components.py registers it with one line."""

from __future__ import annotations

from typing import Any, Literal

from bench.embedders.base import Embedder
from bench.params import EmbedderParams, Int


class ToyParams(EmbedderParams):
    type: Literal["toy"] = "toy"
    bins: Int(ge=1, le=8) = 2  # colour levels per channel


class ToyEmbedder(Embedder):
    """Image -> its colour histogram (bins^3 values), L2-normalized. Image-only."""

    kind = "toy"
    Params = ToyParams  # the base constructor validates and keeps it as self.params

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
