"""A realistic hand-made results dict (schema v1) with clip, phi3v (image only) and phi3v-lm."""

from __future__ import annotations

import copy
from typing import Any

RETRIEVAL = {"clip": [30.0, 55.0, 66.0, 20.0, 44.0, 55.0], "phi3v": None, "phi3v-lm": [35.0, 60.0, 70.0,
                                                                                          25.0, 50.0, 61.0]}
KEYS = ["retrieval/i2t_recall@1", "retrieval/i2t_recall@5", "retrieval/i2t_recall@10",
        "retrieval/t2i_recall@1", "retrieval/t2i_recall@5", "retrieval/t2i_recall@10"]


def _m(embedder, task, dataset, key, value, unit="%", hib=True, kind="quality", na=None):
    return {"embedder": embedder, "task": task, "dataset": dataset, "key": key, "value": value, "unit": unit,
            "higher_is_better": hib, "kind": kind, "protocol": f"{task} protocol", "na_reason": na}


def make_results(created: str = "2026-11-28T10:00:00+00:00", commit: str = "a" * 40,
                 hardware: str = "hw0000000000000a", synthetic: bool = True) -> dict[str, Any]:
    metrics = []
    for label, vals in RETRIEVAL.items():
        for key, v in zip(KEYS, vals or [None] * 6):
            metrics.append(_m(label, "retrieval", "caps", key, v,
                              na=None if vals else "'phi3v' embeds images only: no text embeddings"))
    probe = {"clip": (80.0, 78.5), "phi3v": (84.0, 83.0), "phi3v-lm": (82.0, 81.0)}
    for label, (top1, mpc) in probe.items():
        metrics.append(_m(label, "linear_probe", "labels", "probe/top1", top1))
        metrics.append(_m(label, "linear_probe", "labels", "probe/mean_per_class_recall", mpc))
    zs = {"clip": 60.0, "phi3v": None, "phi3v-lm": 55.0}
    for label, v in zs.items():
        metrics.append(_m(label, "zeroshot", "labels", "zeroshot/top1", v,
                          na=None if v is not None else "'phi3v' embeds images only: it cannot embed prompts"))
    speed = {"clip": (120.0, 15.0, 800.0), "phi3v": (3.0, 300.0, 2400.0), "phi3v-lm": (2.0, 450.0, 9000.0)}
    for label, (ips, p50, rss) in speed.items():
        metrics.append(_m(label, "speed", "caps", "speed/images_per_s", ips, "img/s", True, "speed"))
        metrics.append(_m(label, "speed", "caps", "speed/batch_latency_p50_ms", p50, "ms", False, "speed"))
        metrics.append(_m(label, "speed", "caps", "memory/peak_rss_mib", rss, "MiB", False, "memory"))
    details = {}
    for label in ("clip", "phi3v", "phi3v-lm"):
        d = {"linear_probe/labels": {"class_names": ["cat", "dog", "car"],
                                     "per_class_accuracy": [90.0, 70.0, 80.0]}}
        if RETRIEVAL[label]:
            d["retrieval/caps"] = {"ks": [1, 5, 10], "i2t": RETRIEVAL[label][:3], "t2i": RETRIEVAL[label][3:]}
        details[label] = d
    return {
        "schema_version": 1, "benchmark": "demo", "run_id": f"demo-{created[:10]}", "created": created,
        "config_path": "configs/demo.yaml",
        "config": {"name": "demo", "runtime": {"device": "cpu", "dtype": "float32", "batch_size": 16},
                   "tasks": [{"type": "retrieval", "dataset": "caps", "ks": [1, 5, 10]},
                             {"type": "linear_probe", "train": "labels_train", "test": "labels"},
                             {"type": "zeroshot", "dataset": "labels"},
                             {"type": "speed", "dataset": "caps", "num_images": 32}],
                   "regression": {"quality_abs_tol": 0.5, "speed_rel_tol": 0.25, "memory_rel_tol": 0.2,
                                  "per_metric": {}}},
        "environment": {"python": "3.11.7", "packages": {"torch": "2.13.0", "transformers": "5.24.0"},
                        "git": {"commit": commit, "dirty": False},
                        "device": {"type": "cpu", "name": "Test CPU", "cpu_count": 2, "torch_threads": 2},
                        "hardware_fingerprint": hardware},
        "synthetic": synthetic,
        "datasets": {"caps": {"type": "coco_karpathy", "fingerprint": "d" * 16, "num_images": 100,
                              "num_captions": 500},
                     "labels": {"type": "imagefolder", "fingerprint": "e" * 16, "num_images": 60, "num_classes": 3},
                     "labels_train": {"type": "imagefolder", "fingerprint": "f" * 16, "num_images": 120,
                                      "num_classes": 3}},
        "embedders": {label: {"type": label, "fingerprint": f"{i}" * 16, "describe": {"model": f"models/{label}"},
                              "modalities": ["image"] if label == "phi3v" else ["image", "text"],
                              "random_weights": synthetic}
                      for i, label in enumerate(("clip", "phi3v", "phi3v-lm"))},
        "metrics": metrics, "details": details, "timings": {"_total_s": 12.5}, "cache": {}, "notes": [],
        "complete": True,
    }


def modified(results: dict[str, Any], changes: dict[tuple[str, str], float]) -> dict[str, Any]:
    """A deep copy with metric values replaced: {(embedder, key): new value}."""
    out = copy.deepcopy(results)
    for m in out["metrics"]:
        if (m["embedder"], m["key"]) in changes:
            m["value"] = changes[(m["embedder"], m["key"])]
    return out
