"""Fine-tuning hyper-parameters: one frozen, strictly typed pydantic model (unknown keys are errors)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError, field_validator, model_validator

from bench.params import Float, Int  # not bench.config: the config imports this module
from bench.errors import ConfigError


class FinetuneParams(BaseModel):
    """One fine-tuning job: a new model `name` trained from embedder `base` on caption datasets.

    batch_size is the global contrastive batch of one forward pass (all processes together: the
    negatives of every pair); an optimizer step sees batch_size * grad_accum pairs. unlocked_layers
    None trains all layers of the unlocked towers; N trains only the last N encoder layers of each
    unlocked tower, plus its final norm, the projections and logit_scale.
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
        return self

    @property
    def train_names(self) -> list[str]:
        return [self.train] if isinstance(self.train, str) else list(self.train)

    @property
    def val_names(self) -> list[str]:
        if self.val is None:
            return []
        return [self.val] if isinstance(self.val, str) else list(self.val)

    def hyper(self) -> dict[str, Any]:
        """What changes the trained weights (for the fingerprint): everything but the logging cadence."""
        return self.model_dump(mode="json", exclude={"name", "log_every", "save_every"})


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

    def engine_params(self) -> FinetuneParams:
        """The training parameters alone (what the engine and its fingerprint take)."""
        return FinetuneParams.model_validate(self.model_dump(exclude={"processes", "threads"}))


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
