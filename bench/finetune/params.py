"""Fine-tuning hyper-parameters: one frozen, strictly typed pydantic model (unknown keys are errors)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError, field_validator, model_validator

from bench.params import Float, Int  # not bench.config: the config imports this module
from bench.errors import ConfigError


# VLM2Vec's default targets (src/arguments.py lora_target_modules): the language model's qkv/o/gate_up/down
# projections and the CLIP tower's q/k/v/out projections.
LORA_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "k_proj", "q_proj", "out_proj", "v_proj")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
# Keys that only a phi3v-lm base takes (the VLM2Vec recipe), and the CLIP-only ones.
PHI3V_KEYS = ("lora", "temperature", "learn_temperature", "chunk_size", "merge")
CLIP_KEYS = ("lock_image", "lock_text", "unlocked_layers")


class LoraParams(BaseModel):
    """The peft adapter of a phi3v-lm fine-tuning (`lora:` of a finetune entry); VLM2Vec's values by default:
    DoRA (use_dora), r 16, alpha 64, dropout 0.1, Gaussian init of lora_A, its eight target module names."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    r: Int(ge=1, le=4096) = 16
    alpha: Float(gt=0, le=1e6) = 64.0
    dropout: Float(ge=0, lt=1) = 0.1
    use_dora: StrictBool = True
    use_rslora: StrictBool = False  # scaling alpha / sqrt(r) instead of alpha / r
    target_modules: list[str] = list(LORA_TARGETS)

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must list at least one module name (e.g. qkv_proj)")
        bad = [t for t in v if not _MODULE_NAME.match(t)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a module name (letters, digits, _ and dots, e.g. qkv_proj)")
        dup = sorted({t for t in v if v.count(t) > 1})
        if dup:
            raise ValueError(f"{dup[0]!r} is listed twice")
        return v


class FinetuneParams(BaseModel):
    """One fine-tuning job: a new model `name` trained from embedder `base` on caption datasets.

    batch_size is the global contrastive batch of one forward pass (all processes together: the
    negatives of every pair); an optimizer step sees batch_size * grad_accum pairs. unlocked_layers
    None trains all layers of the unlocked towers; N trains only the last N encoder layers of each
    unlocked tower, plus its final norm, the projections and logit_scale (CLIP bases only).

    A phi3v-lm base trains a peft adapter instead (bench.finetune.phi3v, VLM2Vec's recipe): `lora`
    (LoraParams), `temperature` of the InfoNCE (0.02), `learn_temperature` (false: fixed), `chunk_size`
    (GradCache: representations in chunks of that many pairs, None: the whole batch at once) and `merge`
    (also write a merged full checkpoint). These keys are None on a CLIP entry; `for_base` fills the
    defaults in.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    name: str
    base: str
    train: str | list[str]
    val: str | list[str] | None = None
    steps: Int(ge=1, le=10_000_000) = 200
    batch_size: Int(ge=2, le=65536) = 64
    lr: Float(gt=0, le=10) = 1e-4
    weight_decay: Float(ge=0, le=10) = 0.1
    warmup_steps: Int(ge=0) = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    lock_image: StrictBool = False
    lock_text: StrictBool = False
    unlocked_layers: Int(ge=0) | None = None
    grad_accum: Int(ge=1, le=4096) = 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: Int(ge=0) = 0
    log_every: Int(ge=1) = 10
    save_every: Int(ge=1) = 100
    # phi3v-lm bases only (None: not given; for_base("phi3v-lm") fills VLM2Vec's defaults in)
    lora: LoraParams | None = None
    temperature: Float(ge=0.01, le=100) | None = None  # clip_loss caps the logit scale at 100 (T 0.01)
    learn_temperature: StrictBool | None = None
    chunk_size: Int(ge=1, le=65536) | None = None
    merge: StrictBool | None = None

    @field_validator("name", "base")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("train", "val")
    @classmethod
    def _names(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or any(not s.strip() for s in v)):
            raise ValueError("must be a dataset name or a non-empty list of dataset names")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneParams:
        if self.lock_image and self.lock_text:
            raise ValueError("lock_image and lock_text are both true: nothing left to train")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps})")
        if self.chunk_size is not None and self.chunk_size > self.batch_size:
            raise ValueError(f"chunk_size ({self.chunk_size}) exceeds batch_size ({self.batch_size}): a "
                             f"chunk is a part of the batch (leave chunk_size out to run the batch whole)")
        return self

    @property
    def is_phi3v(self) -> bool:
        """True once for_base("phi3v-lm") resolved it: the engine trains an adapter (bench.finetune.phi3v)."""
        return self.lora is not None

    def base_problem(self, kind: str) -> tuple[str, str] | None:
        """(key, message) when a key does not apply to a base embedder of type `kind`, else None."""
        if kind == "phi3v-lm":
            for key in CLIP_KEYS:
                if getattr(self, key) not in (None, False):
                    return key, (f"applies to CLIP bases only; a phi3v-lm base trains a LoRA/DoRA adapter "
                                 f"(set its targets with lora.target_modules)")
            return None
        for key in PHI3V_KEYS:
            if getattr(self, key) is not None:
                return key, (f"applies to phi3v-lm bases only (the VLM2Vec recipe); '{self.base}' is of type "
                             f"{kind}")
        return None

    def for_base(self, kind: str, merge_default: bool = False) -> FinetuneParams:
        """The params with the defaults of a `kind` base filled in (phi3v-lm: lora, temperature 0.02, ...)."""
        if kind != "phi3v-lm":
            return self
        fill = {"lora": self.lora or LoraParams(),
                "temperature": 0.02 if self.temperature is None else self.temperature,
                "learn_temperature": bool(self.learn_temperature),
                "merge": merge_default if self.merge is None else self.merge}
        return self.model_copy(update=fill)

    @property
    def train_names(self) -> list[str]:
        return [self.train] if isinstance(self.train, str) else list(self.train)

    @property
    def val_names(self) -> list[str]:
        if self.val is None:
            return []
        return [self.val] if isinstance(self.val, str) else list(self.val)

    def hyper(self) -> dict[str, Any]:
        """What changes the trained weights (for the fingerprint): everything but the logging cadence (the
        phi3v-lm keys only when set, so a CLIP entry's fingerprint is what it was before they existed)."""
        out = self.model_dump(mode="json", exclude={"name", "log_every", "save_every"})
        for key in PHI3V_KEYS:
            if out.get(key) is None:
                out.pop(key, None)
        return out


class FinetuneEntry(FinetuneParams):
    """An entry of a config's `finetune:` list: the training parameters plus how to launch them.

    processes: training processes (1: in this process; N > 1: torchrun with N gloo/nccl processes, each
    taking batch_size / N pairs of every batch). threads: torch CPU threads per process (0: torch's
    default; tiny models train fastest on 1 thread). Neither changes the trained model, so neither is in
    the training fingerprint."""

    processes: Int(ge=1, le=256) = 1
    threads: Int(ge=0, le=1024) = 0

    @model_validator(mode="after")
    def _split(self) -> FinetuneEntry:
        if self.batch_size % self.processes:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by processes "
                             f"({self.processes}): "
                             f"each process takes an equal share of every batch")
        return self

    def engine_params(self, kind: str = "clip", merge_default: bool = False) -> FinetuneParams:
        """The training parameters alone (what the engine and its fingerprint take), with the defaults of
        a `kind` base filled in."""
        params = FinetuneParams.model_validate(self.model_dump(exclude={"processes", "threads"}))
        return params.for_base(kind, merge_default)


def parse_params(data: dict[str, Any], where: str = "finetune") -> FinetuneParams:
    """dict -> FinetuneParams; errors become one-line ConfigErrors naming the key."""
    try:
        return FinetuneParams.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{where}{'.' + loc if loc else ''}: {err['msg']}") from None


def check_device(params: FinetuneParams, device: str) -> None:
    """fp16 needs a GPU: on CPU it is refused rather than silently run in another precision."""
    if params.mixed_precision == "fp16" and device == "cpu":
        raise ConfigError(f"finetune '{params.name}': mixed_precision fp16 needs a CUDA device; on CPU use "
                          f"bf16 or no")
