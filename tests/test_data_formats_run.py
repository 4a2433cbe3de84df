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
        {
            "image": [{"bytes": p.read_bytes(), "path": None} for p in kar.image_paths],
            "captions": kar.captions,
        },
        features=datasets.Features(
            {"image": datasets.Image(), "captions": datasets.List(datasets.Value("string"))}
        ),
    )
    caps.save_to_disk(str(out / "cap_std"))
    (out / "cap_pq" / "data").mkdir(parents=True)
    caps.select(range(10)).to_parquet(
        str(out / "cap_pq" / "data" / "test-00000-of-00002.parquet"), batch_size=4
    )
    caps.select(range(10, len(caps))).to_parquet(str(out / "cap_pq" / "data" / "test-00001-of-00002.parquet"))
    _tar(
        out / "cap_wds" / "test" / "0.tar",
        [
            {"jpg": p.read_bytes(), "txt": "\n".join(c).encode()}
            for p, c in zip(kar.image_paths[:12], kar.captions[:12])
        ],
    )
    _tar(
        out / "cap_wds" / "test" / "1.tar",
        [
            {"jpg": p.read_bytes(), "txt": "\n".join(c).encode()}
            for p, c in zip(kar.image_paths[12:], kar.captions[12:])
        ],
    )
    # the negative control: the same shards with each image given its neighbour's captions
    shifted = kar.captions[1:] + kar.captions[:1]
    _tar(
        out / "cap_shifted" / "test" / "0.tar",
        [{"jpg": p.read_bytes(), "txt": "\n".join(c).encode()} for p, c in zip(kar.image_paths, shifted)],
    )
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    labs = {
        s: datasets.Dataset.from_dict(
            {
                "image": [{"bytes": p.read_bytes(), "path": None} for p in f.image_paths],
                "label": f.labels.tolist(),
            },
            features=feats,
        )
        for s, f in folders.items()
    }
    datasets.DatasetDict(labs).save_to_disk(str(out / "lab_std"))
    (out / "lab_pq" / "data").mkdir(parents=True)
    for s, d in labs.items():
        d.to_parquet(str(out / "lab_pq" / "data" / f"{s}-00000-of-00001.parquet"))
        _tar(
            out / "lab_wds" / s / "0.tar",
            [
                {"png": p.read_bytes(), "cls": str(int(y)).encode()}
                for p, y in zip(folders[s].image_paths, folders[s].labels)
            ],
        )
    (out / "lab_wds" / "classnames.txt").write_text("\n".join(names) + "\n")
    (out / "lab_wds" / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    (out / "lab_wds" / "dataset_type.txt").write_text("classification\n")
    return out, kar, synthetic_dir


def _datasets(out: Path, syn: Path) -> dict:
    d = {
        "cap_json": {
            "type": "coco_karpathy",
            "annotations": str(syn / "dataset_coco.json"),
            "images": str(syn / "images"),
            "split": "test",
        },
        "cap_std": {"type": "hf", "path": str(out / "cap_std"), "caption_column": "captions"},
        "cap_pq": {
            "type": "hf",
            "path": str(out / "cap_pq" / "data" / "test-*.parquet"),
            "caption_column": "captions",
        },
        "cap_wds": {"type": "webdataset", "path": str(out / "cap_wds" / "test" / "{0..1}.tar")},
    }
    for s in ("train", "test"):
        d[f"{s}_json"] = {"type": "imagefolder", "root": str(syn / "imagefolder" / s)}
        d[f"{s}_std"] = {"type": "hf", "path": str(out / "lab_std"), "split": s, "label_column": "label"}
        d[f"{s}_pq"] = {"type": "hf", "path": str(out / "lab_pq"), "split": s, "label_column": "label"}
        d[f"{s}_wds"] = {"type": "webdataset", "path": str(out / "lab_wds"), "split": s}
    return d


def _config(tmp: Path, name: str, datasets: dict, tasks: list, clip: Path, workers: int = 0) -> Path:
    cfg = {
        "name": name,
        "synthetic": True,
        "output_dir": str(tmp / "runs"),
        "cache_dir": str(tmp / "cache"),
        "runtime": {"device": "cpu", "batch_size": 8, "num_workers": workers, "seed": 0},
        "datasets": datasets,
        "embedders": [{"type": "clip", "name": "clip", "model": str(clip)}],
        "tasks": tasks,
    }
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
        tasks += [
            {"type": "retrieval", "dataset": f"cap_{f}"},
            {"type": "linear_probe", "train": f"train_{f}", "test": f"test_{f}"},
            # the webdataset ships its templates: unset takes them; the others are given the same
            {"type": "zeroshot", "dataset": f"test_{f}"}
            if f == "wds"
            else {"type": "zeroshot", "dataset": f"test_{f}", "templates": TEMPLATES},
        ]
    tasks.append({"type": "retrieval", "dataset": "cap_shifted"})
    entries = {**_datasets(out, syn), "cap_shifted": {"type": "webdataset", "path": str(out / "cap_shifted")}}
    path = _config(tmp_path, "formats", entries, tasks, tiny_clip_dir)
    r = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(path), "--no-progress", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    figures: dict[str, dict[str, float]] = {f: {} for f in (*FORMATS, "shifted")}
    for m in (m for m in res["metrics"] if m["task"] in ("retrieval", "linear_probe", "zeroshot")):
        fmt = m["dataset"].split("_")[-1]
        figures[fmt][f"{m['task']}:{m['key']}"] = m["value"]
    keys = set(figures["json"])
    assert {k.split(":")[0] for k in keys} == {"retrieval", "linear_probe", "zeroshot"}
    assert len(keys) >= 6 + 3 + 3 and all(v is not None for v in figures["json"].values())
    for f in FORMATS[1:]:
        assert figures[f] == figures["json"], f
    # misaligned captions move the figures: the comparison above can fail
    retrieval = {k: v for k, v in figures["json"].items() if k.startswith("retrieval:")}
    assert figures["shifted"].keys() == retrieval.keys() and figures["shifted"] != retrieval
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
    tasks = [
        {"type": "zeroshot", "dataset": "test_wds", "templates": "default"},
        {"type": "zeroshot", "dataset": "test_std"},
    ]
    path = _config(tmp_path, "tpl", ds, tasks, tiny_clip_dir)
    res = json.loads(
        (
            run_benchmark(load_config(path), path, progress=False, out_dir=tmp_path / "r", render=False)
            / "results.json"
        ).read_text()
    )
    for name in ("test_wds", "test_std"):  # hf ships no templates: unset means the built-in ones
        assert res["details"]["clip"][f"zeroshot/{name}"]["templates"] == list(DEFAULT_TEMPLATES)
    path = _config(
        tmp_path,
        "tpl2",
        ds,
        [{"type": "zeroshot", "dataset": "test_std", "templates": "dataset"}],
        tiny_clip_dir,
    )
    rc, err = _cli(capsys, "run", str(path), "--no-progress")
    assert (
        rc == 2
        and len(err) == 1
        and "tasks[0].templates: 'dataset', but dataset 'test_std' ships no" in err[0]
    )
    # webdataset kind auto may hold either: the loaded data is checked against the task
    path = _config(tmp_path, "kind", ds, [{"type": "zeroshot", "dataset": "cap_wds"}], tiny_clip_dir)
    rc, err = _cli(capsys, "run", str(path), "--no-progress")
    assert rc == 2 and err == [
        "bench: error: tasks[0].dataset: task 'zeroshot' needs labels, dataset 'cap_wds' holds captions"
    ]


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
    ds = {
        "pq": {"type": "hf", "path": str(tmp_path / "pq"), "caption_column": "captions"},
        "main": {"type": "hf", "path": "bench/caps", "caption_column": "captions"},
        "old": {"type": "hf", "path": "bench/caps", "revision": "a" * 40, "caption_column": "captions"},
    }
    path = _config(
        tmp_path, "fp", ds, [{"type": "retrieval", "dataset": n} for n in ds], tiny_clip_dir, workers=1
    )

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
    assert set(first["cache"]["clip"].values()) == {"miss"} and set(second["cache"]["clip"].values()) == {
        "hit"
    }
    # swap the images of rows 0 and 1: captions, names, sizes of the file unchanged; content is not
    f = tmp_path / "pq" / "data" / "test-00000-of-00002.parquet"
    t = pq.read_table(f)
    img = t.column("image").to_pylist()
    img[0], img[1] = img[1], img[0]
    pq.write_table(
        t.set_column(0, "image", pa.array(img, type=t.schema.field("image").type)), f, row_group_size=4
    )
    third = run("3")
    assert third["datasets"]["pq"]["fingerprint"] != fps["pq"]
    assert third["cache"]["clip"]["images/pq"] == "miss" and third["cache"]["clip"]["images/main"] == "hit"


def _one_error(capsys, tmp: Path, clip: Path, entry: dict, task: dict | None = None) -> str:
    path = _config(
        tmp, "bad", {"d": entry}, [task or {"type": "retrieval", "dataset": "d", "ks": [1, 2]}], clip
    )
    rc, err = _cli(capsys, "run", str(path), "--no-progress")
    assert rc == 2 and len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_bad_inputs_are_one_line(data, tiny_clip_dir, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, kar, _ = data
    clip = tiny_clip_dir
    err = _one_error(
        capsys, tmp_path, clip, {"type": "hf", "path": str(out / "cap_std"), "caption_column": "caption"}
    )
    assert (
        "has no column 'caption' (the caption column); did you mean 'captions'?" in err
        and "columns: image, captions" in err
    )
    err = _one_error(
        capsys,
        tmp_path,
        clip,
        {"type": "hf", "path": str(out / "lab_std"), "split": "tset", "label_column": "label"},
        {"type": "zeroshot", "dataset": "d"},
    )
    assert "has no split 'tset'; did you mean 'test'?" in err and "splits: test, train" in err
    pq.write_table(
        pa.table({"image": pa.array([], pa.binary()), "text": pa.array([], pa.string())}),
        tmp_path / "empty.parquet",
    )
    err = _one_error(
        capsys,
        tmp_path,
        clip,
        {
            "type": "hf",
            "path": str(tmp_path / "empty.parquet"),
            "image_column": "image",
            "caption_column": "text",
        },
    )
    assert "split 'test' is empty: it has no rows" in err
    # a tar with a missing caption: the error names the sample and shard; never a shift of captions
    good = [
        {"jpg": p.read_bytes(), "txt": c[0].encode()} for p, c in zip(kar.image_paths[:6], kar.captions[:6])
    ]
    _tar(tmp_path / "miss" / "test" / "0.tar", good[:3] + [{"jpg": good[3]["jpg"]}] + good[4:])
    err = _one_error(capsys, tmp_path, clip, {"type": "webdataset", "path": str(tmp_path / "miss")})
    assert "sample 's0000003' of shard" in err and "0.tar has no a caption (.txt)" in err
    # a shard with a corrupt image: one line naming the member, or a counted skip with on_bad_image: skip
    bad = good[:2] + [{"jpg": b"\xff\xd8 not a jpeg", "txt": b"broken"}] + good[3:]
    _tar(tmp_path / "corrupt" / "test" / "0.tar", bad)
    err = _one_error(capsys, tmp_path, clip, {"type": "webdataset", "path": str(tmp_path / "corrupt")})
    assert "cannot decode image member 's0000002.jpg' of shard" in err
    path = _config(
        tmp_path,
        "skip",
        {"d": {"type": "webdataset", "path": str(tmp_path / "corrupt"), "on_bad_image": "skip"}},
        [{"type": "retrieval", "dataset": "d", "ks": [1]}],
        clip,
    )
    rc, _ = _cli(capsys, "run", str(path), "--no-progress", "--out", str(tmp_path / "skip_run"))
    res = json.loads((tmp_path / "skip_run" / "results.json").read_text())
    assert rc == 0 and res["datasets"]["d"]["num_images"] == 5 and res["datasets"]["d"]["skipped_images"] == 1
    assert res["datasets"]["d"]["skipped_captions"] == 1 and res["datasets"]["d"]["num_captions"] == 5
    assert any("skipped 1 unreadable image and 1 caption" in n for n in res["notes"])


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"type": "hf", "path": "x", "caption_colum": "c"}, "datasets.d.caption_colum"),
        (
            {"type": "hf", "path": "x", "caption_column": "c", "label_column": "l"},
            "exactly one of caption_column",
        ),
        ({"type": "hf", "path": "x", "caption_column": "c", "max_images": "3"}, "max_images"),
        ({"type": "hf", "path": "x", "caption_column": "c", "on_bad_image": "drop"}, "on_bad_image"),
        ({"type": "hf", "caption_column": "c"}, "path"),
        ({"type": "webdataset", "split": "test"}, "set path"),
        ({"type": "webdataset", "path": "x", "max_images": 0}, "max_images"),
        (
            {"type": "webdataset", "path": "x", "kind": "labels"},
            "task 'retrieval' needs a dataset of type "
            "coco_captions|coco_karpathy|flickr30k_karpathy|hf|webdataset",
        ),
        ({"type": "hf", "path": "x", "label_column": "l"}, "'d' is hf with labels"),
    ],
)
def test_config_errors_of_the_new_types(entry, expected, tmp_path, capsys):
    path = _config(tmp_path, "cfg", {"d": entry}, [{"type": "retrieval", "dataset": "d"}], Path("m"))
    rc, err = _cli(capsys, "validate", "--no-files", str(path))
    assert rc == 2 and len(err) == 1 and expected in err[0], err


def test_decompression_bombs_in_shards_are_refused_or_skipped(data, tmp_path, monkeypatch):
    from PIL import Image

    from bench.data.images import load_image
    from bench.data.webdataset import load_webdataset
    from bench.errors import DataError

    out, kar, _ = data
    big = io.BytesIO()
    Image.new("RGB", (250, 200)).save(big, format="PNG")
    small = [
        {"png": p.read_bytes(), "txt": c[0].encode()} for p, c in zip(kar.image_paths[:3], kar.captions[:3])
    ]
    _tar(tmp_path / "w" / "test" / "0.tar", small[:1] + [{"png": big.getvalue(), "txt": b"big"}] + small[1:])
    w, h = Image.open(kar.image_paths[0]).size
    assert w * h <= 20000, "the synthetic images must stay under the test's limit"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20000)  # 50,000 px > 2 x 20,000: a "bomb"
    ds = load_webdataset("d", path=str(tmp_path / "w"))
    with pytest.raises(
        DataError,
        match=r"image member 's0000001.png' of shard .*0\.tar has 50000 pixels, over the "
        r"limit of 40000 pixels that guards against decompression bombs",
    ):
        load_image(ds.image_paths[1])
    kept = load_webdataset("d", path=str(tmp_path / "w"), on_bad_image="skip")
    assert len(kept) == 3 and kept.skipped == [str(ds.image_paths[1])]
    assert kept.captions == [[c[0]] for c in kar.captions[:3]]


def test_parquet_conversion_revision_with_a_config_folder(data, tmp_path, monkeypatch):
    """The hub's parquet conversion (revision refs/convert/parquet) lays files out as
    <config>/<split>/NNNN.parquet: `name` picks the config folder (configs/coco_hf.yaml uses it)."""
    from bench.data.hf import load_hf

    out, kar, _ = data
    repo = tmp_path / "hub" / "datasets--org--port"
    snap = repo / "snapshots" / ("d" * 40)
    (snap / "TEST" / "test").mkdir(parents=True)
    shutil.copyfile(
        out / "cap_pq" / "data" / "test-00000-of-00002.parquet", snap / "TEST" / "test" / "0000.parquet"
    )
    shutil.copyfile(
        out / "cap_pq" / "data" / "test-00001-of-00002.parquet", snap / "TEST" / "test" / "0001.parquet"
    )
    (repo / "refs" / "refs" / "convert").mkdir(parents=True)
    (repo / "refs" / "refs" / "convert" / "parquet").write_text("d" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    ds = load_hf(
        "c", path="org/port", revision="refs/convert/parquet", name="TEST", caption_column="captions"
    )
    assert ds.captions == kar.captions and '"revision":"' + "d" * 40 in ds.source
