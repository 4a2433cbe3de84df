"""Offline hub-id lookup (bench.models.hub.resolve_model_dir) against a fake Hugging Face cache built in
tmp with the real layout: blobs/<hash> files, snapshots/<sha>/<name> symlinks into blobs/, refs/<branch>.
No test here may open a network connection (socket.connect is made to fail)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bench.errors import ModelError
from bench.models.hub import hf_cache_dir, resolve_model_dir

OLD, NEW = "1" * 40, "abcdef0" + "2" * 33


def _snapshot(cache: Path, repo: str, sha: str, files: dict[str, str]) -> Path:
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / sha
    snap.mkdir(parents=True)
    (root / "blobs").mkdir(exist_ok=True)
    for name, text in files.items():
        blob = root / "blobs" / f"{abs(hash((sha, name))):x}"
        blob.write_text(text)
        (snap / name).symlink_to(Path("../../blobs") / blob.name)
    return snap


def _ref(cache: Path, repo: str, name: str, sha: str) -> None:
    refs = cache / ("models--" + repo.replace("/", "--")) / "refs"
    refs.mkdir(exist_ok=True)
    (refs / name).write_text(sha)  # as huggingface_hub writes it: no newline


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    def refuse(*args, **kwargs):
        raise AssertionError("the offline lookup opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.chdir(tmp_path)  # "org/model" must not exist as a relative folder
    old = _snapshot(hub, "org/model", OLD, {"config.json": '{"v": 1}'})
    new = _snapshot(hub, "org/model", NEW, {"config.json": '{"v": 2}', "model.safetensors": "w"})
    _ref(hub, "org/model", "main", NEW)
    _ref(hub, "org/model", "v1", OLD)
    assert (old / "config.json").is_symlink() and (new / "config.json").read_text() == '{"v": 2}'
    return hub


def test_id_resolves_to_the_snapshot_main_points_at(cache):
    snap = resolve_model_dir("org/model")
    assert snap == cache / "models--org--model" / "snapshots" / NEW
    assert (snap / "config.json").read_text() == '{"v": 2}'


@pytest.mark.parametrize("revision, sha", [("main", NEW), ("v1", OLD), (OLD, OLD), (NEW, NEW),
                                           (NEW[:7], NEW), (OLD[:10], OLD)])
def test_id_at_revision(cache, revision, sha):
    snap = resolve_model_dir("org/model", revision=revision)
    assert snap == cache / "models--org--model" / "snapshots" / sha
    assert (snap / "config.json").read_text() == ('{"v": 2}' if sha == NEW else '{"v": 1}')


def test_required_files_are_checked_in_the_snapshot(cache):
    assert resolve_model_dir("org/model", required=("config.json", "model.safetensors")).name == NEW
    with pytest.raises(ModelError, match=f"cached snapshot .*{OLD} of 'org/model' is incomplete: "
                                         f"missing model.safetensors"):
        resolve_model_dir("org/model", revision="v1", required=("config.json", "model.safetensors"))


def test_missing_id_says_where_it_looked_and_how_to_fix(cache, tmp_path):
    with pytest.raises(ModelError) as e:
        resolve_model_dir("org/absent")
    msg = str(e.value)
    assert msg.startswith("model 'org/absent' not found offline: ")
    assert str(tmp_path / "org" / "absent") in msg and str(cache / "models--org--absent") in msg
    assert "huggingface-cli download org/absent" in msg


def test_unknown_revision_lists_what_is_cached(cache):
    with pytest.raises(ModelError, match="revision 'v2' of 'org/model' is not cached.*cached refs: main, v1, "
                                         f"snapshots: {OLD}, {NEW}.*--revision v2"):
        resolve_model_dir("org/model", revision="v2")


def test_ref_to_a_missing_snapshot(cache):
    _ref(cache, "org/model", "gone", "3" * 40)
    with pytest.raises(ModelError, match="revision 'gone' points at snapshot 3{40}, which is not in"):
        resolve_model_dir("org/model", revision="gone")


def test_cache_folder_is_read_at_call_time(cache, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hf_cache_dir() == cache
    assert resolve_model_dir("org/model").name == NEW
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(ModelError, match="not found offline"):
        resolve_model_dir("org/model")
