"""Name -> component, with lazy imports and "did you mean" on a typo.

Adding a component is one line here. The modules named are only imported when used, so
`bench --help`, `bench validate` and `bench list` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from bench.errors import ConfigError, unknown_name

# name -> "module:attribute"
EMBEDDERS: dict[str, str] = {
    "clip": "bench.embedders.clip:ClipEmbedder",
    "phi3v": "bench.embedders.phi3v:Phi3VImageEmbedder",
    "phi3v-lm": "bench.embedders.phi3v_lm:Phi3VLMEmbedder",
}

DATASETS: dict[str, str] = {
    "coco_karpathy": "bench.data.coco:load_karpathy",
    "coco_captions": "bench.data.coco:load_coco_captions",
    "coco_instances": "bench.data.coco:load_coco_instances",
    "flickr30k_karpathy": "bench.data.coco:load_karpathy",
    "imagefolder": "bench.data.imagefolder:load_imagefolder",
}

TASKS: dict[str, str] = {
    "retrieval": "bench.tasks:run_retrieval",
    "linear_probe": "bench.tasks:run_linear_probe",
    "zeroshot": "bench.tasks:run_zeroshot",
    "speed": "bench.tasks:run_speed",
}

KINDS = {"embedder": EMBEDDERS, "dataset": DATASETS, "task": TASKS}


def resolve(kind: str, name: str) -> Any:
    """Import and return the component registered as `name`."""
    table = KINDS[kind]
    if name not in table:
        raise ConfigError(unknown_name(kind, name, table))
    module, attr = table[name].split(":")
    return getattr(importlib.import_module(module), attr)
