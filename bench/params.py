"""Base classes of the components' parameter models, and the strict number types they use.

Every component (embedder, dataset type, task type) keeps its own pydantic model next to its code
(`ClipParams` in bench/embedders/clip.py, `KarpathyParams` in bench/data/coco.py, `RetrievalParams`
in bench/tasks/retrieval.py, ...). Those modules import torch, transformers and friends only inside
functions, so bench.registry can reach the models while `bench --help`, `list` and `validate` stay
torch-free (tests/test_components.py checks it). The config (bench.config) builds its discriminated
unions from the registered models; nothing here knows a concrete component.

Numbers are strict: an integer setting takes an integer only (`"8"`, `8.0` and `true` are errors,
never silently 8 or 1); a float setting takes an integer or a float, not a string or a bool.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from bench.errors import ConfigError, unknown_name

STRICT = ConfigDict(extra="forbid", frozen=True, strict=False)


class Params(BaseModel):
    """Frozen, unknown keys are errors."""

    model_config = STRICT


# Strict numbers; `Int(ge=1)` reads like the Field it wraps.
def Int(**bounds: Any) -> Any:
    return Annotated[StrictInt, Field(**bounds)]


def Float(**bounds: Any) -> Any:
    return Annotated[StrictFloat, Field(**bounds)]


OnBadImage = Literal["error", "skip"]  # skip: drop undecodable images with their captions/labels
DType = Literal["float32", "bfloat16", "float16"]

# ---- devices: the one rule for a device name (config runtime.device, `bench embed --device`) ----------
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DEVICE_HELP = "'auto', 'cpu' or 'cuda' (or 'cuda:N' for GPU number N)"


def check_device_name(value: str) -> str:
    """`value` when it names a device bench can run on; ValueError (one line) otherwise."""
    if not isinstance(value, str) or not DEVICE_RE.match(value):
        raise ValueError(f"invalid value {value!r}; allowed: {DEVICE_HELP}")
    return value


# ---- the three kinds of components --------------------------------------------------------------------
class EmbedderParams(Params):
    """What every embedder takes: `model` (folder or hub id), `revision`, and a report `name`."""

    type: str
    name: str | None = None  # label in reports; defaults to the type
    model: str  # local folder or hub id (resolved offline in the HF cache)
    revision: str | None = None
    finetunable: ClassVar[bool] = False  # a `finetune:` entry may name it as its base (bench.finetune)

    @property
    def label(self) -> str:
        return self.name or self.type

    def params(self) -> dict[str, Any]:
        """The settings that shape the embedder (everything but type and name)."""
        return self.model_dump(exclude={"type", "name"})

    @classmethod
    def embed_model(cls) -> type[EmbedderParams]:
        """The model `bench embed` validates its options with: this one, unless a setting is for
        export only (phi3v's pooling 'tokens' gives unpooled vectors, which no task can score)."""
        return cls

    @classmethod
    def options(cls) -> dict[str, Any]:
        """The type-specific settings (field name -> FieldInfo): what `bench embed` offers as --options."""
        common = EmbedderParams.model_fields
        return {k: f for k, f in cls.embed_model().model_fields.items() if k not in common}


class DatasetParams(Params):
    """A dataset type. `provides` says what its items carry: "captions" (retrieval) or "labels"
    (classification); tasks name what they need (`TaskParams.needs`)."""

    type: str
    provides: ClassVar[str] = "labels"
    annotation_example: ClassVar[str] = "annotations.json"

    def example_annotations(self) -> str:
        """The annotation file to name when `annotations` is given a folder."""
        return self.annotation_example


class TaskParams(Params):
    """A task type. `dataset_fields`: the fields that name a dataset; `needs`: what those datasets
    must provide (see DatasetParams.provides)."""

    type: str
    dataset_fields: ClassVar[tuple[str, ...]] = ("dataset",)
    needs: ClassVar[frozenset[str]] = frozenset({"captions", "labels"})

    def datasets(self) -> dict[str, str]:
        """field -> dataset name, for the fields that are set."""
        return {f: getattr(self, f) for f in self.dataset_fields if getattr(self, f, None) is not None}

    def check_data(self, dataset: Callable[[str], Any], where: str) -> None:
        """What only the loaded data can tell (raise ConfigError naming `where`); default: nothing."""


def validate_params(model: type[Params], values: dict[str, Any], what: str) -> Any:
    """`model` validated from `values`, or a one-line ConfigError (`what` names the component, e.g.
    "phi3v"): for code that builds a component without a config file (bench embed, tests, scripts)."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        if err["type"] == "literal_error":
            allowed = typing_args(model.model_fields[field].annotation) if field in model.model_fields else ()
            raise ConfigError(unknown_name(f"{what} {field}", str(err.get("input")), allowed)) from None
        msg = err["msg"].removeprefix("Value error, ")
        got = "" if err["type"] == "value_error" else f" (got {err.get('input')!r})"
        raise ConfigError(f"{what}: {field + ': ' if field else ''}{msg}{got}") from None


def typing_args(annotation: Any) -> tuple[str, ...]:
    """The string values of a Literal annotation (also inside `X | None`); () for anything else."""
    import typing

    if typing.get_origin(annotation) is Literal:
        return tuple(a for a in typing.get_args(annotation) if isinstance(a, str))
    out: tuple[str, ...] = ()
    for arg in typing.get_args(annotation):
        out += typing_args(arg)
    return out
