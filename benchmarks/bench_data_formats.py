"""Load + embed the same generated images through each data format (issue 13's closing figures).

N synthetic test images (bench.demo.synthetic) are written once as: the Karpathy JSON + JPEG files
(type coco_karpathy, the reference), a save_to_disk dataset (Arrow), hub-style parquet files with the
image bytes (data/test-XXXXX-of-NNNNN.parquet), a parquet file of relative image paths, and
CLIP_benchmark webdataset shards (test/{0..k}.tar). Conversion is not timed. For each format, timed:
  load         the loader (reads annotations, indexes shards / tables; images stay where they are)
  fingerprint  ds.fingerprint() (content hash of the data files, or head/tail of each image file)
  embed        tiny CLIP image embeddings through bench.loader.image_batches (batch 64, 1 worker)
Each format is checked to give exactly the reference's embeddings. Then, per format, a whole
`bench run` (bench.runner.run_benchmark, cache off: retrieval on tiny CLIP, images and captions
embedded) is timed, and its figures are checked to equal the JSON run's. Usage:
  python -m benchmarks.bench_data_formats [--n 2000] [--workers 1] [--repeat 3]
                                          [--dir /tmp/bench_data_formats]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tarfile
import time
from pathlib import Path


def _write(out: Path, kar) -> dict:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    feats = datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string"))})
    rows = {"image": [{"bytes": p.read_bytes(), "path": None} for p in kar.image_paths], "captions": kar.captions}
    ds = datasets.Dataset.from_dict(rows, features=feats)
    ds.save_to_disk(str(out / "std"), max_shard_size="100MB")
    (out / "pq" / "data").mkdir(parents=True, exist_ok=True)
    shards = 4
    for i in range(shards):
        ds.shard(shards, i, contiguous=True).to_parquet(
            str(out / "pq" / "data" / f"test-{i:05d}-of-{shards:05d}.parquet"), batch_size=100)
    root = kar.image_paths[0].parents[1]
    pq.write_table(pa.table({"file": [p.relative_to(root).as_posix() for p in kar.image_paths],
                             "captions": kar.captions}), out / "paths.parquet")
    (out / "wds" / "test").mkdir(parents=True, exist_ok=True)
    per = 500
    n_tar = (len(kar) + per - 1) // per
    for s in range(n_tar):
        with tarfile.open(out / "wds" / "test" / f"{s}.tar", "w") as tf:
            for j in range(s * per, min((s + 1) * per, len(kar))):
                for ext, data in (("jpg", kar.image_paths[j].read_bytes()),
                                  ("txt", "\n".join(kar.captions[j]).encode())):
                    info = tarfile.TarInfo(f"s{j:07d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    (out / "wds" / "test" / "nshards.txt").write_text(f"{n_tar}\n")
    (out / "wds" / "dataset_type.txt").write_text("retrieval\n")
    return {"root": root}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/bench_data_formats")
    args = ap.parse_args()

    import torch

    from bench.data.coco import load_karpathy
    from bench.data.hf import HFParams, load_hf
    from bench.data.webdataset import WebDatasetParams, load_webdataset
    from bench.demo.synthetic import make_synthetic
    from bench.demo.tiny_clip import make_tiny_clip
    from bench.embedders.clip import ClipEmbedder
    from bench.loader import image_batches

    work = Path(args.dir)
    paths = make_synthetic(work / "synthetic", n_train=0, n_val=0, n_test=args.n, seed=0)
    model = make_tiny_clip(work / "tiny_clip", seed=0)
    kar = load_karpathy("kar", paths["karpathy"], paths["images"], split="test")
    formats = work / f"formats_{args.n}"
    if not (formats / "wds" / "dataset_type.txt").is_file():
        formats.mkdir(parents=True, exist_ok=True)
        _write(formats, kar)
    emb = ClipEmbedder(str(model))
    loaders = {
        "karpathy json + files": lambda: load_karpathy("d", paths["karpathy"], paths["images"], split="test"),
        "hf save_to_disk": lambda: load_hf("d", HFParams(path=str(formats / "std"), caption_column="captions")),
        "hf parquet (bytes)": lambda: load_hf("d", HFParams(path=str(formats / "pq"), caption_column="captions")),
        "hf parquet (paths)": lambda: load_hf("d", HFParams(path=str(formats / "paths.parquet"), image_column="file",
                                                           caption_column="captions",
                                                           image_root=str(paths["images"]))),
        "webdataset": lambda: load_webdataset("d", WebDatasetParams(path=str(formats / "wds"))),
    }
    # warm-up: page cache and lazy initialisation, not measured
    list(image_batches(emb, kar.image_paths[:64], 64, num_workers=0))
    reference = kar
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in loaders}
    ref_emb = None
    for _ in range(args.repeat):  # round-robin, so a busy moment of the machine hits every format alike
        for name, load in loaders.items():
            t0 = time.perf_counter()
            ds = load()
            t1 = time.perf_counter()
            ds.fingerprint()
            t2 = time.perf_counter()
            with torch.inference_mode():
                out = torch.cat([emb.embed_image_batch(b) for b in image_batches(emb, ds.image_paths, 64,
                                                                                  num_workers=args.workers)])
            t3 = time.perf_counter()
            ref_emb = out if ref_emb is None else ref_emb
            if not (torch.equal(out, ref_emb) and ds.captions == reference.captions):
                raise SystemExit(f"{name}: embeddings or captions differ from the Karpathy JSON's")
            times[name].append((t1 - t0, t2 - t1, t3 - t2))
    print(f"{args.n} images, tiny CLIP, batch 64, {args.workers} loader worker(s); median of {args.repeat} "
          "interleaved runs (embeddings identical to the JSON loader's in every run)")
    print(f"{'format':24s} {'load s':>7s} {'fprint s':>8s} {'embed s':>8s} {'total s':>8s} {'min s':>6s} "
          f"{'img/s':>6s}")
    for name, ts in times.items():
        load_s, fp_s, emb_s = (statistics.median(t[k] for t in ts) for k in range(3))
        total = statistics.median(sum(t) for t in ts)
        print(f"{name:24s} {load_s:7.3f} {fp_s:8.3f} {emb_s:8.2f} {total:8.2f} {min(sum(t) for t in ts):6.2f} "
              f"{args.n / total:6.0f}")
    _whole_runs(args, work, paths, formats, model)


def _whole_runs(args, work: Path, paths: dict, formats: Path, model: Path) -> None:
    """`bench run` (in-process, cache off) of a retrieval config per format, wall time end to end."""
    import json

    from bench.config import parse_config
    from bench.runner import run_benchmark

    entries = {
        "karpathy json + files": {"type": "coco_karpathy", "annotations": str(paths["karpathy"]),
                                  "images": str(paths["images"]), "split": "test"},
        "hf save_to_disk": {"type": "hf", "path": str(formats / "std"), "caption_column": "captions"},
        "hf parquet (bytes)": {"type": "hf", "path": str(formats / "pq"), "caption_column": "captions"},
        "webdataset": {"type": "webdataset", "path": str(formats / "wds")},
    }
    walls: dict[str, list[float]] = {name: [] for name in entries}
    figures: dict[str, dict] = {}
    for r in range(args.repeat + 1):  # run 0 warms up (imports, page cache) and is not counted
        for i, (name, entry) in enumerate(entries.items()):
            if r == 0 and i:
                continue
            raw = {"name": "formats", "synthetic": True, "output_dir": str(work / "runs"),
                   "cache_dir": str(work / "cache"),
                   "runtime": {"device": "cpu", "batch_size": 64, "num_workers": args.workers, "seed": 0},
                   "datasets": {"d": entry},
                   "embedders": [{"type": "clip", "name": "clip", "model": str(model)}],
                   "tasks": [{"type": "retrieval", "dataset": "d", "ks": [1, 5, 10]}]}
            cfg = parse_config(raw)
            t0 = time.perf_counter()
            out = run_benchmark(cfg, "formats.yaml", use_cache=False, progress=False, render=False,
                                out_dir=work / "runs" / f"{i}-{r}")
            if r:
                walls[name].append(time.perf_counter() - t0)
            res = json.loads((out / "results.json").read_text())
            got = {m["key"]: m["value"] for m in res["metrics"] if m["task"] == "retrieval"}
            figures.setdefault(name, got)
            if got != figures["karpathy json + files"]:
                raise SystemExit(f"{name}: bench run figures differ from the Karpathy JSON's")
    ref = statistics.median(walls["karpathy json + files"])
    print(f"\nbench run, retrieval (images + captions embedded, cache off), {args.n} images; median of "
          f"{args.repeat}; recall@1/5/10 identical to the JSON run's in every run")
    print(f"{'format':24s} {'wall s':>7s} {'vs json':>8s}  i2t R@1")
    for name, ws in walls.items():
        med = statistics.median(ws)
        print(f"{name:24s} {med:7.2f} {med / ref:7.2f}x  {figures[name]['retrieval/i2t_recall@1']:.2f}")

if __name__ == "__main__":
    main()
