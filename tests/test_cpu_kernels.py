"""Quality figures do not depend on the CPU kernels (issue 10, item 1).

The same small benchmark (two tiny CLIPs, seeds 0 and 1 -- the tiny Phi-3-V towers cost minutes
of CPU at 336 px, too much for `make test`; the demo check covers them; retrieval, single- and
multi-label linear probe, zero-shot on generated data) runs in two subprocesses: ATen's `default` (scalar) kernels with one
thread for torch and BLAS, and the CPU's native kernels (AVX2 / AVX-512 / ...) with two threads and,
on x86, another OpenBLAS kernel for numpy/scikit-learn. `bench compare --fail-on quality` must exit
0 both ways. The test checks that the kernels really differed (torch reports the capability it
ran with, and the cached embeddings are not bit-identical) and that the same comparison does fail
on a change of three test items, so it cannot pass by checking nothing.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp: Path, d: Path, clip_dir: Path, clip2_dir: Path, tag: str) -> Path:
    cfg = {
        "name": "kernels",
        "synthetic": True,
        "output_dir": str(tmp / "runs"),
        "cache_dir": str(tmp / f"cache-{tag}"),  # one cache per kernel: embeddings are recomputed
        "runtime": {"device": "cpu", "batch_size": 8, "num_workers": 0, "seed": 0},
        "datasets": {
            "caps": {"type": "coco_karpathy", "annotations": str(d / "dataset_coco.json"),
                     "images": str(d / "images"), "split": "test"},
            "obj_train": {"type": "coco_instances", "annotations": str(d / "annotations/instances_train.json"),
                          "images": str(d / "images/train")},
            "obj_val": {"type": "coco_instances", "annotations": str(d / "annotations/instances_val.json"),
                        "images": str(d / "images/val")},
            "obj_test": {"type": "coco_instances", "annotations": str(d / "annotations/instances_test.json"),
                         "images": str(d / "images/test")},
            "fold_train": {"type": "imagefolder", "root": str(d / "imagefolder/train")},
            "fold_test": {"type": "imagefolder", "root": str(d / "imagefolder/test")},
        },
        "embedders": [
            {"type": "clip", "name": "clip", "model": str(clip_dir)},
            {"type": "clip", "name": "clip2", "model": str(clip2_dir)},
        ],
        "tasks": [
            {"type": "retrieval", "dataset": "caps", "ks": [1, 5]},
            {"type": "linear_probe", "train": "fold_train", "test": "fold_test"},
            {"type": "linear_probe", "train": "obj_train", "val": "obj_val", "test": "obj_test"},
            {"type": "zeroshot", "dataset": "fold_test", "templates": ["a {c}.", "a drawing of a {c}."]},
        ],
        "regression": {"quality_abs_tol": 0.0},  # only the test-set resolution (2 items) is allowed
    }
    p = tmp / f"kernels-{tag}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _env(capability: str, threads: int, coretype: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ATEN_CPU", "OPENBLAS", "OMP_", "MKL_"))}
    env.update({"ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": str(threads),
                "OPENBLAS_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    return env


def _bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def _embeddings(cache: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for entry in sorted(cache.iterdir()):
        meta = json.loads((entry / "meta.json").read_text())
        out[entry.name] = np.concatenate([load_file(entry / s)["embeddings"] for s in meta["shards"]])
    return out


@pytest.fixture(scope="module")
def two_kernels(tmp_path_factory, synthetic_dir, tiny_clip_dir):
    import torch

    from bench.demo.tiny_clip import make_tiny_clip

    native = torch.backends.cpu.get_cpu_capability()  # e.g. AVX512, AVX2, DEFAULT, SVE256
    if native.upper() == "DEFAULT":
        pytest.skip("this CPU runs torch's default kernels only: there is no second kernel to compare")
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    tmp = tmp_path_factory.mktemp("kernels")
    clip2 = make_tiny_clip(tmp / "clip2", seed=1)
    procs = {}
    for tag, cap, threads, core in (("default", "default", 1, "Prescott" if x86 else None),
                                    ("native", native.lower(), 2, None)):
        cfg = _config(tmp, synthetic_dir, tiny_clip_dir, clip2, tag)
        # both at once: the wall time is the slower run's, not the sum
        procs[tag] = subprocess.Popen([sys.executable, "-m", "bench", "run", str(cfg), "--out", str(tmp / tag),
                                       "--no-progress"], cwd=ROOT, env=_env(cap, threads, core),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for tag, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert proc.returncode == 0, f"{tag}: {err[-3000:]}"
    return tmp, {tag: tmp / tag for tag in procs}, native


def test_the_runs_used_different_kernels(two_kernels):
    tmp, runs, native = two_kernels
    caps = {tag: json.loads((d / "results.json").read_text())["environment"]["device"]["cpu_capability"]
            for tag, d in runs.items()}
    assert caps == {"default": "DEFAULT", "native": native}
    a, b = _embeddings(tmp / "cache-default"), _embeddings(tmp / "cache-native")
    assert a.keys() == b.keys() and len(a) == 14  # 2 embedders x (6 image sets + the captions)
    differing = sum(not np.array_equal(a[k], b[k]) for k in a)
    assert differing > 0, "the two kernels gave bit-identical embeddings: this test would check nothing"
    # ... and the differences are float32 rounding, not a broken kernel
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-4


def test_compare_passes_both_ways_on_quality(two_kernels):
    _, runs, _ = two_kernels
    for res, base in (("native", "default"), ("default", "native")):
        p = _bench("compare", str(runs[res]), str(runs[base]), "--fail-on", "quality", "--show", "all")
        assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
        assert "regressed" not in p.stdout.split("\n", 1)[0], p.stdout[:2000]


def test_the_same_comparison_fails_on_three_items(two_kernels):
    from bench.regression import compare

    _, runs, _ = two_kernels
    base = json.loads((runs["default"] / "results.json").read_text())
    res = json.loads((runs["native"] / "results.json").read_text())
    m = next(m for m in res["metrics"] if m["embedder"] == "clip" and m["key"] == "probe/top1")
    n = m["num_items"]
    assert n == 24  # the synthetic imagefolder test split (make_synthetic(n_test=24))
    base_m = next(b for b in base["metrics"] if b["embedder"] == "clip" and b["key"] == "probe/top1")
    m["value"] = base_m["value"] - 300.0 / n  # three test images fewer right: beyond 2 items
    c = compare(res, base, fail_on=("quality",))
    v = next(v for v in c.verdicts if v.embedder == "clip" and v.key == "probe/top1")
    assert v.verdict == "regressed" and v.tolerance == f"±{200 / n:.3g} (2 of {n} items)"
    assert c.exit_code == 1
