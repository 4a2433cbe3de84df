"""Shared fixtures: synthetic data and tiny random checkpoints, generated once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """A small synthetic dataset in the real COCO formats (see bench.demo.synthetic)."""
    from bench.demo.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(out, n_train=48, n_val=16, n_test=24, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random-initialized CLIP checkpoint in the real on-disk layout."""
    from bench.demo.tiny_clip import make_tiny_clip

    out = tmp_path_factory.mktemp("tiny_clip")
    make_tiny_clip(out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_phi3v_dir(tmp_path_factory):
    """A tiny random-initialized Phi-3-vision checkpoint in the real layout (two shards + index)."""
    from bench.demo.tiny_phi3v import make_tiny_phi3v

    out = tmp_path_factory.mktemp("tiny_phi3v")
    make_tiny_phi3v(out, seed=0)
    return out
