"""`type: hf` and `type: webdataset`: the same synthetic images and captions/labels written as a Karpathy
JSON / imagefolder, a save_to_disk dataset, parquet (bytes and paths), a cached hub dataset and CLIP_benchmark
webdataset shards must give the same records, the same decoded pixels, the same embeddings and the same
recall@k / zero-shot figures; bad inputs give one clear DataError."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bench.data.coco import load_karpathy
from bench.data.hf import HFParams, load_hf
from bench.data.images import load_image
from bench.data.imagefolder import load_imagefolder
from bench.data.refs import ImageRef, TableRow, TarMember
from bench.data.webdataset import WebDatasetParams, expand_braces, load_webdataset
from bench.errors import DataError

TEMPLATES = ["a photo of a {c}.", "a drawing of a {c}."]


# ---- writers: one source of truth (the synthetic Karpathy split / imagefolder) in every format ----


@pytest.fixture(scope="module")
def kar(synthetic_dir):
    return load_karpathy("kar", synthetic_dir / "dataset_coco.json", synthetic_dir / "images", split="test")


@pytest.fixture(scope="module")
def folder(synthetic_dir):
    return load_imagefolder("folder", synthetic_dir / "imagefolder" / "test")


def _features(label_names=None):
    import datasets

    text_list = datasets.List(datasets.Value("string")) if hasattr(datasets, "List") else \
        datasets.Sequence(datasets.Value("string"))
    feats = {"image": datasets.Image(), "captions": text_list}
    if label_names:
        feats = {"image": datasets.Image(), "label": datasets.ClassLabel(names=label_names)}
    return datasets.Features(feats)


def _hf_captions(kar):
    import datasets

    rows = {"image": [{"bytes": p.read_bytes(), "path": None} for p in kar.image_paths], "captions": kar.captions}
    return datasets.Dataset.from_dict(rows, features=_features())


def _hf_labels(folder):
    import datasets

    rows = {"image": [{"bytes": p.read_bytes(), "path": None} for p in folder.image_paths],
            "label": folder.labels.tolist()}
    return datasets.Dataset.from_dict(rows, features=_features(folder.class_names))


@pytest.fixture(scope="module")
def formats(tmp_path_factory, kar, folder, synthetic_dir):
    """Every format on disk; returns {name: path or folder}."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path_factory.mktemp("formats")
    ds = _hf_captions(kar)
    datasets.DatasetDict({"test": ds, "train": ds.select(range(3))}).save_to_disk(str(out / "std"))
    _hf_labels(folder).save_to_disk(str(out / "std_labels"))
    # parquet as on the hub: data/<split>-XXXXX-of-NNNNN.parquet, two files, small row groups
    (out / "pq" / "data").mkdir(parents=True)
    n = len(ds)
    ds.select(range(0, 13)).to_parquet(str(out / "pq" / "data" / "test-00000-of-00002.parquet"), batch_size=5)
    ds.select(range(13, n)).to_parquet(str(out / "pq" / "data" / "test-00001-of-00002.parquet"), batch_size=5)
    ds.select(range(2)).to_parquet(str(out / "pq" / "data" / "train-00000-of-00001.parquet"))
    # parquet written by hand: relative image paths, one caption string per row joined... as a list column
    images = synthetic_dir / "images"
    table = pa.table({"file": [p.relative_to(images).as_posix() for p in kar.image_paths],
                      "captions": kar.captions, "split": ["test"] * n})
    extra = pa.table({"file": ["nowhere.jpg"], "captions": [["x"]], "split": ["train"]})
    pq.write_table(pa.concat_tables([extra, table]), out / "paths.parquet", row_group_size=7)
    # raw binary column + string labels
    pq.write_table(pa.table({"png": [p.read_bytes() for p in folder.image_paths],
                             "kind": [folder.class_names[i] for i in folder.labels]}), out / "labels.parquet")
    # webdataset, CLIP_benchmark layout
    _write_wds(out / "wds_cap", [(p.read_bytes(), "\n".join(c)) for p, c in zip(kar.image_paths, kar.captions)],
               "txt", "retrieval")
    _write_wds(out / "wds_cls", [(p.read_bytes(), str(int(y))) for p, y in zip(folder.image_paths, folder.labels)],
               "cls", "classification", folder.class_names)
    return out


def _write_wds(root: Path, samples, target_ext: str, dtype: str, class_names=None, per_shard: int = 10,
               drop: dict | None = None, corrupt: int | None = None):
    (root / "test").mkdir(parents=True)
    shards = [samples[i:i + per_shard] for i in range(0, len(samples), per_shard)]
    idx = 0
    for s, chunk in enumerate(shards):
        with tarfile.open(root / "test" / f"{s}.tar", "w") as tf:
            for img, target in chunk:
                key = f"s{idx:07d}"
                parts = {"jpg": b"\xff\xd8 not a jpeg" if corrupt == idx else img,
                         target_ext: target.encode()}
                for ext in (drop or {}).get(idx, ()):
                    parts.pop(ext)
                for ext, data in parts.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                idx += 1
    (root / "test" / "nshards.txt").write_text(f"{len(shards)}\n")
    (root / "dataset_type.txt").write_text(dtype + "\n")
    if class_names:
        (root / "classnames.txt").write_text("\n".join(class_names) + "\n")
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, formats):
    """A hand-made HF hub cache holding the parquet folder as dataset 'bench/synthetic', two revisions."""
    import hashlib

    repo = tmp_path / "hub" / "datasets--bench--synthetic"
    shas = ["a" * 40, "b" * 40]
    (repo / "blobs").mkdir(parents=True)
    for sha in shas:  # the real layout: snapshot files are links to blobs named by their sha256
        for f in sorted((formats / "pq").rglob("*.parquet")):
            blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            shutil.copyfile(f, blob)
            link = repo / "snapshots" / sha / f.relative_to(formats / "pq")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(shas[1])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return shas


def _caption_variants(formats, synthetic_dir):
    return {
        "save_to_disk": load_hf("d", HFParams(path=str(formats / "std"), caption_column="captions")),
        "parquet_folder": load_hf("d", HFParams(path=str(formats / "pq"), caption_column="captions")),
        "parquet_glob": load_hf("d", HFParams(path=str(formats / "pq" / "data" / "test-*.parquet"),
                                              caption_column="captions")),
        "parquet_paths": load_hf("d", HFParams(path=str(formats / "paths.parquet"), image_column="file",
                                               caption_column="captions", where={"split": "test"},
                                               image_root=str(synthetic_dir / "images"))),
        "webdataset": load_webdataset("d", WebDatasetParams(path=str(formats / "wds_cap"))),
        "webdataset_braces": load_webdataset("d", WebDatasetParams(shards=str(formats / "wds_cap" / "test" /
                                                                              "{0..2}.tar"))),
    }


def test_every_format_gives_the_same_captions_and_pixels(formats, kar, synthetic_dir):
    variants = _caption_variants(formats, synthetic_dir)
    assert len(kar) == 24
    for name, ds in variants.items():
        assert ds.captions == kar.captions, name
        assert len(ds.image_paths) == len(kar.image_paths), name
        for ref, path in zip(ds.image_paths, kar.image_paths):
            assert np.array_equal(np.asarray(load_image(ref)), np.asarray(load_image(path))), (name, str(ref))
    assert all(isinstance(p, TableRow) for p in variants["parquet_folder"].image_paths)
    assert all(isinstance(p, TarMember) for p in variants["webdataset"].image_paths)
    assert variants["parquet_paths"].image_paths == kar.image_paths  # stored paths come back as plain Paths
    # the two parquet files were read in order, rows 0..12 then 0..10
    rows = [(Path(r.file).name[:11], r.row) for r in variants["parquet_folder"].image_paths]
    assert rows[12] == ("test-00000-", 12) and rows[13] == ("test-00001-", 0)
    assert variants["webdataset"].image_ids[:2] == ["s0000000", "s0000001"]


def _embed(emb, paths, workers: int):
    import torch

    from bench.loader import image_batches

    return torch.cat([emb.embed_image_batch(b) for b in image_batches(emb, paths, 8, num_workers=workers)])


def test_every_format_gives_the_same_embeddings_and_recall(formats, kar, synthetic_dir, tiny_clip_dir):
    import torch

    from bench.embedders.clip import ClipEmbedder
    from bench.metrics.retrieval import recall_at_k

    emb = ClipEmbedder(str(tiny_clip_dir))
    texts, owner = kar.flat_captions()
    txt = emb.embed_texts(texts)
    ref_img = _embed(emb, kar.image_paths, 0)
    expected = recall_at_k(ref_img, txt, owner)
    variants = _caption_variants(formats, synthetic_dir)
    for i, (name, ds) in enumerate(variants.items()):
        workers = 1 if name in ("parquet_folder", "webdataset", "save_to_disk") else 0  # forked workers too
        img = _embed(emb, ds.image_paths, workers)
        assert torch.equal(img, ref_img), name
        t, o = ds.flat_captions()
        assert t == texts and np.array_equal(o, owner)
        assert recall_at_k(img, txt, o) == expected, name


def test_labels_match_imagefolder_and_templates_come_from_the_shards(formats, folder, tiny_clip_dir):
    import torch

    from bench.embedders.clip import ClipEmbedder
    from bench.metrics.zeroshot import class_text_embeddings, zeroshot_classify

    variants = {
        "save_to_disk": load_hf("l", HFParams(path=str(formats / "std_labels"), label_column="label")),
        "parquet_strings": load_hf("l", HFParams(path=str(formats / "labels.parquet"), image_column="png",
                                                 label_column="kind")),
        "webdataset": load_webdataset("l", WebDatasetParams(path=str(formats / "wds_cls"))),
    }
    emb = ClipEmbedder(str(tiny_clip_dir))
    ref_img = _embed(emb, folder.image_paths, 0)
    classes = class_text_embeddings(emb.embed_texts, folder.class_names, TEMPLATES)
    expected = zeroshot_classify(ref_img, classes, folder.labels, multilabel=False)
    for name, ds in variants.items():
        assert ds.class_names == folder.class_names, name
        assert ds.labels.dtype == np.int64 and np.array_equal(ds.labels, folder.labels), name
        assert not ds.multilabel
        img = _embed(emb, ds.image_paths, 1 if name == "webdataset" else 0)
        assert torch.equal(img, ref_img), name
    wds = variants["webdataset"]
    assert wds.templates == TEMPLATES and variants["save_to_disk"].templates is None
    got = zeroshot_classify(_embed(emb, wds.image_paths, 0),
                            class_text_embeddings(emb.embed_texts, wds.class_names, wds.templates), wds.labels,
                            multilabel=False)
    assert got["top1"] == expected["top1"] and got["mean_per_class_recall"] == expected["mean_per_class_recall"]


def test_hub_id_resolves_from_the_cache_only_and_revision_enters_the_fingerprint(formats, hub_cache, kar):
    main = load_hf("h", HFParams(path="bench/synthetic", caption_column="captions"))
    first = load_hf("h", HFParams(path="bench/synthetic", revision=hub_cache[0], caption_column="captions"))
    assert main.captions == first.captions == kar.captions
    assert Path(main.image_paths[0].file).parts[-3] == hub_cache[1]  # refs/main -> second snapshot
    assert main.fingerprint() != first.fingerprint()  # same bytes, other revision
    assert '"revision":"' + hub_cache[1] in main.source and '"blob:' in main.source  # hash = blob name
    with pytest.raises(DataError) as e:
        load_hf("h", HFParams(path="bench/missing", caption_column="captions"))
    msg = str(e.value)
    assert "datasets--bench--missing" in msg and "hf download bench/missing --repo-type dataset" in msg
    assert "\n" not in msg
    with pytest.raises(DataError, match="revision v9.*--revision v9"):
        load_hf("h", HFParams(path="bench/synthetic", revision="v9", caption_column="captions"))


def test_fingerprint_follows_content_not_location(formats, tmp_path):
    base = load_hf("d", HFParams(path=str(formats / "pq"), caption_column="captions")).fingerprint()
    copy = tmp_path / "copy"
    shutil.copytree(formats / "pq", copy)
    assert load_hf("d", HFParams(path=str(copy), caption_column="captions")).fingerprint() == base
    # replace the image of row 3 by another image: same captions, same file names, other bytes
    import pyarrow.parquet as pq

    f = copy / "data" / "test-00000-of-00002.parquet"
    t = pq.read_table(f)
    images = t.column("image").to_pylist()
    images[3] = images[4]
    pq.write_table(t.set_column(0, "image", __import__("pyarrow").array(images, type=t.schema.field("image").type))
                   .replace_schema_metadata(t.schema.metadata), f, row_group_size=5)
    changed = load_hf("d", HFParams(path=str(copy), caption_column="captions"))
    assert changed.captions == load_hf("d", HFParams(path=str(formats / "pq"), caption_column="captions")).captions
    assert changed.fingerprint() != base
    w1 = load_webdataset("w", WebDatasetParams(path=str(formats / "wds_cls"))).fingerprint()
    shutil.copytree(formats / "wds_cls", tmp_path / "wds")
    assert load_webdataset("w", WebDatasetParams(path=str(tmp_path / "wds"))).fingerprint() == w1
    (tmp_path / "wds" / "zeroshot_classification_templates.txt").write_text("a {c}\n")
    assert load_webdataset("w", WebDatasetParams(path=str(tmp_path / "wds"))).fingerprint() != w1


def test_max_images_split_and_filters(formats, kar):
    five = load_hf("d", HFParams(path=str(formats / "pq"), caption_column="captions", max_images=5))
    assert five.captions == kar.captions[:5]
    train = load_hf("d", HFParams(path=str(formats / "std"), split="train", caption_column="captions"))
    assert train.captions == kar.captions[:3]
    w = load_webdataset("d", WebDatasetParams(path=str(formats / "wds_cap"), max_images=12))
    assert w.captions == kar.captions[:12] and {Path(r.shard).name for r in w.image_paths} == {"0.tar", "1.tar"}
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}/{1..2}") == ["a/1", "a/2", "b/1", "b/2"]


def test_refs_are_small_hashable_picklable_and_named(formats):
    import pickle

    ds = load_webdataset("d", WebDatasetParams(path=str(formats / "wds_cap")))
    ref = ds.image_paths[3]
    assert isinstance(ref, ImageRef) and pickle.loads(pickle.dumps(ref)) == ref and hash(ref) == hash(
        pickle.loads(pickle.dumps(ref)))
    assert ref.name == "0.tar/s0000003.jpg" and str(ref).endswith("0.tar::s0000003.jpg")
    assert ref.size_hint == len(ref.read_bytes())
    row = load_hf("d", HFParams(path=str(formats / "pq"), caption_column="captions")).image_paths[14]
    assert row.name == "test-00001-of-00002.parquet#1" and row.read_bytes()[:2] == b"\xff\xd8"


# ---- bad inputs -------------------------------------------------------------------------------------


def test_wrong_column_names_the_available_ones(formats):
    with pytest.raises(DataError, match=r"no column 'caption' .*did you mean 'captions'.*columns: image, captions"):
        load_hf("d", HFParams(path=str(formats / "std"), caption_column="caption"))
    with pytest.raises(DataError, match="no column 'img'.*columns: image, label"):
        load_hf("d", HFParams(path=str(formats / "std_labels"), image_column="img", label_column="label"))
    with pytest.raises(DataError, match="column 'captions' holds list<.*not images"):
        load_hf("d", HFParams(path=str(formats / "std"), image_column="captions", caption_column="captions"))


def test_unknown_and_empty_splits(formats, tmp_path):
    with pytest.raises(DataError, match="no split 'validation'.*splits: test, train"):
        load_hf("d", HFParams(path=str(formats / "std"), split="validation", caption_column="captions"))
    with pytest.raises(DataError, match="no split 'val'.*splits: test, train"):
        load_hf("d", HFParams(path=str(formats / "pq"), split="val", caption_column="captions"))
    with pytest.raises(DataError, match="is empty: no row matches where"):
        load_hf("d", HFParams(path=str(formats / "paths.parquet"), image_column="file", caption_column="captions",
                              where={"split": "validation"}))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": pa.array([], pa.binary()), "text": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="is empty: it has no rows"):
        load_hf("d", HFParams(path=str(tmp_path / "empty.parquet"), caption_column="text"))
    with pytest.raises(DataError, match="has no split folder 'val'.*splits: test"):
        load_webdataset("d", WebDatasetParams(path=str(formats / "wds_cap"), split="val"))


def test_loading_scripts_are_refused(tmp_path):
    (tmp_path / "myds").mkdir()
    (tmp_path / "myds" / "myds.py").write_text("import datasets\n")
    with pytest.raises(DataError, match="loading script .*myds.py.*no trust_remote_code"):
        load_hf("d", HFParams(path=str(tmp_path / "myds"), caption_column="text"))


def test_stored_paths_that_do_not_exist(formats, kar):
    with pytest.raises(DataError, match="1 of 25 image paths .* do not exist; first: .*nowhere.jpg.*image_root"):
        load_hf("d", HFParams(path=str(formats / "paths.parquet"), image_column="file", caption_column="captions",
                              image_root=str(Path(kar.image_paths[0]).parents[1])))


def test_tar_missing_caption_is_an_error_or_a_counted_skip(tmp_path, kar):
    samples = [(p.read_bytes(), "\n".join(c)) for p, c in zip(kar.image_paths[:8], kar.captions[:8])]
    _write_wds(tmp_path / "w", samples, "txt", "retrieval", per_shard=4, drop={5: ("txt",), 6: ("jpg",)})
    with pytest.raises(DataError, match=r"sample 's0000005' of shard .*1\.tar has no a caption \(\.txt\).*"
                                        "on_missing: skip"):
        load_webdataset("d", WebDatasetParams(path=str(tmp_path / "w")))
    ds = load_webdataset("d", WebDatasetParams(path=str(tmp_path / "w"), on_missing="skip"))
    assert ds.skipped_samples == 2 and len(ds) == 6
    assert ds.captions == [kar.captions[i] for i in (0, 1, 2, 3, 4, 7)]  # still aligned with the images
    assert ds.image_ids == ["s0000000", "s0000001", "s0000002", "s0000003", "s0000004", "s0000007"]
    assert load_image(ds.image_paths[5]).size == load_image(kar.image_paths[7]).size


def test_corrupt_image_in_a_shard_names_shard_and_member(tmp_path, kar, tiny_clip_dir):
    from bench.embedders.clip import ClipEmbedder

    samples = [(p.read_bytes(), c[0]) for p, c in zip(kar.image_paths[:6], kar.captions[:6])]
    _write_wds(tmp_path / "w", samples, "txt", "retrieval", per_shard=3, corrupt=4)
    ds = load_webdataset("d", WebDatasetParams(path=str(tmp_path / "w")))  # lazy: loading works
    emb = ClipEmbedder(str(tiny_clip_dir))
    with pytest.raises(DataError) as e:
        _embed(emb, ds.image_paths, 1)  # raised in a worker, re-raised as the same one line
    assert "member 's0000004.jpg' of shard" in str(e.value) and "1.tar" in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_shards_and_templates(tmp_path, folder, formats):
    (tmp_path / "gz").mkdir()
    with tarfile.open(tmp_path / "gz" / "0.tar", "w:gz") as tf:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataError, match="only uncompressed .tar shards"):
        load_webdataset("d", WebDatasetParams(shards=str(tmp_path / "gz" / "*.tar")))
    with pytest.raises(DataError, match=r"shard not found: .*3\.tar"):
        load_webdataset("d", WebDatasetParams(path=str(formats / "wds_cap"), shards="test/{0..3}.tar"))
    shutil.copytree(formats / "wds_cls", tmp_path / "cls")
    (tmp_path / "cls" / "zeroshot_classification_templates.txt").write_text("a photo of a {}.\n")
    with pytest.raises(DataError, match=r"placeholder \{c\}.*'a photo of a \{\}.'"):
        load_webdataset("d", WebDatasetParams(path=str(tmp_path / "cls")))
    (tmp_path / "cls" / "classnames.txt").write_text("one\ntwo\n")
    (tmp_path / "cls" / "zeroshot_classification_templates.txt").unlink()
    with pytest.raises(DataError, match="class id 5 but .*classnames.txt names only 2 classes"):
        load_webdataset("d", WebDatasetParams(path=str(tmp_path / "cls")))


def test_params_are_strict():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="exactly one of caption_column"):
        HFParams(path="x", caption_column="a", label_column="b")
    with pytest.raises(ValidationError, match="extra"):
        HFParams(path="x", caption_column="a", trust_remote_code=True)
    with pytest.raises(ValidationError, match="set path"):
        WebDatasetParams()
    with pytest.raises(ValidationError):
        WebDatasetParams(path="x", max_images=0)
    p = HFParams(path="x", caption_column="a")
    with pytest.raises(ValidationError):
        p.split = "train"  # frozen


def test_rows_without_caption_are_dropped_with_their_image(tmp_path, kar):
    import pyarrow as pa
    import pyarrow.parquet as pq

    caps = [c[0] for c in kar.captions[:6]]
    caps[1], caps[4] = "  ", None
    pq.write_table(pa.table({"jpg": [p.read_bytes() for p in kar.image_paths[:6]], "text": caps}),
                   tmp_path / "t.parquet", row_group_size=2)
    ds = load_hf("d", HFParams(path=str(tmp_path / "t.parquet"), image_column="jpg", caption_column="text"))
    assert ds.skipped_samples == 2 and ds.captions == [[caps[i]] for i in (0, 2, 3, 5)]
    assert [r.row for r in ds.image_paths] == [0, 2, 3, 5]
    assert np.array_equal(np.asarray(load_image(ds.image_paths[3])), np.asarray(load_image(kar.image_paths[5])))
    three = load_hf("d", HFParams(path=str(tmp_path / "t.parquet"), image_column="jpg", caption_column="text",
                                  max_images=3))
    assert [r.row for r in three.image_paths] == [0, 2, 3]


def test_webdataset_from_a_cached_hub_id(formats, tmp_path, monkeypatch, kar):
    repo = tmp_path / "hub" / "datasets--clip-benchmark--wds_synth"
    shutil.copytree(formats / "wds_cap", repo / "snapshots" / ("c" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    ds = load_webdataset("w", WebDatasetParams(path="clip-benchmark/wds_synth"))
    assert ds.captions == kar.captions and '"revision":"' + "c" * 40 in ds.source
    with pytest.raises(DataError, match="hf download clip-benchmark/wds_other --repo-type dataset"):
        load_webdataset("w", WebDatasetParams(path="clip-benchmark/wds_other"))
    with pytest.raises(DataError, match="holds tar shards: use type webdataset"):
        load_hf("w", HFParams(path="clip-benchmark/wds_synth", caption_column="txt"))


def test_multilabel_from_npy_vectors_and_list_columns(tmp_path, kar):
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=np.uint8)
    root = tmp_path / "w"
    (root / "test").mkdir(parents=True)
    with tarfile.open(root / "test" / "0.tar", "w") as tf:
        for i, v in enumerate(vectors):
            buf = io.BytesIO()
            np.save(buf, v)
            for ext, data in (("png", kar.image_paths[i].read_bytes()), ("npy", buf.getvalue())):
                info = tarfile.TarInfo(f"k{i}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            if i == 3:  # a second label member under the same key: refused, never silently merged
                info = tarfile.TarInfo(f"k{i}.npy")
                info.size = len(buf.getvalue())
                tf.addfile(info, io.BytesIO(buf.getvalue()))
    (root / "dataset_type.txt").write_text("multilabel\n")
    (root / "classnames.txt").write_text("a\nb\nc\n")
    with pytest.raises(DataError, match="sample 'k3' has two '.npy' members"):
        load_webdataset("m", WebDatasetParams(path=str(root)))
    ds = load_webdataset("m", WebDatasetParams(path=str(root), max_images=3))
    assert ds.multilabel and ds.labels.dtype == np.uint8 and np.array_equal(ds.labels, vectors[:3])
    assert ds.class_names == ["a", "b", "c"] and ds.templates is None
    ids = [[j for j in range(3) if v[j]] for v in vectors]
    pq.write_table(pa.table({"image": [p.read_bytes() for p in kar.image_paths[:4]], "objs": ids}),
                   tmp_path / "m.parquet")
    hf = load_hf("m", HFParams(path=str(tmp_path / "m.parquet"), label_column="objs", class_names=["a", "b", "c"]))
    assert hf.multilabel and np.array_equal(hf.labels, vectors) and hf.class_names == ["a", "b", "c"]
