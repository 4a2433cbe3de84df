"""The fine-tuning stage of a config: train (or reuse) each `finetune:` entry, then hand the runner one
more embedder per entry, placed right after its base.

    outcomes = train_entries(cfg, dataset)          # dataset: name -> loaded dataset (the run's loader)
    specs = with_finetuned(cfg.embedders, outcomes)  # the embedders a run benchmarks

Checkpoints live in `<cache_dir>/finetune/<name>-<fingerprint[:12]>/` (Hugging Face layout plus
training_record.json). The training fingerprint covers the base checkpoint's files, the training and
validation data, the hyper-parameters and the training code's version (bench.finetune.launch): a folder
whose record carries the same fingerprint is reused, anything else trains (a changed entry gets a new
folder; an interrupted one resumes from its saved state). `processes` and `threads` only change how it is
launched, not what it trains, so they are not part of the fingerprint.

Leakage: before anything trains, every entry's training images are compared (path and content hash) with
the images of every dataset a task evaluates (every dataset a task names except a linear probe's `train`
split, which the probe fits on) and with the entry's own validation images; an overlap is one ConfigError.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import ConfigError, unknown_name
from bench.finetune.params import FinetuneEntry

FIT_ONLY_FIELDS = ("train",)  # task dataset fields a task fits on rather than evaluates (linear probe)


@dataclass
class Outcome:
    """One entry after the stage: its checkpoint, and whether it was trained now or reused."""

    entry: FinetuneEntry
    base_label: str
    out_dir: Path
    fingerprint: str
    reused: bool
    record: dict[str, Any]
    stage_s: float  # this run's time on the entry: the training, or the reuse check


def finetune_root(cfg: Any) -> Path:
    return Path(cfg.cache_dir) / "finetune"


def evaluated_datasets(cfg: Any) -> list[str]:
    """Names of the datasets whose images a task scores (every dataset a task names, except the split a
    linear probe fits on), in config order."""
    out: list[str] = []
    for task in cfg.tasks:
        for field_name, ref in task.datasets().items():
            if field_name not in FIT_ONLY_FIELDS and ref not in out:
                out.append(ref)
    return out


def select(cfg: Any, only: str | None = None) -> list[FinetuneEntry]:
    """The entries to train: all, or the one named `only` (ConfigError naming the known ones)."""
    if only is None:
        return list(cfg.finetune)
    names = [e.name for e in cfg.finetune]
    if only not in names:
        raise ConfigError(unknown_name("finetune entry", only, names) if names else
                          f"--only {only}: the config has no `finetune:` entries")
    return [e for e in cfg.finetune if e.name == only]


def _plan(cfg: Any, entry: FinetuneEntry, dataset: Callable[[str], Any],
          evaluated: list[Any]) -> dict[str, Any]:
    from bench.finetune.launch import pairs, training_fingerprint
    from bench.finetune.leakage import check_no_leakage
    from bench.models.hub import resolve_model_dir

    base = next(e for e in cfg.embedders if e.label == entry.base)  # checked by the config
    base_dir = resolve_model_dir(base.model, base.revision, required=("config.json",))
    train_sets = [dataset(n) for n in entry.train_names]
    val_sets = [dataset(n) for n in entry.val_names]
    train = pairs(train_sets)
    check_no_leakage(train["paths"], [p for ds in evaluated for p in ds.image_paths],
                     what=f"finetune '{entry.name}'")
    val = pairs(val_sets) if val_sets else None
    if val:
        check_no_leakage(train["paths"], val["paths"], what=f"finetune '{entry.name}' (validation set)")
    if entry.batch_size > len(train["paths"]):
        raise ConfigError(f"finetune '{entry.name}': batch_size {entry.batch_size} exceeds the "
                          f"{len(train['paths'])} training images of {', '.join(entry.train_names)}")
    params = entry.engine_params(base.type, merge_default=not adapter_loading())
    if params.is_phi3v and not params.merge and not adapter_loading():
        raise ConfigError(f"finetune '{entry.name}': merge: false needs phi3v-lm's `adapter:` parameter, "
                          f"which this bench lacks; leave merge out (the column then reads the merged checkpoint)")
    settings = base_settings(base)
    fp = training_fingerprint(params, base_dir, train, val, settings)
    return {"entry": entry, "base": base, "base_dir": base_dir, "params": params, "train_sets": train_sets,
            "val_sets": val_sets or None, "fingerprint": fp, "base_settings": settings,
            "out_dir": finetune_root(cfg) / f"{entry.name}-{fp[:12]}"}


def train_entries(cfg: Any, dataset: Callable[[str], Any], *, only: str | None = None, progress: bool = True,
                  log: Callable[[str], None] | None = None, reuse_only: bool = False) -> list[Outcome]:
    """Train what is missing, reuse what matches; every entry is checked (data, leakage, base model)
    before the first one trains. reuse_only (a multi-process `bench run`, whose processes already form
    a process group of their own): a missing checkpoint is an error saying to run `bench finetune`."""
    log = log or (lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True))
    entries = select(cfg, only)
    if not entries:
        return []
    evaluated = [dataset(n) for n in evaluated_datasets(cfg)]
    plans = [_plan(cfg, e, dataset, evaluated) for e in entries]
    root = finetune_root(cfg)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from bench.errors import OutputError

        raise OutputError(f"cannot create the fine-tuning folder {root}: {e.strerror or e}") from None
    from bench.finetune.launch import finetune, needs_training

    outcomes = []
    for plan in plans:
        entry, out = plan["entry"], plan["out_dir"]
        reused = not needs_training(out, plan["fingerprint"])
        if not reused and reuse_only:
            from bench.errors import ConfigError

            raise ConfigError(f"finetune {entry.name}: no checkpoint matching its training fingerprint in "
                              f"{out}; a multi-process run does not train: run `bench finetune CONFIG` first")
        if reused:
            log(f"finetune {entry.name}: reusing {out} (training fingerprint matches)")
        else:
            how = f"{entry.processes} processes (torchrun)" if entry.processes > 1 else "1 process"
            log(f"finetune {entry.name}: training from {entry.base} for {entry.steps} steps, {how} -> {out}")
        t0 = time.perf_counter()
        record = finetune(plan["params"], plan["base_dir"], plan["train_sets"], out,
                          val_sets=plan["val_sets"], eval_sets=evaluated, num_processes=entry.processes,
                          progress=progress, threads=entry.threads or None,
                          base_settings=plan["base_settings"])
        stage_s = time.perf_counter() - t0
        if not reused:
            log(f"finetune {entry.name}: {entry.steps} steps in {record.get('wall_s', 0):.1f} s "
                f"({record.get('samples_per_s') or 0:.0f} samples/s), loss "
                f"{_first_loss(record)} -> {record.get('final_loss')}")
        outcomes.append(Outcome(entry, plan["base"].label, out, plan["fingerprint"], reused, record, stage_s))
    return outcomes


def _first_loss(record: dict[str, Any]) -> Any:
    history = record.get("history") or []
    return history[0].get("loss") if history else None


def base_settings(spec: Any) -> dict[str, Any] | None:
    """What a phi3v-lm base's spec adds to the training (its prompts and num_crops); None for CLIP."""
    if spec.type != "phi3v-lm":
        return None
    image_prompt, text_prompt = spec.prompts()
    return {"image_prompt": image_prompt, "text_prompt": text_prompt, "num_crops": spec.num_crops}


def adapter_loading() -> bool:
    """Whether phi3v-lm takes `adapter: DIR` (merged at load time); without it a fine-tuned phi3v-lm
    column needs the merged checkpoint, so `merge` defaults to true."""
    from bench.embedders.phi3v_lm import Phi3VLMParams

    return "adapter" in Phi3VLMParams.model_fields


def column(spec: Any, outcome: Outcome) -> Any:
    """The embedder spec of a fine-tuned model: the base's spec, labelled with the entry's name, reading
    the fine-tuned weights (CLIP: the checkpoint; phi3v-lm: the merged checkpoint when written, else the
    base model plus the adapter)."""
    update: dict[str, Any] = {"name": outcome.entry.name, "revision": None, "model": str(outcome.out_dir)}
    if outcome.record.get("kind") == "phi3v-lm-adapter":
        if outcome.record.get("merged"):
            update["model"] = str(outcome.out_dir / "merged")
        else:
            update.update(model=spec.model, revision=spec.revision, adapter=str(outcome.out_dir))
            if "adapter_revision" in type(spec).model_fields:
                update["adapter_revision"] = None
    return spec.model_copy(update=update)


def with_finetuned(embedders: Sequence[Any], outcomes: Sequence[Outcome]) -> list[Any]:
    """The run's embedder specs: each configured one followed by the models fine-tuned from it (see
    column)."""
    out: list[Any] = []
    for spec in embedders:
        out.append(spec)
        for o in outcomes:
            if o.base_label == spec.label:
                out.append(column(spec, o))
    return out


def training_record(outcome: Outcome) -> dict[str, Any]:
    """What results.json keeps of a fine-tuning (embedders[label].finetune; bench.results.TrainingRecord)."""
    rec = outcome.record
    keep = ("history", "wall_s", "samples_per_s", "peak_rss_mb", "trainable_params", "total_params",
            "num_processes", "num_train_images", "final_loss", "resumed_from_step", "device", "params")
    return {"base": outcome.base_label, "checkpoint": str(outcome.out_dir.resolve()),
            "fingerprint": outcome.fingerprint, "reused": outcome.reused,
            "stage_s": round(outcome.stage_s, 3),
            "train": list(outcome.entry.train_names), "val": list(outcome.entry.val_names),
            **{k: rec[k] for k in keep if k in rec}}
