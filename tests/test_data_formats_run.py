"""`type: hf` and `type: webdataset` through `bench run`: the same images, captions and labels as a
Karpathy JSON / image folder, as a save_to_disk dataset, as parquet and as webdataset shards give the
same retrieval, probe and zero-shot figures; bad inputs are one line (exit 2) or a counted skip; the
dataset fingerprint (hence the embedding cache key) follows content and revision."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ["a photo of a {c}.", "a drawing of a {c}."]
FORMATS = ("json", "std", "pq", "wds")


def _tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for i, parts in enumerate(samples):
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"s{i:07d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_dir):
    """Captions (the Karpathy test split) and labels (imagefolder train/test), in every format."""
    import datasets

    from bench.data.coco import load_karpathy
    from bench.data.imagefolder import load_imagefolder

    out = tmp_path_factory.mktemp("formats_run")
    kar = load_karpathy("k", synthetic_dir / "dataset_coco.json", synthetic_dir / "images", split="test")
    folders = {s: load_imagefolder(s, synthetic_dir / "imagefolder" / s) for s in ("train", "test")}
    names = folders["test"].class_names
    assert folders["train"].class_names == names
    caps = datasets.Dataset.from_dict(
        {"image": [{"bytes": p.read_bytes(), "path": None} for p in kar.image_paths], "captions": kar.captions},
        features=datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string"))}))
    caps.save_to_disk(str(out / "cap_std"))
    (out / "cap_pq" / "data").mkdir(parents=True)
    caps.select(range(10)).to_parquet(str(out / "cap_pq" / "data" / "test-00000-of-00002.parquet"), batch_size=4)
    caps.select(range(10, len(caps))).to_parquet(str(out / "cap_pq" / "data" / "test-00001-of-00002.parquet"))
    _tar(out / "cap_wds" / "test" / "0.tar", [{"jpg": p.read_bytes(), "txt": "\n".join(c).encode()}
                                               for p, c in zip(kar.image_paths[:12], kar.captions[:12])])
    _tar(out / "cap_wds" / "test" / "1.tar", [{"jpg": p.read_bytes(), "txt": "\n".join(c).encode()}
                                               for p, c in zip(kar.image_paths[12:], kar.captions[12:])])
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    labs = {s: datasets.Dataset.from_dict({"image": [{"bytes": p.read_bytes(), "path": None} for p in f.image_paths],
                                           "label": f.labels.tolist()}, features=feats) for s, f in folders.items()}
    datasets.DatasetDict(labs).save_to_disk(str(out / "lab_std"))
    (out / "lab_pq" / "data").mkdir(parents=True)
    for s, d in labs.items():
        d.to_parquet(str(out / "lab_pq" / "data" / f"{s}-00000-of-00001.parquet"))
        _tar(out / "lab_wds" / s / "0.tar", [{"png": p.read_bytes(), "cls": str(int(y)).encode()}
                                             for p, y in zip(folders[s].image_paths, folders[s].labels)])
    (out / "lab_wds" / "classnames.txt").write_text("\n".join(names) + "\n")
    (out / "lab_wds" / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    (out / "lab_wds" / "dataset_type.txt").write_text("classification\n")
    return out, kar, synthetic_dir


def _datasets(out: Path, syn: Path) -> dict:
    d = {"cap_json": {"type": "coco_karpathy", "annotations": str(syn / "dataset_coco.json"),
                      "images": str(syn / "images"), "split": "test"},
         "cap_std": {"type": "hf", "path": str(out / "cap_std"), "caption_column": "captions"},
         "cap_pq": {"type": "hf", "path": str(out / "cap_pq" / "data" / "test-*.parquet"),
                    "caption_column": "captions"},
         "cap_wds": {"type": "webdataset", "path": str(out / "cap_wds" / "test" / "{0..1}.tar")}}
    for s in ("train", "test"):
        d[f"{s}_json"] = {"type": "imagefolder", "root": str(syn / "imagefolder" / s)}
        d[f"{s}_std"] = {"type": "hf", "path": str(out / "lab_std"), "split": s, "label_column": "label"}
        d[f"{s}_pq"] = {"type": "hf", "path": str(out / "lab_pq"), "split": s, "label_column": "label"}
        d[f"{s}_wds"] = {"type": "webdataset", "path": str(out / "lab_wds"), "split": s}
    return d


def _config(tmp: Path, name: str, datasets: dict, tasks: list, clip: Path) -> Path:
    cfg = {"name": name, "synthetic": True, "output_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache"),
           "runtime": {"device": "cpu", "batch_size": 8, "num_workers": 1, "seed": 0},
           "datasets": datasets, "embedders": [{"type": "clip", "name": "clip", "model": str(clip)}],
           "tasks": tasks}
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _cli(capsys, *args: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main(list(args))
    return rc, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith("[")]


def test_every_format_gives_the_same_figures_through_bench_run(data, tiny_clip_dir, tmp_path):
    out, kar, syn = data
    tasks = []
    for f in FORMATS:
        tasks += [{"type": "retrieval", "dataset": f"cap_{f}"},
                  {"type": "linear_probe", "train": f"train_{f}", "test": f"test_{f}"},
                  # the webdataset ships its templates: unset takes them; the others are given the same
                  {"type": "zeroshot", "dataset": f"test_{f}"} if f == "wds" else
                  {"type": "zeroshot", "dataset": f"test_{f}", "templates": TEMPLATES}]
    path = _config(tmp_path, "formats", _datasets(out, syn), tasks, tiny_clip_dir)
    r = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--no-progress", "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    figures: dict[str, dict[str, float]] = {f: {} for f in FORMATS}
    for m in (m for m in res["metrics"] if m["task"] in ("retrieval", "linear_probe", "zeroshot")):
        fmt = m["dataset"].split("_")[-1]
        figures[fmt][f"{m['task']}:{m['key']}"] = m["value"]
    keys = set(figures["json"])
    assert {k.split(":")[0] for k in keys} == {"retrieval", "linear_probe", "zeroshot"}
    assert len(keys) >= 6 + 3 + 3 and all(v is not None for v in figures["json"].values())
    for f in FORMATS[1:]:
        assert figures[f] == figures["json"], f
    for f in FORMATS:
        ds = res["datasets"]
        assert ds[f"cap_{f}"]["num_images"] == len(kar) and ds[f"cap_{f}"]["num_captions"] == kar.num_captions
        assert ds[f"test_{f}"]["num_classes"] == ds["test_json"]["num_classes"]
    zs = res["details"]["clip"]["zeroshot/test_wds"]
    assert zs["templates"] == TEMPLATES and zs["templates_from"] == "dataset"
    assert res["details"]["clip"]["zeroshot/test_pq"]["templates_from"] == "task"


def test_template_choice_and_the_data_decides_what_an_entry_provides(data, tiny_clip_dir, tmp_path, capsys):
    from bench.config import load_config
    from bench.metrics.zeroshot import DEFAULT_TEMPLATES
    from bench.runner import run_benchmark

    out, _, syn = data
    ds = {k: v for k, v in _datasets(out, syn).items() if k in ("test_wds", "test_std", "cap_wds")}
    tasks = [{"type": "zeroshot", "dataset": "test_wds", "templates": "default"},
             {"type": "zeroshot", "dataset": "test_std"}]
    path = _config(tmp_path, "tpl", ds, tasks, tiny_clip_dir)
    res = json.loads((run_benchmark(load_config(path), path, progress=False, out_dir=tmp_path / "r", render=False)
                      / "results.json").read_text())
    for name in ("test_wds", "test_std"):  # hf ships no templates: unset means the built-in ones
        assert res["details"]["clip"][f"zeroshot/{name}"]["templates"] == list(DEFAULT_TEMPLATES)
    path = _config(tmp_path, "tpl2", ds, [{"type": "zeroshot", "dataset": "test_std", "templates": "dataset"}],
                   tiny_clip_dir)
    rc, err = _cli(capsys, "run", str(path), "--no-progress")
    assert rc == 2 and len(err) == 1 and "tasks[0].templates: 'dataset', but dataset 'test_std' ships no" in err[0]
    # webdataset kind auto may hold either: the loaded data is checked against the task
    path = _config(tmp_path, "kind", ds, [{"type": "zeroshot", "dataset": "cap_wds"}], tiny_clip_dir)
    rc, err = _cli(capsys, "run", str(path), "--no-progress")
    assert rc == 2 and err == ["error: tasks[0].dataset: task 'zeroshot' needs labels, dataset 'cap_wds' holds "
                               "captions"] or (rc == 2 and "needs labels, dataset 'cap_wds' holds captions" in err[-1])


def test_changed_parquet_or_revision_changes_the_cache_key(data, tiny_clip_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.config import load_config
    from bench.runner import run_benchmark

    out, _, _ = data
    shutil.copytree(out / "cap_pq", tmp_path / "pq")
    hub = tmp_path / "hub" / "datasets--bench--caps"
    for rev in ("a" * 40, "b" * 40):
        shutil.copytree(out / "cap_pq", hub / "snapshots" / rev)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("b" * 40)
    ds = {"pq": {"type": "hf", "path": str(tmp_path / "pq"), "caption_column": "captions"},
          "main": {"type": "hf", "path": "bench/caps", "caption_column": "captions"},
          "old": {"type": "hf", "path": "bench/caps", "revision": "a" * 40, "caption_column": "captions"}}
    path = _config(tmp_path, "fp", ds, [{"type": "retrieval", "dataset": n} for n in ds], tiny_clip_dir)

    def run(tag: str) -> dict:
        import os

        os.environ["HF_HUB_CACHE"] = str(tmp_path / "hub")
        try:
            d = run_benchmark(load_config(path), path, progress=False, out_dir=tmp_path / tag, render=False)
        finally:
            del os.environ["HF_HUB_CACHE"]
        return json.loads((d / "results.json").read_text())

    first, second = run("1"), run("2")
    fps = {n: first["datasets"][n]["fingerprint"] for n in ds}
    assert fps["main"] != fps["old"] and len(set(fps.values())) == 3  # revision and location-free content
    assert set(first["cache"]["clip"].values()) == {"miss"} and set(second["cache"]["clip"].values()) == {"hit"}
    # swap the images of rows 0 and 1: captions, names, sizes of the file unchanged; content is not
    f = tmp_path / "pq" / "data" / "test-00000-of-00002.parquet"
    t = pq.read_table(f)
    img = t.column("image").to_pylist()
    img[0], img[1] = img[1], img[0]
    pq.write_table(t.set_column(0, "image", pa.array(img, type=t.schema.field("image").type)), f,
                   row_group_size=4)
    third = run("3")
    assert third["datasets"]["pq"]["fingerprint"] != fps["pq"]
    assert third["cache"]["clip"]["images/pq"] == "miss" and third["cache"]["clip"]["images/main"] == "hit"
