"""Build components, embed once (through the cache), feed the metrics, write the Result.

Data flows one way: config -> datasets + embedders -> embeddings (cached) -> metrics -> results.
Embedders run one after another (only one model in memory at a time); results.json is rewritten
after each embedder, so a failure later in the run keeps what was finished.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import registry, significance
from bench.cache import EmbeddingCache, cache_key
from bench.config import Config, check_paths, resolved_dict
from bench.embedders.base import Embedder, RuntimeOptions, check_finite, resolve_torch_dtype
from bench.outputs import check_run_outputs
from bench.run_dir import allocate_run_dir, record_failure
from bench.io import write_json_atomic
from bench.results import EmbedderRecord, RunResult
from bench.tasks import MetricSpec, TaskInputs

LOAD = MetricSpec("speed/load_s", "s", False, "speed", "wall time to build the embedder from its checkpoint")


def _log(msg: str) -> None:
    if os.environ.get("RANK", "0") != "0":  # several processes (torchrun): the main one speaks
        return
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def short_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunContext:
    """Shared state of one run: config, device, cache and the datasets (each loaded once)."""

    dist: Any = None  # bench.distributed.Dist when launched with several processes
    auto_batch_start: int | None = None  # runtime.batch_size: auto -> the size it starts from

    def __init__(self, cfg: Config, device: str, cache: EmbeddingCache, progress: bool = True) -> None:
        self.cfg = cfg
        self.device = device
        self.cache = cache
        self.progress = progress
        self._datasets: dict[str, Any] = {}

    def dataset(self, name: str):
        if name not in self._datasets:
            spec = self.cfg.datasets[name]
            loader = registry.resolve("dataset", spec.type)
            kwargs = spec.model_dump(exclude={"type"})  # the loader gets the validated parameters
            if kwargs.get("on_bad_image") == "skip":
                _log(f"dataset {name}: decoding every image to find unreadable ones (on_bad_image: skip)")
            self._datasets[name] = loader(name, **kwargs)  # positional: a type may have a `name` setting (hf)
            for note in self._datasets[name].notes:
                _log(f"warning: {note}")
        return self._datasets[name]

    def dataset_notes(self) -> list[str]:
        """What loading changed in the datasets (repeats dropped, unreadable images skipped)."""
        return [note for ds in self._datasets.values() for note in ds.notes]

    def dataset_summary(self) -> dict[str, Any]:
        out = {}
        for name, ds in self._datasets.items():
            d: dict[str, Any] = {"type": self.cfg.datasets[name].type, "fingerprint": ds.fingerprint(),
                                 "num_images": len(ds)}
            if hasattr(ds, "captions"):
                d["num_captions"] = ds.num_captions
            else:
                d["num_classes"] = ds.num_classes
                d["multilabel"] = ds.multilabel
            if ds.skipped:  # on_bad_image: skip
                d["skipped_images"] = len(ds.skipped)
                if hasattr(ds, "captions"):
                    d["skipped_captions"] = ds.skipped_captions
            if getattr(ds, "duplicates_dropped", 0):
                d["duplicates_dropped"] = ds.duplicates_dropped
            out[name] = d
        return out


class EmbedderRun:
    """One embedder's pass over the tasks: embeddings through the cache, details and timings."""

    def __init__(self, ctx: RunContext, label: str, embedder: Embedder) -> None:
        self.ctx = ctx
        self.label = label
        self.embedder = embedder
        self.fingerprint = embedder.fingerprint()
        self.details: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.cache_status: dict[str, str] = {}
        self._emb: dict[tuple[str, str], Any] = {}
        self.collective = False  # True while all processes embed together (bench.distributed)
        self.auto_batch = None
        if ctx.auto_batch_start:
            from bench.distributed import AutoBatchSize

            self.auto_batch = AutoBatchSize(ctx.auto_batch_start)
            ctx.cfg = _with_batch_size(ctx.cfg, ctx.auto_batch_start)
        self.records: dict[tuple[str, str, str], Any] = {}  # (label, task, dataset) -> PerQuery
        self.recipe: str | None = None  # a fine-tuned model's training fingerprint (record_fingerprint)

    @contextlib.contextmanager
    def timed(self, what: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[what] = round(self.timings.get(what, 0.0) + time.perf_counter() - t0, 4)

    def detail(self, key: str, value: Any) -> None:
        self.details[key] = value

    @property
    def record_fingerprint(self) -> str:
        """The model fingerprint results.json records (bench compare's identity): the embedder's, except for
        a fine-tuned model, identified by its recipe (its weights differ in the last bits between CPUs)."""
        if self.recipe is None:
            return short_hash(self.fingerprint)
        return short_hash({**{k: v for k, v in self.fingerprint.items() if k != "model_hash"},
                           "finetune_recipe": self.recipe})

    def per_query(self, name: str, record: Any) -> None:
        """Keep a task's per-query record ("<task>/<dataset>"), labelled with who and what made it."""
        task, dataset = name.split("/", 1)
        record.meta.update(embedder=self.label, task=task, dataset=dataset,
                           embedder_fingerprint=self.record_fingerprint,
                           dataset_fingerprint=self.ctx.dataset(dataset).fingerprint())
        self.records[(self.label, task, dataset)] = record

    def inputs(self) -> TaskInputs:
        """What a task may use: this embedder's embeddings, the datasets, timings, runtime options."""
        return TaskInputs(label=self.label, embedder=self.embedder, device=self.ctx.device,
                          runtime=self.ctx.cfg.runtime, dataset=self.ctx.dataset,
                          image_embeddings=self.image_embeddings, text_embeddings=self.text_embeddings,
                          timed=self.timed, detail=self.detail, per_query=self.per_query,
                          cache_dir=self.ctx.cfg.cache_dir if self.ctx.cache.enabled else None)

    def _cached(self, ds_name: str, modality: str, n: int, compute, unit: str, granule: int = 1):
        if (ds_name, modality) in self._emb:
            return self._emb[(ds_name, modality)]
        ds = self.ctx.dataset(ds_name)
        key = cache_key(self.fingerprint, ds.fingerprint(), modality)
        bar = _progress(n, f"{self.label} {modality}s {ds_name}", unit, self.ctx.progress)
        dist = self.ctx.dist
        together = self.collective and dist is not None and dist.enabled  # bench.distributed.embed_together
        if together and not dist.is_main:  # embeds its shares; the main process owns the cache (one writer)
            from bench.distributed import follow

            follow(dist, lambda s, e: compute(s, e, bar))
            bar.close()
            return None

        def fill(a: int, b: int):
            if together:  # every process embeds its share of [a, b); the rows come back here, in order
                from bench.distributed import lead_range

                return lead_range(dist, a, b, granule, lambda s, e: compute(s, e, bar), bar.update)
            return compute(a, b, bar)

        with self.timed(f"embed_{modality}s/{ds_name}"):
            emb, status = self.ctx.cache.get_or_compute(
                key, n, fill, describe={"embedder": self.label, "dataset": ds_name, "modality": modality},
                on_progress=bar.update)
            if together:
                from bench.distributed import lead_done

                lead_done(dist)
        bar.close()
        self.cache_status[f"{modality}s/{ds_name}"] = status
        self._emb[(ds_name, modality)] = emb
        return emb

    def image_embeddings(self, ds_name: str):
        import torch

        from bench.loader import image_batches

        ds = self.ctx.dataset(ds_name)
        rt = self.ctx.cfg.runtime

        def compute_with(batch_size: int, start: int, stop: int, bar):
            out, done = [], start
            for batch in image_batches(self.embedder, ds.image_paths[start:stop], batch_size, rt.num_workers,
                                       pin_memory=self.ctx.device.startswith("cuda")):
                e = self.embedder.embed_image_batch(batch)
                # Before the cache or a score sees them: NaN/Inf vectors are the model's fault, named here.
                check_finite(e, self.label, lambda i, at=done: f"image {ds.image_paths[at + i]}",
                             f"dataset '{ds_name}'", rt.dtype)
                done += len(e)
                out.append(e)
                bar.update(len(e))
            return torch.cat(out)

        def compute(start: int, stop: int, bar):
            if self.auto_batch is None:
                return compute_with(rt.batch_size, start, stop, bar)
            out = self.auto_batch.run(lambda bs: compute_with(bs, start, stop, bar))
            self.ctx.cfg = _with_batch_size(self.ctx.cfg, self.auto_batch.size)  # the speed task's default
            self.detail("batch_size", self.auto_batch.record())
            return out

        return self._cached(ds_name, "image", len(ds), compute, "img", granule=rt.batch_size)

    def text_embeddings(self, ds_name: str):
        ds = self.ctx.dataset(ds_name)
        texts, owner = ds.flat_captions()
        step = max(self.ctx.cfg.runtime.batch_size * 4, 32)

        def compute(start: int, stop: int, bar):
            import torch

            out = []
            for s in range(start, stop, step):
                e = self.embedder.embed_texts(texts[s:min(s + step, stop)])
                check_finite(e, self.label, lambda i, at=s: f"a caption of image {ds.image_paths[owner[at + i]]}",
                             f"dataset '{ds_name}'", self.ctx.cfg.runtime.dtype)
                out.append(e)
                bar.update(len(e))
            return torch.cat(out)

        return self._cached(ds_name, "text", len(texts), compute, "text", granule=step)


def _distributed_note(label: str, rec: dict[str, Any]) -> str:
    """The report's line on a multi-process embedding (the report renders notes as they are)."""
    peaks = ", ".join(f"{p['peak_rss_mib']:.0f}" + (f" (GPU {p['peak_allocated_mib']:.0f})"
                                                     if "peak_allocated_mib" in p else "")
                      for p in rec["per_process_peak_memory_mib"])
    rate = rec.get("aggregate_images_per_s")
    return (f"{label}: embedded by {rec['world_size']} processes ({rec['backend']}, {rec['launcher']}); "
            f"peak memory per process, MiB: {peaks}"
            + (f"; aggregate {rate:g} images/s" if rate else "") + ".")


def _with_batch_size(cfg: Config, batch_size: int) -> Config:
    """cfg with runtime.batch_size replaced (runtime.batch_size: auto resolved to a number)."""
    return cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"batch_size": batch_size})})


def _progress(total: int, desc: str, unit: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)


def dataset_loader(cfg: Config) -> Any:
    """name -> loaded dataset of `cfg` (each loaded once), without a run: for `bench finetune`."""
    return RunContext(cfg, "cpu", EmbeddingCache(cfg.cache_dir, enabled=False), progress=False).dataset


def build_embedder(spec, ctx: RunContext) -> Embedder:
    """The embedder of a config entry (its validated parameters), on the run's device and dtype."""
    cls = registry.resolve("embedder", spec.type)
    rt = ctx.cfg.runtime
    runtime = RuntimeOptions(device=ctx.device, dtype=rt.dtype, batch_size=rt.batch_size, compile=rt.compile)
    return cls(spec, runtime=runtime)


def run_benchmark(cfg: Config, config_path: str | Path, *, use_cache: bool = True, progress: bool = True,
                  out_dir: Path | None = None, render: bool = True) -> Path | None:
    """Run every task for every embedder; return the run folder (results.json, report.*). Launched with
    several processes (torchrun), all embed and only the main one scores and writes: the others
    return None once their shares are gathered."""
    import numpy as np
    import torch

    from bench.environment import resolve_device

    check_paths(cfg)
    rt = cfg.runtime
    if rt.threads:
        torch.set_num_threads(rt.threads)
    torch.manual_seed(rt.seed)
    np.random.seed(rt.seed)
    device = resolve_device(rt.device)
    from bench import distributed

    dist = distributed.setup(device)  # one process unless launched by torchrun / accelerate launch
    device = dist.device if dist.enabled else device
    # The embedders' dtype rule, checked once before any output or loading.
    resolve_torch_dtype("", RuntimeOptions(device=device, dtype=rt.dtype))
    # Output folders too: a read-only, full or mistyped folder fails now, not after the embedding.
    if dist.is_main:
        check_run_outputs(cfg.output_dir, cfg.cache_dir, out_dir, use_cache)
    ctx = RunContext(cfg, device, EmbeddingCache(cfg.cache_dir, enabled=use_cache),
                     progress=progress and dist.is_main)
    ctx.dist = dist
    if rt.batch_size == "auto":
        ctx.auto_batch_start = distributed.AUTO_BATCH_START["cuda" if device.startswith("cuda") else "cpu"]
        ctx.cfg = _with_batch_size(cfg, ctx.auto_batch_start)
    # Every dataset a task uses loads, and fits its tasks, before any output is written.
    from bench.tasks import check_tasks_against_data

    check_tasks_against_data(cfg.tasks, ctx.dataset)
    # Fine-tuned models (config `finetune:`): trained when missing, reused when their fingerprint matches;
    # leakage and every entry's data are checked before any training, all before any run output. A
    # multi-process run only reuses (its processes already form a group; `bench finetune` trains).
    from bench.finetune.stage import train_entries, with_finetuned

    finetuned = train_entries(cfg, ctx.dataset, progress=progress and dist.is_main, log=_log,
                              reuse_only=dist.enabled) if cfg.finetune else []
    if not dist.is_main:
        for spec in with_finetuned(cfg.embedders, finetuned):  # embed this process's shares, then leave
            embedder = build_embedder(spec, ctx)
            distributed.embed_together(EmbedderRun(ctx, spec.label, embedder), cfg.tasks)
            del embedder
            gc.collect()
        distributed.teardown()
        return None

    now = datetime.now(timezone.utc)
    run_id = f"{cfg.name}-{now.strftime('%Y%m%d-%H%M%S')}"
    if out_dir:  # the user's own folder (--out): may exist already, e.g. a rerun into it
        out_dir, made = Path(out_dir), not Path(out_dir).exists()
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_id, out_dir = allocate_run_dir(cfg.output_dir, run_id)
        made = True
    state = {"finished": 0, "complete": False}  # embedders whose results.json is written; the whole run
    try:
        done = _run(cfg, ctx, config_path, render, device, now, run_id, out_dir, state, finetuned)
        distributed.teardown()
        return done
    except BaseException as e:
        if not state["complete"]:  # a failure while rendering leaves complete results as they are
            record_failure(out_dir, made, state["finished"], e, _log)
        raise


def _save_records(out_dir: Path, result: RunResult, records: dict, cfg: Config) -> None:
    """per_query.npz beside results.json (written first: results.json never names a run whose
    records are older than it); its meta ties it to this run and its models and data."""
    if not records:
        return
    meta = {"run_id": result.run_id, "benchmark": result.benchmark, "seed": cfg.runtime.seed,
            "statistics": significance.bootstrap_kw(cfg.statistics),
            "embedders": {k: e.fingerprint for k, e in result.embedders.items()},
            "datasets": {k: d.fingerprint for k, d in result.datasets.items()}}
    significance.save_records(out_dir / significance.RECORDS_FILE, records, meta)


def _run(cfg: Config, ctx: RunContext, config_path: str | Path, render: bool, device: str,
         now: datetime, run_id: str, out_dir: Path, state: dict[str, Any], finetuned: list[Any]) -> Path:
    from bench.environment import capture
    from bench.finetune.stage import training_record, with_finetuned

    specs = with_finetuned(cfg.embedders, finetuned)
    trained = {o.entry.name: training_record(o) for o in finetuned}
    # A fine-tuned model is identified by its recipe (base model, data, hyper-parameters, training code
    # version) in results.json: its weights differ in the last bits between CPUs (EmbedderRun).
    recipes = {o.entry.name: o.fingerprint for o in finetuned}

    result = RunResult(benchmark=cfg.name, run_id=run_id, created=now.isoformat(timespec="seconds"),
                       config_path=str(config_path), config=resolved_dict(cfg), environment=capture(device),
                       synthetic=cfg.synthetic)
    if cfg.synthetic:
        result.notes.append("Synthetic benchmark: generated images and tiny random-initialized models. "
                            "The numbers measure the harness, not model quality.")
    if ctx.dist is not None and ctx.dist.enabled:
        result.environment.distributed = ctx.dist.describe()
    result.notes += ctx.dataset_notes()
    result.datasets = ctx.dataset_summary()
    _log(f"run {run_id} on {device}: {len(specs)} embedder(s), {len(cfg.tasks)} task(s) -> {out_dir}")
    t_run = time.perf_counter()
    records: dict[tuple[str, str, str], Any] = {}
    # One-time imports are paid here, not by whichever embedder happens to load first (speed/load_s).
    for kind in dict.fromkeys(spec.type for spec in specs):
        registry.resolve("embedder", kind).preload()

    for spec in specs:
        label = spec.label
        _log(f"{label}: loading {spec.type} from {spec.model}")
        t0 = time.perf_counter()
        embedder = build_embedder(spec, ctx)
        load_s = time.perf_counter() - t0
        erun = EmbedderRun(ctx, label, embedder)
        erun.recipe = recipes.get(label)
        erun.timings["load"] = round(load_s, 4)
        if ctx.dist is not None and ctx.dist.enabled:  # all processes embed what the tasks need, now
            from bench.distributed import embed_together

            rec = embed_together(erun, cfg.tasks)
            erun.detail("distributed", rec)
            result.notes.append(_distributed_note(label, rec))
        describe = embedder.describe()
        result.embedders[label] = EmbedderRecord(
            type=spec.type, fingerprint_detail=erun.fingerprint,
            fingerprint=erun.record_fingerprint,
            describe=describe, modalities=sorted(embedder.modalities),
            random_weights=bool(cfg.synthetic or describe.get("random_weights")),
            **({"finetune": trained[label]} if label in trained else {}),
        )
        metrics = []
        for task in cfg.tasks:
            _log(f"{label}: {task.type}")
            fn = registry.resolve("task", task.type)
            metrics.extend(fn(erun.inputs(), task))
        records.update(erun.records)
        with erun.timed("statistics"):  # intervals and chance levels from the per-query records
            significance.annotate(metrics, erun.records, cfg.statistics)
        result.metrics.extend(metrics)
        result.metrics.append(LOAD.record(label, "load", "-", load_s))
        result.details[label] = erun.details
        result.timings[label] = erun.timings
        result.cache[label] = erun.cache_status
        result.datasets = ctx.dataset_summary()
        _save_records(out_dir, result, records, cfg)
        write_json_atomic(out_dir / "results.json", {**result.to_json(), "complete": False})
        state["finished"] += 1
        del embedder, erun
        gc.collect()
    t0 = time.perf_counter()
    result.paired = significance.paired_marks(result.metrics, records, cfg.statistics)
    result.timings["_paired_s"] = round(time.perf_counter() - t0, 4)
    result.timings["_total_s"] = round(time.perf_counter() - t_run, 3)
    write_json_atomic(out_dir / "results.json", {**result.to_json(), "complete": True})
    state["complete"] = True
    if render:
        from bench.report import render_run

        render_run(result, out_dir)
    return out_dir
