"""The GPU path (issue 6, target 7), tested on the CPU where it can be: dtype rules, SDPA attention,
non-blocking copies and pinned memory, torch.compile, synchronized timings, CUDA peak memory.

No test here needs a GPU: CUDA calls are replaced by recorders (monkeypatch) where the code under test
would make them. The figures themselves are only claimed once measured on a GPU.
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from bench.embedders.base import RuntimeOptions
from bench.errors import ConfigError

# ---- dtype selection -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["clip", "phi3v", "phi3v-lm"])
def test_float16_is_refused_on_cpu_with_a_clear_error(kind, tiny_clip_dir, tiny_phi3v_dir):
    from bench import registry

    cls = registry.resolve("embedder", kind)
    model = tiny_clip_dir if kind == "clip" else tiny_phi3v_dir
    with pytest.raises(ConfigError, match=r"float16 needs a CUDA device.*float32 or bfloat16"):
        cls(str(model), runtime=RuntimeOptions(device="cpu", dtype="float16"))


@pytest.mark.parametrize("kind", ["clip", "phi3v", "phi3v-lm"])
def test_bfloat16_runs_on_cpu_close_to_float32(kind, tiny_clip_dir, tiny_phi3v_dir):
    """bfloat16 on the CPU: weights really in bf16, vectors float32 and L2-normalized, close to float32's."""
    from PIL import Image

    from bench import registry

    cls = registry.resolve("embedder", kind)
    model = str(tiny_clip_dir if kind == "clip" else tiny_phi3v_dir)
    e32 = cls(model, runtime=RuntimeOptions(device="cpu", dtype="float32"))
    e16 = cls(model, runtime=RuntimeOptions(device="cpu", dtype="bfloat16"))
    net = getattr(e16, "model", None) or e16.module
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}
    images = [Image.new("RGB", (120, 90), (10, 200, 40)), Image.new("RGB", (60, 140), (250, 20, 90))]
    a = e32.embed_image_batch(e32.collate([e32.preprocess(im) for im in images]))
    b = e16.embed_image_batch(e16.collate([e16.preprocess(im) for im in images]))
    assert b.dtype == torch.float32 and torch.allclose(b.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.98
    assert not torch.equal(a, b)  # computed in bf16, not silently in float32
    assert e16.fingerprint()["dtype"] == "bfloat16" and e16.fingerprint() != e32.fingerprint()


@pytest.mark.parametrize("kind", ["clip", "phi3v"])
def test_cuda_device_without_cuda_is_a_config_error(kind, tiny_clip_dir, tiny_phi3v_dir, monkeypatch):
    from bench import registry

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cls = registry.resolve("embedder", kind)
    model = tiny_clip_dir if kind == "clip" else tiny_phi3v_dir
    with pytest.raises(ConfigError, match="CUDA"):
        cls(str(model), runtime=RuntimeOptions(device="cuda", dtype="float32"))


@pytest.mark.parametrize("kind", ["clip", "phi3v"])
def test_dtype_resolution_on_a_cuda_machine(kind, monkeypatch):
    """With CUDA present, each runtime.dtype maps to the torch dtype the weights are loaded in; an
    unknown one is a ConfigError naming it. (Resolution only: nothing is moved to a GPU.)"""
    from bench import registry

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cls = registry.resolve("embedder", kind)
    emb = object.__new__(cls)  # only the runtime is needed to resolve the dtype
    pairs = [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)]
    for name, expected in pairs:
        emb.runtime = RuntimeOptions(device="cuda:0", dtype=name)
        assert emb._resolve_dtype() is expected
    emb.runtime = RuntimeOptions(device="cuda:0", dtype="float64")
    with pytest.raises(ConfigError, match="float64"):
        emb._resolve_dtype()


def test_phi3v_image_embedding_runs_in_bfloat16(tiny_phi3v_dir):
    """The half-precision path a GPU run takes (weights loaded in bf16, bf16 activations throughout)
    gives the float32 vectors up to bf16 rounding: checked on the CPU, which has bf16 kernels."""
    from PIL import Image

    from bench.models.phi3v.checkpoint import load_image_embedding
    from bench.models.phi3v.processor import Phi3VImageProcessor

    batch = Phi3VImageProcessor(4)([Image.new("RGB", (500, 300), (200, 30, 90)), Image.new("RGB", (64, 128))])
    m32 = load_image_embedding(tiny_phi3v_dir, dtype=torch.float32)
    m16 = load_image_embedding(tiny_phi3v_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in m16.parameters()} == {torch.bfloat16}
    with torch.inference_mode():
        a = m32.pool(batch["pixel_values"], batch["image_sizes"], "mean")
        b = m16.pool(batch["pixel_values"].to(torch.bfloat16), batch["image_sizes"], "mean")
    assert b.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(a, b.float(), dim=-1)
    assert cos.min() > 0.99, cos
    assert not torch.equal(a, b.float())  # really computed in bf16, not silently upcast


# ---- SDPA attention -------------------------------------------------------------------------------


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Counts calls of torch's fused scaled_dot_product_attention (what attn_implementation 'sdpa' runs)."""
    import torch.nn.functional as F

    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


def test_phi3v_tower_uses_sdpa_for_exactly_the_layers_it_runs(tiny_phi3v_dir, sdpa_calls):
    from bench.models.phi3v.checkpoint import load_image_embedding

    module = load_image_embedding(tiny_phi3v_dir)
    assert module.vision_model.config._attn_implementation == "sdpa"
    with torch.inference_mode():
        module.patch_features(torch.zeros(3, 3, 336, 336))
    # 3-layer tiny tower, layer_idx -2: 2 layers run; 3 crops in groups of 2 (CPU) -> 2 calls per layer
    assert module.num_layers_needed == 2
    assert len(sdpa_calls) == 2 * 2


def test_clip_uses_sdpa(tiny_clip_dir, sdpa_calls):
    from bench.embedders.clip import ClipEmbedder

    emb = ClipEmbedder(str(tiny_clip_dir))
    assert emb.attn_implementation == "sdpa" and emb.describe()["attn_implementation"] == "sdpa"
    size = emb.model.config.vision_config.image_size
    emb.embed_image_batch(torch.zeros(2, 3, size, size))
    assert len(sdpa_calls) == emb.model.config.vision_config.num_hidden_layers


# ---- host-to-device copies ------------------------------------------------------------------------


class _RecordTo(torch.overrides.TorchFunctionMode):
    """Records the arguments of every Tensor.to call."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[tuple, dict]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to:
            self.calls.append((args[1:], dict(kwargs)))
        return func(*args, **kwargs)


def test_embedders_copy_batches_to_the_device_without_blocking(tiny_clip_dir, tiny_phi3v_dir):
    """With pinned host memory, non_blocking=True lets the copy overlap the previous batch's kernels."""
    from PIL import Image

    from bench.embedders.clip import ClipEmbedder
    from bench.embedders.phi3v import Phi3VImageEmbedder

    img = Image.new("RGB", (120, 90), (10, 200, 40))
    for emb in (ClipEmbedder(str(tiny_clip_dir)), Phi3VImageEmbedder(str(tiny_phi3v_dir))):
        batch = emb.collate([emb.preprocess(img), emb.preprocess(img)])
        with _RecordTo() as rec:
            out = emb.embed_image_batch(batch)
        assert out.shape[0] == 2
        device_moves = [(a, k) for a, k in rec.calls if "cpu" in map(str, a) or "device" in k]
        assert device_moves, rec.calls
        assert device_moves[0][1].get("non_blocking") is True, device_moves


def test_pin_memory_is_requested_only_with_cuda(tiny_clip_dir, synthetic_dir, monkeypatch):
    """The loader asks DataLoader for pinned memory only when CUDA exists (pinning needs a CUDA context)."""
    import torch.utils.data as tud

    from bench.embedders.clip import ClipEmbedder
    from bench.loader import image_batches

    seen = {}
    real = tud.DataLoader.__init__

    def spy(self, *args, **kwargs):
        seen["pin_memory"] = kwargs.get("pin_memory")
        real(self, *args, **kwargs)

    monkeypatch.setattr(tud.DataLoader, "__init__", spy)
    emb = ClipEmbedder(str(tiny_clip_dir))
    paths = sorted((synthetic_dir / "images" / "test").glob("*.jpg"))[:4]
    batches = list(image_batches(emb, paths, 2, num_workers=1, pin_memory=True))
    assert len(batches) == 2 and seen["pin_memory"] is False  # no CUDA here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gen = image_batches(emb, paths, 2, num_workers=1, pin_memory=True)
    try:
        next(gen)
    except Exception:  # noqa: BLE001 - pinning itself fails without a driver; the request is what is tested
        pass
    finally:
        gen.close()
    assert seen["pin_memory"] is True


# ---- torch.compile --------------------------------------------------------------------------------


def test_compile_option_wraps_the_clip_forward_and_keeps_its_output(tiny_clip_dir, caplog):
    """runtime.compile: the image forward goes through torch.compile (dynamo traces it) and gives the
    eager output. Skipped where the inductor toolchain (a C compiler) is missing: the embedder then
    falls back to eager with a warning, which test_clip covers."""
    import torch._dynamo

    from bench.embedders.clip import ClipEmbedder

    eager = ClipEmbedder(str(tiny_clip_dir))
    size = eager.model.config.vision_config.image_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    expected = eager.embed_image_batch(x)
    torch._dynamo.reset()
    compiled = ClipEmbedder(str(tiny_clip_dir), runtime=RuntimeOptions(compile=True))
    assert set(compiled._compiled) == {"image", "text"}
    frames_before = torch._dynamo.utils.counters["frames"]["ok"]
    with caplog.at_level(logging.WARNING):
        got = compiled.embed_image_batch(x)
    if "image" not in compiled._compiled:
        pytest.skip(f"torch.compile does not work here (fell back to eager): {caplog.text.strip()[-300:]}")
    assert torch._dynamo.utils.counters["frames"]["ok"] > frames_before  # dynamo really compiled a frame
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


# ---- synchronized timings -------------------------------------------------------------------------


def test_device_sync_synchronizes_the_named_device(monkeypatch):
    from bench.metrics.speed import device_sync, measure_loop

    seen = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: seen.append(d))
    sync = device_sync("cuda:1")
    result = measure_loop(lambda: None, warmup=1, min_iterations=3, min_time_s=0.0, sync=sync)
    assert result.iterations == 3
    assert len(seen) == 2 * (1 + 3)  # before and after every call, warm-up included
    assert set(seen) == {torch.device("cuda:1")}
    assert device_sync("cpu") is None


class _FakeCuda:
    """Recorders for the torch.cuda calls of the speed task and of PeakMemory."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: self.calls.append("sync"))
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: self.calls.append("reset"))
        monkeypatch.setattr(torch.cuda, "max_memory_allocated",
                            lambda d=None: self.calls.append("allocated") or 300 * 2**20)
        monkeypatch.setattr(torch.cuda, "max_memory_reserved",
                            lambda d=None: self.calls.append("reserved") or 512 * 2**20)


def _speed_run(device: str, steps: list[str]):
    """Minimal task inputs for the speed task; the embedder logs 'step' into `steps`."""
    from bench.tasks import TaskInputs
    from bench.tasks.speed import SpeedParams

    class FakeEmb:
        supports_text = False

        def embed_image_batch(self, batch):
            steps.append("step")
            return torch.zeros(1, 2)

    class Runtime:
        batch_size = 2
        num_workers = 0
        dtype = "float32"

    class DS:
        image_paths = ["a", "b"]

        def __len__(self):
            return 2

    def no_embeddings(name):
        raise AssertionError("the speed task needs no embeddings")

    inputs = TaskInputs(label="x", embedder=FakeEmb(), device=device, runtime=Runtime(),
                        dataset=lambda n: DS(), image_embeddings=no_embeddings, text_embeddings=no_embeddings,
                        timed=lambda key: contextlib.nullcontext(), detail=lambda key, value: None)
    task = SpeedParams(type="speed", dataset="d", batch_size=2, num_images=2, warmup_batches=1,
                       min_iterations=2, min_time_s=0.0, flops=False)
    return inputs, task


def test_speed_task_synchronizes_around_every_timed_call_and_reports_cuda_memory(monkeypatch):
    """On CUDA the speed task's timed calls are bracketed by synchronize (queued kernels are inside the
    time), and peak allocated/reserved memory come from torch.cuda after a reset; on CPU, no CUDA call."""
    import bench.loader as loader
    from bench.tasks import speed

    monkeypatch.setattr(loader, "image_batches", lambda *a, **k: iter([torch.zeros(2, 3)]))
    fake = _FakeCuda(monkeypatch)
    events = fake.calls  # steps and CUDA calls in one ordered log
    out = speed.run(*_speed_run("cuda:0", events))
    assert events[:2] == ["sync", "reset"]  # PeakMemory's entry
    assert events[-3:] == ["sync", "allocated", "reserved"]  # PeakMemory's exit
    loop = events[2:-3]
    assert loop.count("step") >= 3
    for i, e in enumerate(loop):  # every step has a synchronize right before and right after it
        if e == "step":
            assert loop[i - 1] == "sync" and loop[i + 1] == "sync", loop
    metrics = {m.key: m.value for m in out}
    assert metrics["memory/peak_allocated_mib"] == 300.0
    assert metrics["memory/peak_reserved_mib"] == 512.0

    events.clear()
    out = speed.run(*_speed_run("cpu", events))
    assert set(events) == {"step"}
    assert "memory/peak_allocated_mib" not in {m.key for m in out}
