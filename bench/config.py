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

from pydantic import BaseModel, Field, PrivateAttr, StrictBool, StrictInt, ValidationError, field_validator, \
    model_validator

from bench import registry
from bench.errors import ConfigError, did_you_mean
from bench.finetune.params import FinetuneEntry
from bench.params import (STRICT, DatasetParams, DType, EmbedderParams, Float, Int, TaskParams,  # noqa: F401
                          check_device_name)

_STRICT = STRICT


class _Model(BaseModel):
    model_config = _STRICT


# --------------------------------------------------------------------------------------------
# runtime
class Runtime(_Model):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: DType = "float32"
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

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, v: Any) -> str:
        return check_device_name(v)


# --------------------------------------------------------------------------------------------
# datasets, embedders, tasks: one parameter model per registered `type` (bench.registry), each
# defined beside its component's code. The unions below are built from the registry.
def _union(kind: str) -> Any:
    models: list[type] = []
    for name in registry.names(kind):
        m = registry.params_model(kind, name)
        if m not in models:
            models.append(m)
    return Annotated[Union[tuple(models)], Field(discriminator="type")] if len(models) > 1 else \
        Annotated[models[0], Field(discriminator="type")]


def types_providing(what: set[str] | frozenset[str]) -> list[str]:
    """The dataset types whose items carry `what` ("captions", "labels")."""
    return [n for n in registry.names("dataset") if provides(registry.params_model("dataset", n)) & set(what)]


def provides(entry: Any) -> set[str]:
    """What a dataset type (or one config entry of it) provides; "captions|labels": either, the
    entry's settings or its data decide (bench.data.hf.EntryProvides)."""
    return set(str(entry.provides).split("|"))


class Regression(_Model):
    quality_abs_tol: Float(ge=0) = 1.0
    speed_rel_tol: Float(ge=0) = 0.25
    memory_rel_tol: Float(ge=0) = 0.20
    per_metric: dict[str, Float(ge=0)] = {}


class Statistics(_Model):
    """Uncertainty of the quality metrics (bench.significance): percentile bootstrap over the test
    queries, `resamples` draws at confidence `level`, seeded by `seed`; `enabled: false` skips the
    intervals and paired marks (the per-query records are still written)."""

    enabled: StrictBool = True
    resamples: Int(ge=10, le=100_000) = 1000
    level: Float(gt=0.5, lt=1) = 0.95
    seed: StrictInt = 0


class Config(_Model):
    """A benchmark config. Validate with load_config / parse_config: they use config_model(), this
    class with the component sections' unions taken from the registry."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    output_dir: Path = Path("reports/runs")
    cache_dir: Path = Path(".cache/bench")
    runtime: Runtime = Runtime()
    # The component sections: their per-type unions are filled in by config_model() from the registry.
    datasets: dict[str, DatasetParams]
    embedders: Annotated[list[EmbedderParams], Field(min_length=1)]
    tasks: Annotated[list[TaskParams], Field(min_length=1)]
    # Fine-tuned models (bench.finetune): each becomes one more embedder, labelled by its `name`.
    finetune: list[FinetuneEntry] = []
    regression: Regression = Regression()
    statistics: Statistics = Statistics()
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
            for field_name, ref in t.datasets().items():
                if ref not in self.datasets:
                    raise _RefError(f"tasks[{i}].{field_name}",
                                    f"unknown dataset '{ref}'{did_you_mean(ref, self.datasets)} "
                                    f"defined: {', '.join(sorted(self.datasets)) or '(none)'}")
                kind = self.datasets[ref].type
                if not provides(self.datasets[ref]) & t.needs:
                    needs = types_providing(t.needs)
                    if kind in needs:  # a type whose entries decide: say what this one holds
                        kind += f" with {'|'.join(sorted(provides(self.datasets[ref])))}"
                    raise _RefError(f"tasks[{i}].{field_name}",
                                    f"task '{t.type}' needs a dataset of type {'|'.join(sorted(needs))}, "
                                    f"'{ref}' is {kind}")
        self._check_finetune(labels)
        return self

    def _check_finetune(self, labels: list[str]) -> None:
        """Each entry: a new label, a base embedder of this config that can be fine-tuned, caption data."""
        seen = set(labels)
        for i, ft in enumerate(self.finetune):
            if ft.name in seen:
                raise _RefError(f"finetune[{i}].name", f"'{ft.name}' is already the name of an embedder or "
                                f"another finetune entry: give the fine-tuned model its own")
            seen.add(ft.name)
            base = next((e for e in self.embedders if e.label == ft.base), None)
            if base is None:
                raise _RefError(f"finetune[{i}].base", f"unknown embedder '{ft.base}'"
                                f"{did_you_mean(ft.base, labels)} defined: {', '.join(labels)}")
            if not getattr(base, "finetunable", False):
                kinds = [n for n in registry.names("embedder")
                         if getattr(registry.params_model("embedder", n), "finetunable", False)]
                raise _RefError(f"finetune[{i}].base", f"embedder '{ft.base}' is of type {base.type}, which "
                                f"cannot be fine-tuned; types that can: {', '.join(kinds)}")
            problem = ft.base_problem(base.type)
            if problem:
                raise _RefError(f"finetune[{i}].{problem[0]}", problem[1])
            for key, names in (("train", ft.train_names), ("val", ft.val_names)):
                for ref in names:
                    if ref not in self.datasets:
                        raise _RefError(f"finetune[{i}].{key}",
                                        f"unknown dataset '{ref}'{did_you_mean(ref, self.datasets)} "
                                        f"defined: {', '.join(sorted(self.datasets)) or '(none)'}")
                    if self.datasets[ref].provides != "captions":
                        raise _RefError(f"finetune[{i}].{key}",
                                        f"fine-tuning needs image-caption pairs: a dataset of type "
                                        f"{'|'.join(types_providing({'captions'}))}, '{ref}' is "
                                        f"{self.datasets[ref].type}")


class _RefError(ValueError):
    def __init__(self, loc: str, msg: str) -> None:
        super().__init__(f"{loc}: {msg}")


_MODEL: dict[int, type[Config]] = {}


def config_model() -> type[Config]:
    """The validating Config class: Config with the datasets/embedders/tasks unions of the registry as
    it is now (rebuilt when a component is registered later, e.g. by a test or a plugin module)."""
    gen = registry.generation()
    if gen not in _MODEL:
        from pydantic import create_model

        _MODEL.clear()
        _MODEL[gen] = create_model(
            "Config", __base__=Config, __module__=__name__,
            datasets=(dict[str, _union("dataset")], ...),
            embedders=(Annotated[list[_union("embedder")], Field(min_length=1)], ...),
            tasks=(Annotated[list[_union("task")], Field(min_length=1)], ...))
    return _MODEL[gen]


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
        return config_model().model_validate(raw)
    except ValidationError as e:
        from bench.config_errors import first_error

        raise ConfigError(f"{source}: {first_error(e, raw)}") from None


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
                example = ds.example_annotations()
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
        adapter = getattr(spec, "adapter", None)
        if adapter is not None:
            try:
                resolve_model_dir(adapter, getattr(spec, "adapter_revision", None),
                                  required=("adapter_config.json",))
            except ModelError as e:
                raise ConfigError(f"embedders[{i}].adapter: {e}") from None


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
