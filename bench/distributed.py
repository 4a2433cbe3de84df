"""Data-parallel embedding over processes (`torchrun` / `accelerate launch`), on accelerate's PartialState.

One process per GPU (NCCL) or several CPU processes (gloo). Each range of items to embed is split
into contiguous per-process shards, the last one padded by repeating the final item so that every
process embeds the same number of rows (the VLM2Vec recipe: pad, gather, trim); the rows are
gathered to the main process in dataset order and the padding is dropped. Shard lengths are whole
multiples of the batch size (`granule`), so every batch the model sees is the batch one process
would have made: a multi-process run embeds bit for bit what a single process embeds (at equal
thread counts), not merely close to it.

Protocol (see bench.runner): the main process owns the cache. For every cache shard it must compute
it broadcasts ("range", start, stop, granule); all processes embed their share and gather it to the
main process, which writes the cache file; ("done",) ends a dataset. The others follow with
`follow()` and never touch the cache, so no two processes write one file and the cache layout is
the single-process one (a 1-process run reuses a 2-process run's cache and vice versa).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Followers wait in a collective while the main process scores the previous embedder (a large
# retrieval matrix can take long): the process-group timeout must cover that, not NCCL's 10 min.
TIMEOUT_S = int(os.environ.get("BENCH_DIST_TIMEOUT_S", str(6 * 3600)))
AUTO_BATCH_START = {"cuda": 64, "cpu": 16}  # runtime.batch_size: auto starts here, halves on OOM


@dataclass
class Dist:
    """Where this process stands: world size, rank, backend and the device it embeds on."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"
    launcher: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend, "launcher": self.launcher}


def launched_world_size() -> int:
    """WORLD_SIZE set by torchrun / accelerate launch; 1 when started as one plain process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device: str) -> Dist:
    """Join the process group when launched with several processes (else a 1-process Dist).
    `device` is the resolved device ("cpu" or "cuda..."): gloo on CPU, NCCL and cuda:<local rank> on CUDA."""
    if launched_world_size() <= 1:
        return Dist(device=device)
    from datetime import timedelta

    from accelerate import PartialState

    cuda = device.startswith("cuda")
    state = PartialState(cpu=not cuda, timeout=timedelta(seconds=TIMEOUT_S))
    dev = f"cuda:{state.local_process_index}" if cuda else "cpu"
    launcher = "accelerate" if os.environ.get("ACCELERATE_MIXED_PRECISION") or any(
        k.startswith("ACCELERATE_") for k in os.environ) else "torchrun"
    dist = Dist(world_size=state.num_processes, rank=state.process_index,
                local_rank=state.local_process_index, backend=str(state.backend), device=dev,
                launcher=launcher)
    if not dist.is_main:
        quiet_progress()
    return dist


def teardown() -> None:
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def quiet_progress() -> None:
    """No progress bars off the main process: tqdm (>= 4.66 reads TQDM_DISABLE), datasets and the hub."""
    for var in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ[var] = "1"


# ------------------------------------------------------------------------------------------------
# sharding
def shard_bounds(n: int, world_size: int, granule: int = 1) -> list[tuple[int, int]]:
    """Contiguous [start, stop) of each process over n items; every length but the clipped tail is the
    same multiple of `granule`. Processes past the end get an empty range (they embed padding only)."""
    if n < 0 or world_size < 1 or granule < 1:
        raise ValueError(f"shard_bounds: n={n}, world_size={world_size}, granule={granule}")
    per = per_process(n, world_size, granule)
    return [(min(r * per, n), min((r + 1) * per, n)) for r in range(world_size)]


def per_process(n: int, world_size: int, granule: int = 1) -> int:
    """Rows each process embeds (its padded shard length): ceil(n / world size) rounded up to the granule."""
    return max(1, math.ceil(math.ceil(n / world_size) / granule)) * granule if n else 0


def shard_indices(n: int, world_size: int, rank: int, granule: int = 1) -> list[int]:
    """The item indices process `rank` embeds: its contiguous range padded with the last item (n - 1)."""
    start, stop = shard_bounds(n, world_size, granule)[rank]
    return list(range(start, stop)) + [n - 1] * (per_process(n, world_size, granule) - (stop - start))


def unpad(rows: list[Any], n: int, world_size: int, granule: int = 1) -> list[Any]:
    """Per-process padded row blocks (rank order) -> the n rows in dataset order, padding dropped."""
    out: list[Any] = []
    for (start, stop), block in zip(shard_bounds(n, world_size, granule), rows):
        out.extend(block[: stop - start])
    return out


# ------------------------------------------------------------------------------------------------
# collectives
def broadcast_object(dist: Dist, obj: Any) -> Any:
    """The main process's `obj` on every process."""
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(dist: Dist, obj: Any) -> list[Any] | None:
    """Every process's `obj`, in rank order, on the main process (None elsewhere)."""
    import torch.distributed as td

    out = [None] * dist.world_size if dist.is_main else None
    td.gather_object(obj, out, dst=0)
    return out


def gather_rows(dist: Dist, local, n: int, granule: int = 1):
    """Gather each process's padded [per, dim] block to the main process: [n, dim] float32 in dataset
    order there (padding dropped), None elsewhere. Tensors travel on CPU (gloo) or the GPU (NCCL)."""
    import torch
    import torch.distributed as td

    local = local.detach().float().contiguous()
    if dist.backend == "nccl":
        local = local.to(dist.device)
    blocks = [torch.empty_like(local) for _ in range(dist.world_size)] if dist.is_main else None
    td.gather(local, blocks, dst=0)
    if not dist.is_main:
        return None
    parts = [b.cpu() for b in blocks]
    bounds = shard_bounds(n, dist.world_size, granule)
    return torch.cat([p[: stop - start] for p, (start, stop) in zip(parts, bounds)])


def embed_share(dist: Dist, start: int, stop: int, granule: int, compute: Callable[[int, int], Any],
                on_remote: Callable[[int], None] | None = None):
    """All processes: embed this process's shard of items [start, stop) with `compute(a, b)` (absolute
    indices), pad it by repeating the last row, gather; the main process gets [stop - start, dim]."""
    import torch

    n = stop - start
    if n == 0:  # nothing to share out (an empty dataset): what one process would do
        return compute(start, stop) if dist.is_main else None
    a, b = shard_bounds(n, dist.world_size, granule)[dist.rank]
    per = per_process(n, dist.world_size, granule)
    # A process past the end embeds the last item as its padding: its block keeps the common shape.
    local = compute(start + a, start + b) if b > a else compute(stop - 1, stop)[:1]
    real = b - a
    local = local.float()
    if local.shape[0] < per:
        local = torch.cat([local, local[-1:].expand(per - local.shape[0], *local.shape[1:])])
    out = gather_rows(dist, local, n, granule)
    if on_remote is not None and dist.is_main:
        on_remote(n - real)
    return out


def lead_range(dist: Dist, start: int, stop: int, granule: int, compute: Callable[[int, int], Any],
               on_remote: Callable[[int], None] | None = None):
    """Main process: have every process embed its share of [start, stop); return the rows in order."""
    broadcast_object(dist, ("range", start, stop, granule))
    return embed_share(dist, start, stop, granule, compute, on_remote)


def lead_done(dist: Dist) -> None:
    """Main process: this embedding (dataset x modality) is complete; the followers move on."""
    broadcast_object(dist, ("done",))


def follow(dist: Dist, compute: Callable[[int, int], Any]) -> int:
    """Other processes: embed the shares the main process asks for until it says done; return the
    number of ranges served."""
    served = 0
    while True:
        msg = broadcast_object(dist, None)
        if msg[0] == "done":
            return served
        embed_share(dist, msg[1], msg[2], msg[3], compute)
        served += 1


# ------------------------------------------------------------------------------------------------
# batch size that finds itself
class AutoBatchSize:
    """`runtime.batch_size: auto`: run `fn(batch_size)`; on an out-of-memory error (accelerate's test:
    a RuntimeError saying " out of memory." and the like) halve the batch and run it again from the
    start, through accelerate's find_executable_batch_size. The size that worked is kept for the next
    call (the search is paid once per embedder) and recorded."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.size = start
        self.halvings: list[int] = []  # the sizes that ran out of memory

    def run(self, fn: Callable[[int], Any]) -> Any:
        from accelerate.utils import find_executable_batch_size

        def halve() -> int:
            self.halvings.append(self.size)
            self.size //= 2
            return self.size

        def attempt(batch_size: int) -> Any:
            self.size = batch_size
            return fn(batch_size)

        return find_executable_batch_size(attempt, starting_batch_size=self.size,
                                          reduce_batch_size_fn=halve)()

    def record(self) -> dict[str, Any]:
        return {"requested": "auto", "start": self.start, "used": self.size,
                "out_of_memory_at": self.halvings}


# ------------------------------------------------------------------------------------------------
# what the tasks will ask for: embedded up front by all processes together
def embedding_plan(tasks: Any, supports_text: bool) -> list[tuple[str, str]]:
    """(dataset, "image"|"text") pairs the known task types embed, in first-use order. A task type not
    listed here still works: the main process embeds what it asks for on its own."""
    plan: list[tuple[str, str]] = []

    def add(ds: str | None, modality: str) -> None:
        if ds is not None and (ds, modality) not in plan:
            plan.append((ds, modality))

    for t in tasks:
        if t.type == "retrieval" and supports_text:
            add(t.dataset, "image")
            add(t.dataset, "text")
        elif t.type == "linear_probe":
            add(t.val, "image")
            add(t.train, "image")
            add(t.test, "image")
        elif t.type == "zeroshot" and supports_text:
            add(t.dataset, "image")
    return plan


def embed_together(run: Any, tasks: Any) -> dict[str, Any]:
    """All processes: embed what `tasks` will need for the embedder of `run` (bench.runner.EmbedderRun),
    sharded; the main process ends up with every embedding in `run`'s memo, the others with none.
    Returns, on the main process, the record for results.json details (per-process peak memory,
    aggregate throughput); {} elsewhere."""
    import time

    from bench.metrics.memory import PeakMemory

    dist: Dist = run.ctx.dist
    t0 = time.perf_counter()
    computed = {"image": [0, 0.0], "text": [0, 0.0]}  # items embedded (not from the cache), seconds
    with PeakMemory(dist.device) as mem:
        run.collective = True
        try:
            for ds_name, modality in embedding_plan(tasks, run.embedder.supports_text):
                t = time.perf_counter()
                (run.image_embeddings if modality == "image" else run.text_embeddings)(ds_name)
                if dist.is_main and run.cache_status.get(f"{modality}s/{ds_name}") in ("miss", "off"):
                    computed[modality][0] += len(run._emb[(ds_name, modality)])
                    computed[modality][1] += time.perf_counter() - t
        finally:
            run.collective = False
    wall = time.perf_counter() - t0
    peaks = gather_object(dist, {"rank": dist.rank, "device": dist.device, **mem.metrics()})
    if not dist.is_main:
        return {}
    rate = {m: round(n / s, 3) if n and s else None for m, (n, s) in computed.items()}
    return {**dist.describe(), "embed_wall_s": round(wall, 4), "aggregate_images_per_s": rate["image"],
            "aggregate_texts_per_s": rate["text"], "per_process_peak_memory_mib": peaks}
