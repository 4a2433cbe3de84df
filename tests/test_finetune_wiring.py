"""Fine-tuning wired into configs and runs: `finetune:` entries checked like the rest of the config,
`bench run` trains what is missing and reuses what matches, the fine-tuned model is one more embedder in
results.json and the report, leakage is refused before training (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench.errors import ConfigError

FT = {"name": "clip-ft", "base": "clip", "train": "caps_train", "val": "caps_val", "steps": 3,
      "batch_size": 8, "lr": 1e-3, "warmup_steps": 0, "schedule": "constant", "log_every": 1, "threads": 1}


def _raw(d: Path, clip: Path, tmp: Path, **ft) -> dict:
    return {
        "name": "ftwire", "synthetic": True, "output_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache"),
        "runtime": {"device": "cpu", "batch_size": 8, "num_workers": 0, "seed": 0},
        "datasets": {
            **{f"caps_{s}": {"type": "coco_karpathy", "annotations": str(d / "dataset_coco.json"),
                             "images": str(d / "images"), "split": s} for s in ("train", "val", "test")},
            "fold_train": {"type": "imagefolder", "root": str(d / "imagefolder/train")},
            "fold_test": {"type": "imagefolder", "root": str(d / "imagefolder/test")},
        },
        "embedders": [{"type": "clip", "name": "clip", "model": str(clip)}],
        "tasks": [{"type": "retrieval", "dataset": "caps_test", "ks": [1, 5, 10]}],
        "finetune": [{**FT, **ft}],
    }


def _write(tmp: Path, raw: dict, name: str = "ft.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(raw))
    return p


# ---- config ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, expected", [
    ({"stepz": 3}, "unknown key 'finetune[0].stepz'; did you mean 'steps'?"),
    ({"base": "clp"}, "finetune[0].base: unknown embedder 'clp'; did you mean 'clip'?"),
    ({"base": "img"}, "finetune[0].base: embedder 'img' is of type phi3v, which cannot be fine-tuned; "
                      "types that can: clip"),
    ({"train": "caps_trian"}, "finetune[0].train: unknown dataset 'caps_trian'; did you mean 'caps_train'?"),
    ({"val": ["caps_val", "fold_train"]}, "finetune[0].val: fine-tuning needs image-caption pairs"),
    ({"name": "clip"}, "finetune[0].name: 'clip' is already the name of an embedder"),
    ({"steps": "3"}, "finetune[0].steps: Input should be a valid integer (got '3')"),
    ({"processes": 3}, "batch_size (8) must be divisible by processes (3)"),
])
def test_config_errors_name_the_key(tmp_path, change, expected):
    from bench.config import parse_config

    raw = _raw(Path("d"), Path("m"), tmp_path, **change)
    raw["embedders"].append({"type": "phi3v", "name": "img", "model": "m2"})
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    msg = str(e.value)
    assert expected in msg and "\n" not in msg


def test_evaluated_datasets_leave_out_what_a_probe_fits_on(tmp_path):
    from bench.config import parse_config
    from bench.finetune.stage import evaluated_datasets

    raw = _raw(Path("d"), Path("m"), tmp_path)
    raw["tasks"] += [{"type": "linear_probe", "train": "fold_train", "test": "fold_test"},
                     {"type": "speed", "dataset": "caps_test"}]
    assert evaluated_datasets(parse_config(raw)) == ["caps_test", "fold_test"]


# ---- runs -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_dir, tiny_clip_dir):
    """Run 1 trains clip-ft; run 2 (same config) reuses it; run 3 (steps changed) retrains."""
    from bench.config import load_config
    from bench.runner import run_benchmark

    tmp = tmp_path_factory.mktemp("ftwire")
    out = {}
    for name, ft in (("first", {}), ("second", {}), ("changed", {"steps": 4})):
        path = _write(tmp, _raw(synthetic_dir, tiny_clip_dir, tmp, **ft), f"{name}.yaml")
        run = run_benchmark(load_config(path), path, progress=False, out_dir=tmp / name)
        out[name] = json.loads((run / "results.json").read_text()), run
    return tmp, out


def _quality(results: dict, label: str) -> dict:
    return {(m["dataset"], m["key"]): m["value"] for m in results["metrics"]
            if m["embedder"] == label and m["kind"] == "quality"}


def test_finetuned_model_is_one_more_embedder_with_its_record(runs):
    _, out = runs
    res, run = out["first"]
    assert list(res["embedders"]) == ["clip", "clip-ft"]
    rec = res["embedders"]["clip-ft"]["finetune"]
    assert "finetune" not in res["embedders"]["clip"]
    assert rec["base"] == "clip" and rec["reused"] is False
    assert [h["step"] for h in rec["history"]] == [1, 2, 3]
    assert all(h["lr"] == pytest.approx(1e-3) for h in rec["history"])  # constant schedule, no warm-up
    assert rec["samples_per_s"] > 0 and rec["wall_s"] > 0 and rec["peak_rss_mb"] > 0
    assert rec["trainable_params"] == rec["total_params"] > 0 and rec["num_train_images"] == 48
    assert Path(rec["checkpoint"]).name == f"clip-ft-{rec['fingerprint'][:12]}"
    assert (Path(rec["checkpoint"]) / "model.safetensors").is_file()
    base, ft = _quality(res, "clip"), _quality(res, "clip-ft")
    assert set(base) == set(ft) and ("caps_test", "retrieval/t2i_recall@10") in ft
    assert base != ft  # three steps at lr 1e-3 move the random model's ranking
    # typed on reading
    from bench.results import load_results

    typed = load_results(run).embedders["clip-ft"].finetune
    assert typed.history[-1].step == 3 and typed.reused is False


def test_report_shows_before_after_and_loss_curve(runs):
    _, out = runs
    res, run = out["first"]
    md = (run / "report.md").read_text()
    assert "## Fine-tuning: before → after" in md and "| metric | clip | clip-ft |" in md
    before, after = _quality(res, "clip"), _quality(res, "clip-ft")
    key = ("caps_test", "retrieval/t2i_recall@10")
    delta = after[key] - before[key]
    sign = "+" if delta > 0 else ("−" if delta < 0 else "±")
    row = (f"| clip-ft | clip | retrieval | caps_test | retrieval/t2i_recall@10 | {before[key]:.2f} | "
           f"{after[key]:.2f} | {sign}{abs(delta):.2f} pp")
    assert row in md
    assert "fine-tuned models were trained on synthetic shapes" in md  # the warning box changed
    html = (run / "report.html").read_text()
    assert "Fine-tuning: before → after" in html and "<figcaption>Fine-tuning loss</figcaption>" in html


def test_second_run_reuses_the_checkpoint(runs):
    _, out = runs
    first = out["first"][0]["embedders"]["clip-ft"]["finetune"]
    second = out["second"][0]["embedders"]["clip-ft"]["finetune"]
    assert second["reused"] is True and second["checkpoint"] == first["checkpoint"]
    # The record is the one written by the training run (not retrained: same wall time, same history).
    assert second["wall_s"] == first["wall_s"] and second["history"] == first["history"]
    assert second["stage_s"] < first["stage_s"]
    assert _quality(out["second"][0], "clip-ft") == _quality(out["first"][0], "clip-ft")


def test_fingerprint_change_retrains_into_a_new_folder(runs):
    _, out = runs
    first = out["first"][0]["embedders"]["clip-ft"]["finetune"]
    changed = out["changed"][0]["embedders"]["clip-ft"]["finetune"]
    assert changed["reused"] is False and changed["fingerprint"] != first["fingerprint"]
    assert changed["checkpoint"] != first["checkpoint"] and Path(first["checkpoint"]).is_dir()
    assert [h["step"] for h in changed["history"]] == [1, 2, 3, 4]


def test_leakage_refused_before_training_exit_2(tmp_path, synthetic_dir, tiny_clip_dir, capsys):
    from bench.cli import main

    raw = _raw(synthetic_dir, tiny_clip_dir, tmp_path, train=["caps_train", "caps_test"])
    path = _write(tmp_path, raw)
    for argv in (["run", str(path), "--no-progress"], ["finetune", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        # the 24 test images are evaluated by the retrieval task
        assert "finetune 'clip-ft': 24 training image file(s) are also evaluated by the benchmark" in err
    root = tmp_path / "cache" / "finetune"
    assert not root.exists() or not any(root.iterdir())  # nothing trained
    assert not (tmp_path / "runs").exists()


def test_finetune_command_only_and_reuse(runs, synthetic_dir, tiny_clip_dir, capsys):
    from bench.cli import main

    tmp, out = runs
    path = tmp / "first.yaml"
    assert main(["finetune", str(path), "--only", "clip-fx"]) == 2
    assert "unknown finetune entry 'clip-fx'; did you mean 'clip-ft'?" in capsys.readouterr().err
    assert main(["finetune", str(path), "--only", "clip-ft", "--no-progress"]) == 0
    ckpt = out["first"][0]["embedders"]["clip-ft"]["finetune"]["checkpoint"]
    assert "clip-ft: reused (training fingerprint matches) -> " in capsys.readouterr().out
    assert Path(ckpt).is_dir()


def test_a_finetuned_model_is_recorded_by_its_recipe_not_its_weight_bits():
    """Weights trained on another CPU differ in the last bits (another model_hash); results.json
    identifies a fine-tuned model by its training fingerprint so bench compare still checks it."""
    from types import SimpleNamespace

    from bench.runner import EmbedderRun

    fp = EmbedderRun.record_fingerprint.fget
    a = {"kind": "clip", "model_hash": "aaa", "dtype": "float32"}
    b = {**a, "model_hash": "bbb"}
    assert fp(SimpleNamespace(fingerprint=a, recipe="r1")) == fp(SimpleNamespace(fingerprint=b, recipe="r1"))
    assert fp(SimpleNamespace(fingerprint=a, recipe="r1")) != fp(SimpleNamespace(fingerprint=a, recipe="r2"))
    assert fp(SimpleNamespace(fingerprint=a, recipe=None)) != fp(SimpleNamespace(fingerprint=b, recipe=None))
    # a runtime setting still separates them (bfloat16 vs float32 of the same recipe)
    c = {**a, "dtype": "bfloat16"}
    assert fp(SimpleNamespace(fingerprint=a, recipe="r1")) != fp(SimpleNamespace(fingerprint=c, recipe="r1"))
