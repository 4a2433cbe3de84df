"""Run folders (issue 10, items 4 and 6): never shared by two runs; a failed run leaves no empty folder,
and one that failed after an embedder finished keeps its results, marked complete: false with the error."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml


def _config(tmp: Path, synthetic_dir: Path, clip_dir: Path, embedders=("clip",)) -> Path:
    d = synthetic_dir
    cfg = {"name": "folders", "synthetic": True, "output_dir": str(tmp / "runs"),
           "cache_dir": str(tmp / "cache"),
           "runtime": {"device": "cpu", "batch_size": 8, "num_workers": 0},
           "datasets": {"caps": {"type": "coco_karpathy", "annotations": str(d / "dataset_coco.json"),
                                 "images": str(d / "images"), "split": "test"}},
           "embedders": [{"type": "clip", "model": str(clip_dir), "name": n} for n in embedders],
           "tasks": [{"type": "retrieval", "dataset": "caps", "ks": [1, 5]}]}
    p = tmp / "folders.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_allocation_is_exclusive_with_a_suffix(tmp_path):
    from bench.runner import allocate_run_dir

    got = [allocate_run_dir(tmp_path / "runs", "demo-20260101-120000") for _ in range(3)]
    assert [run_id for run_id, _ in got] == ["demo-20260101-120000", "demo-20260101-120000-2",
                                            "demo-20260101-120000-3"]
    assert all(p.is_dir() and p.name == run_id and p.parent == tmp_path / "runs" for run_id, p in got)


def test_two_runs_in_the_same_second_get_two_folders(tmp_path, synthetic_dir, tiny_clip_dir, monkeypatch):
    import bench.runner as runner
    from bench.config import load_config

    frozen = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return frozen

    monkeypatch.setattr(runner, "datetime", Clock)
    p = _config(tmp_path, synthetic_dir, tiny_clip_dir)
    first = runner.run_benchmark(load_config(p), p, progress=False, render=False)
    second = runner.run_benchmark(load_config(p), p, progress=False, render=False)
    assert first.name == "folders-20260102-030405" and second.name == "folders-20260102-030405-2"
    assert sorted(x.name for x in (tmp_path / "runs").iterdir()) == [first.name, second.name]
    r1, r2 = (json.loads((d / "results.json").read_text()) for d in (first, second))
    assert (r1["run_id"], r2["run_id"]) == (first.name, second.name)
    assert r1["cache"]["clip"] == {"images/caps": "miss", "texts/caps": "miss"}  # each its own run's record
    assert r2["cache"]["clip"] == {"images/caps": "hit", "texts/caps": "hit"}
    assert r1["complete"] is r2["complete"] is True


def _failing_build(monkeypatch, label: str):
    import bench.runner as runner

    real = runner.build_embedder

    def build(spec, ctx):
        if spec.label == label:
            raise RuntimeError(f"checkpoint of {label} exploded\nTraceback line that must not reach results")
        return real(spec, ctx)

    monkeypatch.setattr(runner, "build_embedder", build)


def test_failure_before_any_embedder_finished_leaves_no_folder(tmp_path, synthetic_dir, tiny_clip_dir,
                                                               monkeypatch):
    from bench.config import load_config
    from bench.runner import run_benchmark

    p = _config(tmp_path, synthetic_dir, tiny_clip_dir, embedders=("a", "b"))
    _failing_build(monkeypatch, "a")
    with pytest.raises(RuntimeError, match="a exploded"):
        run_benchmark(load_config(p), p, progress=False, render=False)
    assert (tmp_path / "runs").is_dir() and list((tmp_path / "runs").iterdir()) == []
    with pytest.raises(RuntimeError):  # an --out folder it made goes too ...
        run_benchmark(load_config(p), p, progress=False, render=False, out_dir=tmp_path / "mine")
    assert not (tmp_path / "mine").exists()
    (tmp_path / "theirs").mkdir()  # ... but never one that was there before
    with pytest.raises(RuntimeError):
        run_benchmark(load_config(p), p, progress=False, render=False, out_dir=tmp_path / "theirs")
    assert (tmp_path / "theirs").is_dir()


def test_failure_after_an_embedder_finished_keeps_it_marked_incomplete(tmp_path, synthetic_dir, tiny_clip_dir,
                                                                      monkeypatch):
    from bench.cli import main
    from bench.config import load_config
    from bench.runner import run_benchmark

    p = _config(tmp_path, synthetic_dir, tiny_clip_dir, embedders=("a", "b"))
    _failing_build(monkeypatch, "b")
    with pytest.raises(RuntimeError, match="b exploded"):
        run_benchmark(load_config(p), p, progress=False, render=False)
    (run,) = (tmp_path / "runs").iterdir()
    data = json.loads((run / "results.json").read_text())
    assert data["complete"] is False
    assert data["error"] == "RuntimeError: checkpoint of b exploded"
    assert set(data["embedders"]) == {"a"} and {m["embedder"] for m in data["metrics"]} == {"a"}
    assert {m["key"] for m in data["metrics"]} >= {"retrieval/i2t_recall@1", "retrieval/t2i_recall@5"}

    assert main(["report", str(run)]) == 0  # `bench report` says so, with the error
    md = (run / "report.md").read_text()
    assert "This run did not finish" in md and "Error: RuntimeError: checkpoint of b exploded" in md
    assert "Traceback line" not in md
    assert "checkpoint of b exploded" in (run / "report.html").read_text()


def test_a_failure_while_rendering_leaves_complete_results_complete(tmp_path, synthetic_dir, tiny_clip_dir,
                                                                   monkeypatch):
    import bench.report
    from bench.config import load_config
    from bench.runner import run_benchmark

    def broken(*a, **k):
        raise OSError("disk full while rendering")

    monkeypatch.setattr(bench.report, "render_run", broken)
    p = _config(tmp_path, synthetic_dir, tiny_clip_dir)
    with pytest.raises(OSError):
        run_benchmark(load_config(p), p, progress=False)
    (run,) = (tmp_path / "runs").iterdir()
    data = json.loads((run / "results.json").read_text())
    assert data["complete"] is True and "error" not in data
