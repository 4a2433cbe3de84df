"""The typed results model: written from records, read back into the same types, schema version checked,
hand-edited input refused in one line (never a traceback in a report)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from results_factory import make_results

from bench.cli import main
from bench.errors import BenchError
from bench.io import write_json_atomic
from bench.results import (SCHEMA_VERSION, DatasetSummary, EmbedderRecord, Environment, Metric, RunResult,
                           load_results)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "reports" / "baselines" / "demo.json"


def _result() -> RunResult:
    """A run built in memory as the runner and the tasks build it (keywords, dicts, numpy numbers)."""
    r = RunResult(benchmark="demo", run_id="demo-1", created="2026-12-01T10:00:00+00:00",
                  config_path="configs/demo.yaml", config={"name": "demo", "tasks": [{"type": "speed"}]},
                  environment={"python": "3.11", "git": {"commit": "c" * 40, "dirty": True},
                               "device": {"type": "cpu", "cpu": "X", "cpu_count": 2, "torch_threads": 2,
                                          "cpu_capability": "AVX2", "cuda": None, "name": "X"},
                               "hardware_fingerprint": "h" * 16},
                  synthetic=True)
    r.datasets = {"caps": {"type": "coco_karpathy", "fingerprint": "d" * 16, "num_images": 10, "num_captions": 50}}
    r.embedders["clip"] = EmbedderRecord(type="clip", fingerprint="e" * 16, fingerprint_detail={"k": [1, 2]},
                                         describe={"model": "m"}, modalities=["image", "text"], random_weights=True)
    r.metrics.append(Metric(embedder="clip", task="retrieval", dataset="caps", key="retrieval/i2t_recall@1",
                            value=np.float32(12.5), unit="%", higher_is_better=True, kind="quality",
                            protocol="p", na_reason=None, num_items=np.int64(10)))
    r.metrics.append(Metric("clip", "speed", "caps", "speed/images_per_s", None, "img/s", True, "speed", "",
                            "no speed"))
    r.details["clip"] = {"retrieval/caps": {"ks": [1, 5], "i2t": [12.5, 40.0], "t2i": [10.0, None]}}
    r.timings = {"clip": {"load": 0.5}, "_total_s": 3.25}
    r.cache = {"clip": {"images/caps": "miss"}}
    r.notes.append("a note")
    return r


def test_round_trip_write_read_equal(tmp_path):
    r = _result()
    assert isinstance(r.environment, Environment) and isinstance(r.datasets["caps"], DatasetSummary)
    path = write_json_atomic(tmp_path / "results.json", r.to_json())
    back = load_results(tmp_path)
    assert back.path == str(path)
    assert back.metrics == r.metrics and back.metrics[0].value == 12.5 and back.metrics[0].num_items == 10
    assert back.to_json() == r.to_json() == json.loads(path.read_text())
    assert back.environment.git.commit == "c" * 40 and back.environment.device.cuda is None
    assert back.environment.device.model_extra == {"cpu_capability": "AVX2"}  # unknown keys kept
    assert back.datasets["caps"].num_captions == 50 and back.datasets["caps"].num_classes is None
    assert "num_classes" not in back.to_json()["datasets"]["caps"]  # written with the keys it was given
    assert back.curves()["caps"]["clip"].t2i == [10.0, None]
    assert back.complete is True and "error" not in back.to_json()


def test_unfinished_run_round_trip(tmp_path):
    data = {**_result().to_json(), "complete": False, "error": "DataError: x"}
    write_json_atomic(tmp_path / "results.json", data)
    back = load_results(tmp_path)
    assert back.complete is False and back.error == "DataError: x" and back.to_json() == data
    with pytest.raises(BenchError, match="the run did not finish"):
        load_results(tmp_path, finished=True)


def test_committed_demo_baseline_loads_and_writes_back_the_same_bytes(tmp_path):
    r = load_results(DEMO, finished=True)
    assert r.benchmark == "demo" and len(r.metrics) > 50 and all(isinstance(m, Metric) for m in r.metrics)
    assert r.environment.hardware_fingerprint == json.loads(DEMO.read_text())["environment"]["hardware_fingerprint"]
    assert set(r.embedders) == {"clip", "clip-ft", "phi3v", "phi3v-lm"}
    assert r.embedders["phi3v"].modalities == ["image"]
    ft = r.embedders["clip-ft"].finetune  # the demo's fine-tuned CLIP: its training record, typed
    assert ft is not None and ft.base == "clip" and ft.history[-1].step == 150
    assert r.embedders["clip"].finetune is None
    assert r.to_json() == json.loads(DEMO.read_text())
    assert write_json_atomic(tmp_path / "b.json", r.to_json()).read_bytes() == DEMO.read_bytes()


def test_keyword_names_of_the_records_are_kept():
    names = ["embedder", "task", "dataset", "key", "value", "unit", "higher_is_better", "kind", "protocol",
             "na_reason", "num_items", "ci_low", "ci_high", "chance"]
    import dataclasses

    assert [f.name for f in dataclasses.fields(Metric)] == names
    for name in ("benchmark", "run_id", "created", "config_path", "config", "environment", "datasets", "embedders",
                 "metrics", "details", "timings", "cache", "notes", "synthetic"):
        assert name in RunResult.model_fields


@pytest.mark.parametrize("version, words", [
    (SCHEMA_VERSION + 1, f"schema_version {SCHEMA_VERSION + 1}; this bench reads up to {SCHEMA_VERSION}: "
                         "upgrade bench"),
    (0, f"schema_version must be an integer from 1 to {SCHEMA_VERSION}, got 0"),
])
def test_unknown_schema_version_is_one_line_naming_the_file(tmp_path, capsys, version, words):
    (tmp_path / "results.json").write_text(json.dumps({**make_results(), "schema_version": version}))
    with pytest.raises(BenchError) as e:
        load_results(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'results.json'} is not a valid bench results file: ")
    assert words in str(e.value)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and words in err[0]


def _edit(path, value):
    def apply(d):
        target = d
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value
        return d
    return apply


HAND_EDITED = {
    "git commit a number": (_edit(("environment", "git", "commit"), 5), "environment.git.commit"),
    "images a word": (_edit(("datasets", "caps", "num_images"), "many"), "datasets.caps.num_images"),
    "total time a word": (_edit(("timings", "_total_s"), "slow"), "timings._total_s"),
    "modalities a string": (_edit(("embedders", "clip", "modalities"), "image"), "embedders.clip.modalities"),
    "curve ks a string": (_edit(("details", "clip", "retrieval/caps", "ks"), "1,5,10"),
                          "details['clip']['retrieval/caps']: ks"),
    "curve too short": (_edit(("details", "clip", "retrieval/caps", "i2t"), [1.0]),
                        "details['clip']['retrieval/caps']: lists of different lengths (ks 3, i2t 1, t2i 3)"),
    "per-class names a number": (_edit(("details", "phi3v", "linear_probe/labels", "class_names"), 3),
                                 "details['phi3v']['linear_probe/labels']"),
    "detail entry a list": (_edit(("details", "clip", "retrieval/caps"), [1, 2]), "details.clip.retrieval/caps"),
}


@pytest.mark.parametrize("name", list(HAND_EDITED))
def test_hand_edited_input_is_one_line_never_a_traceback(tmp_path, capsys, name):
    change, words = HAND_EDITED[name]
    (tmp_path / "results.json").write_text(json.dumps(change(copy.deepcopy(make_results()))))
    with pytest.raises(BenchError) as e:
        load_results(tmp_path)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(str(tmp_path / "results.json"))
    assert main(["report", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.splitlines()) == 1 and "Traceback" not in captured.err


def test_null_facts_and_invalid_num_items_read_as_unknown(tmp_path):
    d = make_results()
    d["metrics"][0].update(unit=None, protocol=None, num_items=True)
    d["metrics"][1]["num_items"] = "100"
    (tmp_path / "results.json").write_text(json.dumps(d))
    r = load_results(tmp_path)
    assert (r.metrics[0].unit, r.metrics[0].protocol, r.metrics[0].num_items) == ("", "", None)
    assert r.metrics[1].num_items is None


def test_a_newer_writers_extra_keys_survive_a_baseline_accept(tmp_path):
    from bench.regression import accept_baseline

    d = {**make_results(), "future_section": {"x": 1}}
    d["datasets"]["caps"]["resolution"] = [32, 32]
    (tmp_path / "r.json").write_text(json.dumps(d))
    accept_baseline(tmp_path / "r.json", tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text()) == d
