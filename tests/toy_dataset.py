"""A toy dataset type: the one file a contributor writes to add a dataset type (see CONTRIBUTING.md);
tests/test_components.py registers it with one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from bench.params import DatasetParams


class ToyFolderParams(DatasetParams):
    type: Literal["toy_folder"]
    root: Path
    provides: ClassVar[str] = "labels"


def load_toy(name: str, root: Path) -> Any:
    from bench.data.imagefolder import load_imagefolder

    return load_imagefolder(name=name, root=root)
