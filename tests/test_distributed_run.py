"""`torchrun --nproc_per_node 2 -m bench run` on the CPU (gloo) against one process: the same quality
figures, one cache for both, a failed two-process run resumed from its cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _config(tmp: Path, data: Path, clip_dir: Path) -> Path:
    cfg = {
        "name": "dist", "synthetic": True, "output_dir": str(tmp / "runs"),
        "cache_dir": "${BENCH_TEST_CACHE}",
        # batch 4: shares are whole batches (7 images -> 4 + 3 padded to 4; captions in steps of 32)
        "runtime": {"device": "cpu", "batch_size": 4, "num_workers": 0, "seed": 0},
        "datasets": {
            "caps7": {"type": "coco_karpathy", "annotations": str(data / "dataset_coco.json"),
                      "images": str(data / "images"), "split": "test", "max_images": 7},  # odd size
            "fold_train": {"type": "imagefolder", "root": str(data / "imagefolder/train")},
            "fold_test": {"type": "imagefolder", "root": str(data / "imagefolder/test"), "max_images": 9},
            "one": {"type": "imagefolder", "root": str(data / "imagefolder/test"), "max_images": 1},  # < 2
        },
        "embedders": [{"type": "clip", "model": str(clip_dir)}],
        "tasks": [
            {"type": "retrieval", "dataset": "caps7", "ks": [1, 5]},
            {"type": "linear_probe", "train": "fold_train", "test": "fold_test"},
            {"type": "linear_probe", "train": "fold_train", "test": "one"},
            {"type": "zeroshot", "dataset": "fold_test", "templates": ["a {c}."]},
            {"type": "zeroshot", "dataset": "one", "templates": ["a {c}."]},
        ],
    }
    p = tmp / "dist.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _run(cmd: list[str], cache: Path, out: Path, *, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENCH_TEST_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*cmd, "--no-progress", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=300)
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _quality(run_dir: Path) -> tuple[dict, dict]:
    data = json.loads((run_dir / "results.json").read_text())
    return data, {(m["embedder"], m["dataset"], m["key"]): m["value"] for m in data["metrics"]
                  if m["kind"] == "quality"}


def _cache_files(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*.safetensors"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_dir, tiny_clip_dir):
    tmp = tmp_path_factory.mktemp("dist")
    data = tmp / "data"
    shutil.copytree(synthetic_dir, data)
    cfg = _config(tmp, data, tiny_clip_dir)
    one = [sys.executable, "-m", "bench", "run", str(cfg)]
    two = [*TORCHRUN, "-m", "bench", "run", str(cfg)]
    r1 = _run(one, tmp / "cache1", tmp / "one")
    # Two processes, failing midway: an undecodable image in fold_test, the third dataset embedded.
    victim = sorted((data / "imagefolder/test").rglob("*.jpg"))[0]
    good = victim.read_bytes()
    victim.write_bytes(b"not a jpeg at all")
    failed = _run(two, tmp / "cache2", tmp / "failed", ok=False)
    victim.write_bytes(good)
    os.utime(victim, (0, 0))
    r2 = _run(two, tmp / "cache2", tmp / "two")  # resumes from what the failed run cached
    r3 = _run(one, tmp / "cache2", tmp / "one_again")  # one process on the two-process cache
    return {"tmp": tmp, "r1": r1, "r2": r2, "failed": failed, "victim": victim.name}


def test_two_processes_give_identical_quality(runs):
    d1, q1 = _quality(runs["tmp"] / "one")
    d2, q2 = _quality(runs["tmp"] / "two")
    assert q1 and q1.keys() == q2.keys()
    assert {k for k in q1 if k[1] == "one"} and {k for k in q1 if k[1] == "caps7"}
    assert q2 == q1  # exactly, every retrieval, probe and zero-shot figure
    assert d2["datasets"]["caps7"]["num_images"] == 7 and d2["datasets"]["one"]["num_images"] == 1


def test_records_world_size_backend_and_memory(runs):
    d1, _ = _quality(runs["tmp"] / "one")
    d2, _ = _quality(runs["tmp"] / "two")
    assert "distributed" not in d1["environment"]
    assert d2["environment"]["distributed"]["world_size"] == 2
    assert d2["environment"]["distributed"]["backend"] == "gloo"
    rec = d2["details"]["clip"]["distributed"]
    assert [p["rank"] for p in rec["per_process_peak_memory_mib"]] == [0, 1]
    assert all(p["peak_rss_mib"] > 0 for p in rec["per_process_peak_memory_mib"])
    assert any(n.startswith("clip: embedded by 2 processes (gloo") for n in d2["notes"])
    assert "embedded by 2 processes" in (runs["tmp"] / "two" / "report.md").read_text()
    # Only the main process writes and prints.
    assert runs["r2"].stdout.count("results: ") == 1
    assert not (runs["tmp"] / "runs").exists()


def test_failed_two_process_run_resumes_from_cache(runs):
    failed = runs["failed"]
    assert failed.returncode != 0 and runs["victim"] in failed.stderr
    d2, _ = _quality(runs["tmp"] / "two")
    status = d2["cache"]["clip"]
    # Embedded before the failure (plan order: caps7 images, texts, fold_train), read back after it.
    assert status["images/caps7"] == "hit" and status["texts/caps7"] == "hit"
    assert status["images/fold_train"] == "hit"
    assert status["images/fold_test"] == "miss"


def test_one_process_reuses_two_process_cache(runs):
    d3, q3 = _quality(runs["tmp"] / "one_again")
    _, q1 = _quality(runs["tmp"] / "one")
    assert set(d3["cache"]["clip"].values()) == {"hit"}
    assert q3 == q1
    # Same files whoever wrote them: the cache layout does not depend on the number of processes.
    assert _cache_files(runs["tmp"] / "cache1") == _cache_files(runs["tmp"] / "cache2")
