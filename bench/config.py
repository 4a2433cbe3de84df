"""YAML -> typed, frozen configuration. Validation only: no I/O besides reading the file itself,
no device probing. Unknown keys are errors that name the key's path and the allowed keys.

Relative paths in a config are resolved against the current working directory (run bench from
the repository root, as the Makefile does). Strings may use ${VAR} or ${VAR:-default}.

Numbers are strict: an integer setting takes a YAML integer only (`"8"`, `8.0` and `true` are
errors, never silently 8 or 1); a float setting takes an integer or a float, not a string or a bool.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, StrictBool, StrictFloat, StrictInt,
                      ValidationError, field_validator, model_validator)

from bench.errors import ConfigError, did_you_mean

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=False)


class _Model(BaseModel):
    model_config = _STRICT


# Strict numbers (see the module docstring); `Int(ge=1)` reads like the Field it wraps.
def Int(**bounds: Any) -> Any:
    return Annotated[StrictInt, Field(**bounds)]


def Float(**bounds: Any) -> Any:
    return Annotated[StrictFloat, Field(**bounds)]


OnBadImage = Literal["error", "skip"]  # skip: drop undecodable images with their captions/labels


# --------------------------------------------------------------------------------------------
# runtime
class Runtime(_Model):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # auto: start at 64 on CUDA (16 on CPU) and halve on out-of-memory (bench.distributed.AutoBatchSize)
    batch_size: StrictInt | Literal["auto"] = 16
    num_workers: Int(ge=0, le=64) = 1
    seed: StrictInt = 0
    compile: StrictBool = False
    threads: Int(ge=0) = 0  # 0 = torch default

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:  # the strict-int messages, with 'auto' named as the alternative
        if v == "auto":
            return v
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"Input should be a valid integer (got {v!r}) or 'auto'")
        if not 1 <= v <= 4096:
            bound = "greater than or equal to 1" if v < 1 else "less than or equal to 4096"
            raise ValueError(f"Input should be {bound} (got {v!r}) or 'auto'")
        return v


# --------------------------------------------------------------------------------------------
# datasets: one model per `type`
class _CaptionsBase(_Model):
    annotations: Path
    images: Path
    max_images: Int(ge=1) | None = None
    on_bad_image: OnBadImage = "error"


class KarpathyDataset(_CaptionsBase):
    type: Literal["coco_karpathy", "flickr30k_karpathy"]
    split: Literal["train", "val", "test", "restval", "train+restval"] = "test"


class CocoCaptionsDataset(_CaptionsBase):
    type: Literal["coco_captions"]


class CocoInstancesDataset(_CaptionsBase):
    type: Literal["coco_instances"]


class ImageFolderDataset(_Model):
    type: Literal["imagefolder"]
    root: Path
    max_images: Int(ge=1) | None = None
    on_bad_image: OnBadImage = "error"


DatasetSpec = Annotated[
    Union[KarpathyDataset, CocoCaptionsDataset, CocoInstancesDataset, ImageFolderDataset],
    Field(discriminator="type"),
]
CAPTION_TYPES = {"coco_karpathy", "flickr30k_karpathy", "coco_captions"}
LABEL_TYPES = {"coco_instances", "imagefolder"}


# --------------------------------------------------------------------------------------------
# embedders: one model per `type`
class _EmbedderBase(_Model):
    name: str | None = None  # label in reports; defaults to the type
    model: str  # local folder or hub id (resolved offline in the HF cache)
    revision: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]

    def params(self) -> dict[str, Any]:
        """Keyword arguments for the embedder class (everything but type and name)."""
        d = self.model_dump(exclude={"type", "name"})
        return d


class ClipSpec(_EmbedderBase):
    type: Literal["clip"]


class Phi3VSpec(_EmbedderBase):
    type: Literal["phi3v"]
    num_crops: Int(ge=1, le=64) | None = None
    pooling: Literal["mean", "global", "clip"] = "mean"  # "tokens" is for `bench embed` only


class Phi3VLMSpec(_EmbedderBase):
    type: Literal["phi3v-lm"]
    num_crops: Int(ge=1, le=64) | None = None
    template: Literal["vlm2vec", "e5v", "custom"] = "vlm2vec"
    image_prompt: str | None = None
    text_prompt: str | None = None

    @model_validator(mode="after")
    def _custom_needs_prompts(self):
        if self.template == "custom" and not (self.image_prompt and self.text_prompt):
            raise ValueError("template 'custom' needs both image_prompt and text_prompt")
        if self.text_prompt is not None and "{text}" not in self.text_prompt:
            raise ValueError("text_prompt must contain '{text}' where the text goes")
        if self.image_prompt is not None and not re.search(r"<\|image_1\|>", self.image_prompt):
            raise ValueError("image_prompt must contain '<|image_1|>' where the image goes")
        return self


EmbedderSpec = Annotated[Union[ClipSpec, Phi3VSpec, Phi3VLMSpec], Field(discriminator="type")]


# --------------------------------------------------------------------------------------------
# tasks: one model per `type`
class RetrievalTask(_Model):
    type: Literal["retrieval"]
    dataset: str
    ks: list[Int(ge=1)] = [1, 5, 10]  # each must also be below the gallery size (checked at run start)
    chunk_size: Int(ge=1) = 512

    @field_validator("ks")
    @classmethod
    def _ks(cls, v):
        if not v:
            raise ValueError("ks is empty: list at least one k, e.g. [1, 5, 10]")
        dup = sorted({k for k in v if v.count(k) > 1})
        if dup:
            raise ValueError(f"ks lists {dup[0]} twice: each k once")
        return v


class LinearProbeTask(_Model):
    type: Literal["linear_probe"]
    train: str
    test: str
    val: str | None = None
    val_fraction: Float(gt=0, lt=1) = 0.2
    max_iter: Int(ge=10) = 1000


class ZeroShotTask(_Model):
    type: Literal["zeroshot"]
    dataset: str
    templates: list[str] | None = None  # None = bench.metrics.zeroshot.DEFAULT_TEMPLATES
    class_names: dict[str, str] | None = None  # optional renaming: folder name -> readable name

    @field_validator("templates")
    @classmethod
    def _has_slot(cls, v):
        if v is not None:
            if not v:
                raise ValueError("templates must not be empty")
            for t in v:
                if "{c}" not in t:
                    raise ValueError(f"template {t!r} has no '{{c}}' slot for the class name")
        return v


class SpeedTask(_Model):
    type: Literal["speed"]
    dataset: str
    num_images: Int(ge=1) = 64
    warmup_batches: Int(ge=0) = 1
    min_iterations: Int(ge=1) = 3
    min_time_s: Float(ge=0) = 2.0
    batch_size: Int(ge=1) | None = None  # default: runtime.batch_size


TaskSpec = Annotated[Union[RetrievalTask, LinearProbeTask, ZeroShotTask, SpeedTask], Field(discriminator="type")]


class Regression(_Model):
    quality_abs_tol: Float(ge=0) = 1.0
    speed_rel_tol: Float(ge=0) = 0.25
    memory_rel_tol: Float(ge=0) = 0.20
    per_metric: dict[str, Float(ge=0)] = {}


class Config(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    output_dir: Path = Path("reports/runs")
    cache_dir: Path = Path(".cache/bench")
    runtime: Runtime = Runtime()
    datasets: dict[str, DatasetSpec]
    embedders: Annotated[list[EmbedderSpec], Field(min_length=1)]
    tasks: Annotated[list[TaskSpec], Field(min_length=1)]
    regression: Regression = Regression()
    synthetic: StrictBool = False  # the demo says its weights are random and tiny
    # Set by load_config: the file it came from, and for each key path the ${VAR} variables in it,
    # each with whether it was set (error messages then name the variable to set).
    _source: str = PrivateAttr(default="")
    _env_vars: dict[str, list[tuple[str, bool]]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _cross_refs(self):
        labels = [e.label for e in self.embedders]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise _RefError("embedders", f"names must be unique; '{dup[0]}' appears twice: give each a `name`")
        for i, t in enumerate(self.tasks):
            for field_name in ("dataset", "train", "val", "test"):
                ref = getattr(t, field_name, None)
                if ref is None:
                    continue
                if ref not in self.datasets:
                    raise _RefError(f"tasks[{i}].{field_name}",
                                    f"unknown dataset '{ref}'{did_you_mean(ref, self.datasets)} "
                                    f"defined: {', '.join(sorted(self.datasets)) or '(none)'}")
                kind = self.datasets[ref].type
                needs = CAPTION_TYPES if t.type == "retrieval" else (
                    LABEL_TYPES if t.type in ("linear_probe", "zeroshot") else CAPTION_TYPES | LABEL_TYPES)
                if kind not in needs:
                    raise _RefError(f"tasks[{i}].{field_name}",
                                    f"task '{t.type}' needs a dataset of type {'|'.join(sorted(needs))}, "
                                    f"'{ref}' is {kind}")
        return self


class _RefError(ValueError):
    def __init__(self, loc: str, msg: str) -> None:
        super().__init__(f"{loc}: {msg}")


# --------------------------------------------------------------------------------------------
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(obj: Any, where: str, used: dict[str, list[tuple[str, bool]]] | None = None) -> Any:
    """${VAR} and ${VAR:-default} in every string; `used` collects, per key path, each variable
    and whether it was set (False: its default was taken)."""
    if isinstance(obj, str):
        def sub(m: re.Match) -> str:
            var, default = m.group(1), m.group(2)
            if var in os.environ:
                if used is not None:
                    used.setdefault(where, []).append((var, True))
                return os.environ[var]
            if default is not None:
                if used is not None:
                    used.setdefault(where, []).append((var, False))
                return default
            raise ConfigError(f"{where}: environment variable ${{{var}}} is not set "
                              f"(set it, or write ${{{var}:-default}})")
        return _ENV.sub(sub, obj)
    if isinstance(obj, dict):
        return {k: _expand(v, f"{where}.{k}" if where else str(k), used) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_expand(v, f"{where}[{i}]", used) for i, v in enumerate(obj)]
    return obj


def find_config(name_or_path: str, configs_dir: Path = Path("configs")) -> Path:
    """`coco.yaml`, `coco` or a path -> an existing file; ConfigError listing configs otherwise."""
    p = Path(name_or_path)
    candidates = [p, configs_dir / p, configs_dir / f"{p}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    known = sorted(x.name for x in configs_dir.glob("*.yaml") if not x.name.startswith("_")) if configs_dir.is_dir() else []
    hint = did_you_mean(p.name, known) if known else ""
    raise ConfigError(f"config '{name_or_path}' not found{hint} (looked in ., {configs_dir}/); "
                      f"available: {', '.join(known) or '(none)'}")


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; every problem is one ConfigError line."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{at}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with keys "
                          f"{', '.join(Config.model_fields)}")
    used: dict[str, list[tuple[str, bool]]] = {}
    raw = _expand(raw, "", used)
    cfg = parse_config(raw, source=str(path))
    cfg._source = str(path)
    cfg._env_vars = used
    return cfg


def parse_config(raw: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        from bench.config_errors import first_error

        raise ConfigError(f"{source}: {first_error(e, raw)}") from None


_ANNOTATION_EXAMPLE = {"coco_karpathy": "dataset_coco.json", "flickr30k_karpathy": "dataset_flickr30k.json",
                       "coco_captions": "captions_val2017.json", "coco_instances": "instances_val2017.json"}


def check_paths(cfg: Config) -> None:
    """Check that every file and folder the config names exists and is of the right kind (a file
    where a file is expected, a folder where a folder is), and that every embedder's model folder or
    cached hub id is there: the I/O half of validation, run by `bench validate` and before a run."""
    for name, ds in cfg.datasets.items():
        for key in ("annotations", "images", "root"):
            p = getattr(ds, key, None)
            if p is None:
                continue
            want_dir = key in ("images", "root")
            where = f"datasets.{name}.{key}"
            if want_dir and p.is_file():
                holds = "one sub-folder per class" if key == "root" else "the images"
                raise ConfigError(f"{where}: {p} is a file, not a folder: '{key}' must be the folder that "
                                  f"holds {holds}")
            if not want_dir and p.is_dir():
                found = sorted(x.name for x in p.glob("*.json"))
                inside = f" ({p} holds {', '.join(found[:3])})" if found else ""
                example = _ANNOTATION_EXAMPLE.get(ds.type, "annotations.json")
                raise ConfigError(f"{where}: {p} is a folder, not a file: 'annotations' must name the "
                                  f"annotation .json file itself, e.g. {p / example}{inside}")
            ok = p.is_dir() if want_dir else p.is_file()
            if not ok:
                what = "folder" if want_dir else "file"
                if "demo" in str(p):
                    fix = " (run `make data` to generate the demo data)"
                else:
                    fix = _env_hint(cfg, where, what)
                raise ConfigError(f"{where}: {what} not found: {p}{fix}")
    from bench.errors import ModelError
    from bench.models.hub import resolve_model_dir  # stdlib only: validate stays free of torch

    for i, spec in enumerate(cfg.embedders):
        where = f"embedders[{i}].model"
        try:
            resolve_model_dir(spec.model, spec.revision, required=("config.json",))
        except ModelError as e:
            fix = " (run `make models` to generate the demo models)" if "demo" in spec.model else (
                _env_hint(cfg, where, "model folder", "the checkpoint") if cfg._env_vars.get(where) else "")
            raise ConfigError(f"{where}: {e}{fix}") from None


def _env_hint(cfg: Config, where: str, what: str, holds: str = "the data") -> str:
    """How to fix a missing path: which ${VAR} to set, or where to change the path."""
    env = dict(cfg._env_vars.get(where, []))  # variable -> was it set
    src = f" in {cfg._source}" if cfg._source else ""
    if env and not all(env.values()):
        unset = " and ".join(v for v, was_set in env.items() if not was_set)
        return (f" ({unset} not set, so its default was used: set {unset} to the folder that "
                f"holds {holds}, or change the path{src})")
    if env:
        names = " and ".join(f"{v}={os.environ.get(v, '')}" for v in env)
        return f" (from {names}: put the {what} there, or point the variable at the right folder)"
    return f" (put the {what} there, or change the path{src})"


def resolved_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain JSON with absolute paths (recorded in results.json)."""
    def fix(o):
        if isinstance(o, Path):
            return str(o.resolve())
        if isinstance(o, dict):
            return {k: fix(v) for k, v in o.items()}
        if isinstance(o, list):
            return [fix(v) for v in o]
        return o

    return fix(cfg.model_dump(mode="python"))
