"""Name -> component, with lazy imports and "did you mean" on a typo.

A component is one module plus one `register(...)` line here (or in any module imported before the
config is parsed: tests register toys from their own module). Each line names the component's code
and its parameter model as "module:attribute" strings; nothing is imported until it is used. The
config's unions, the lists of allowed types in its error messages, `bench list`, and `bench embed`'s
choices and per-type options are all read from these tables.

The modules named must import torch/transformers only inside functions: reaching a parameter model
(what `bench validate` does) then costs no torch import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from bench.errors import ConfigError, unknown_name


@dataclass(frozen=True)
class Component:
    kind: str  # "embedder" | "dataset" | "task"
    name: str  # the config's `type`
    target: str  # "module:attr": the embedder class, the dataset loader, the task function
    params: str  # "module:attr": its pydantic parameter model (a subclass of bench.params.*Params)

    def load(self) -> Any:
        return _import(self.target)

    def params_model(self) -> Any:
        return _import(self.params)


def _import(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


KINDS: dict[str, dict[str, Component]] = {"embedder": {}, "dataset": {}, "task": {}}
_generation = [0]  # bumped by every register/unregister: bench.config rebuilds its schema on a change


def register(kind: str, name: str, target: str, params: str) -> None:
    """Add (or replace) the component `name` of `kind`."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; one of {', '.join(KINDS)}")
    KINDS[kind][name] = Component(kind, name, target, params)
    _generation[0] += 1


def unregister(kind: str, name: str) -> None:
    KINDS[kind].pop(name, None)
    _generation[0] += 1


def generation() -> int:
    return _generation[0]


def names(kind: str) -> list[str]:
    return sorted(KINDS[kind])


def component(kind: str, name: str) -> Component:
    table = KINDS[kind]
    if name not in table:
        raise ConfigError(unknown_name(kind, name, table))
    return table[name]


def resolve(kind: str, name: str) -> Any:
    """Import and return the component registered as `name`."""
    return component(kind, name).load()


def params_model(kind: str, name: str) -> Any:
    """The parameter model of `name` (no torch import)."""
    return component(kind, name).params_model()


# ---- the built-in components: one line each ---------------------------------------------------------
register("embedder", "clip", "bench.embedders.clip:ClipEmbedder", "bench.embedders.clip:ClipParams")
register("embedder", "phi3v", "bench.embedders.phi3v:Phi3VImageEmbedder", "bench.embedders.phi3v:Phi3VParams")
register("embedder", "phi3v-lm", "bench.embedders.phi3v_lm:Phi3VLMEmbedder",
         "bench.embedders.phi3v_lm:Phi3VLMParams")

register("dataset", "coco_karpathy", "bench.data.coco:load_karpathy", "bench.data.coco:KarpathyParams")
register("dataset", "flickr30k_karpathy", "bench.data.coco:load_karpathy", "bench.data.coco:KarpathyParams")
register("dataset", "coco_captions", "bench.data.coco:load_coco_captions",
         "bench.data.coco:CocoCaptionsParams")
register("dataset", "coco_instances", "bench.data.coco:load_coco_instances",
         "bench.data.coco:CocoInstancesParams")
register("dataset", "imagefolder", "bench.data.imagefolder:load_imagefolder",
         "bench.data.imagefolder:ImageFolderParams")
register("dataset", "hf", "bench.data.hf:load_hf", "bench.data.hf:HFParams")
register("dataset", "webdataset", "bench.data.webdataset:load_webdataset",
         "bench.data.webdataset:WebDatasetParams")

register("task", "retrieval", "bench.tasks.retrieval:run", "bench.tasks.retrieval:RetrievalParams")
register("task", "linear_probe", "bench.tasks.linear_probe:run", "bench.tasks.linear_probe:LinearProbeParams")
register("task", "zeroshot", "bench.tasks.zeroshot:run", "bench.tasks.zeroshot:ZeroShotParams")
register("task", "speed", "bench.tasks.speed:run", "bench.tasks.speed:SpeedParams")
