"""Output folders the user names (output_dir, cache_dir, `bench run --out`, `bench embed --output`) that are
read-only, a file, or on a full disk: one line, exit 2, before any model loads, and nothing half-written.

The tests may run as root, where permission bits do not stop a write: a read-only file system is then
simulated below one folder by failing file and folder creation there with EROFS, as the kernel does; a
full disk likewise by failing writes with ENOSPC. Without root, read-only is a real chmod.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import yaml

from bench.cli import main


class FsTrouble:
    """Simulated file-system failures below given folders (only there; everything else is untouched)."""

    def __init__(self, monkeypatch) -> None:
        self.read_only: list[str] = []
        self.full: list[str] = []
        self.chmodded: list[Path] = []
        self._fds: set[int] = set()
        real_open, real_mkdir, real_write, real_close = os.open, os.mkdir, os.write, os.close

        def under(path, roots) -> bool:
            p = os.path.abspath(os.fspath(path))
            return any(p == r or p.startswith(r + os.sep) for r in roots)

        def fake_open(path, flags, *a, **kw):
            if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and under(path, self.read_only):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
            fd = real_open(path, flags, *a, **kw)
            if under(path, self.full):
                self._fds.add(fd)
            return fd

        def fake_mkdir(path, *a, **kw):
            if under(path, self.read_only):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
            return real_mkdir(path, *a, **kw)

        def fake_write(fd, data):
            if fd in self._fds and len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        def fake_close(fd):
            self._fds.discard(fd)
            return real_close(fd)

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)
        monkeypatch.setattr(os, "write", fake_write)
        monkeypatch.setattr(os, "close", fake_close)

    def make_read_only(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:  # a real read-only folder; root would write through it
            folder.chmod(0o555)
            self.chmodded.append(folder)
        else:
            self.read_only.append(str(folder.resolve()))

    def make_full(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.full.append(str(folder.resolve()))


@pytest.fixture
def trouble(monkeypatch):
    t = FsTrouble(monkeypatch)
    yield t
    for p in t.chmodded:
        p.chmod(0o755)


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _cli(capsys, *args: str) -> tuple[int, str, list[str]]:
    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.err, [ln for ln in out.err.splitlines() if ln.strip()]


def _config(tmp: Path, synthetic_dir: Path, clip_dir: Path, **over) -> Path:
    cfg = {"name": "io", "output_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache"),
           "runtime": {"device": "cpu", "batch_size": 4, "num_workers": 0},
           "datasets": {"caps": {"type": "coco_karpathy", "annotations": str(synthetic_dir / "dataset_coco.json"),
                                 "images": str(synthetic_dir / "images"), "split": "test", "max_images": 6}},
           "embedders": [{"type": "clip", "model": str(clip_dir)}],
           "tasks": [{"type": "retrieval", "dataset": "caps", "ks": [1, 5]}]}
    cfg.update(over)
    p = tmp / "io.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


PLACES = ("output_dir", "cache_dir", "--out", "--output")
PROBLEMS = {"file": "is a file", "read_only": ("read-only file system", "not writable"),
            "full": "full disk (no space left on device)"}


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("place", PLACES)
def test_unwritable_output_is_one_line_before_any_work(place, problem, tmp_path, capsys, trouble, synthetic_dir,
                                                       tiny_clip_dir):
    work = tmp_path / "w"
    work.mkdir()
    if problem == "file":
        bad = work / "afile"
        bad.write_text("not a folder")
        target = bad
    else:
        bad = work / problem
        (trouble.make_read_only if problem == "read_only" else trouble.make_full)(bad)
        target = bad / "sub"
    if place == "--output":
        args = ["embed", "clip", "--model", str(tiny_clip_dir), "--images", str(synthetic_dir / "images" / "test"),
                "--output", str((bad if problem != "file" else target) / "x.safetensors"), "--device", "cpu"]
    else:
        over = {place: str(target)} if place != "--out" else {}
        cfg = _config(tmp_path, synthetic_dir, tiny_clip_dir, **over)
        args = ["run", str(cfg), "--no-progress"] + (["--out", str(target)] if place == "--out" else [])
    before = _tree(tmp_path)
    rc, err, lines = _cli(capsys, *args)
    assert rc == 2, err
    assert len(lines) == 1, err  # no "[bench] loading ..." either: it failed before any model loaded
    line = lines[0]
    assert line.startswith("bench: error: ") and "Traceback" not in err
    assert (place if place != "--output" else "--output folder") in line
    phrases = PROBLEMS[problem]
    assert any(p in line for p in ((phrases,) if isinstance(phrases, str) else phrases)), line
    assert str(bad) in line
    # Nothing created or left behind: no run folder, no cache entry, no probe file, no output.
    assert _tree(tmp_path) == before


def test_check_leaves_no_trace_and_creates_nothing(tmp_path):
    from bench.errors import OutputError
    from bench.outputs import check_writable_dir

    assert check_writable_dir(tmp_path / "a" / "b", "output_dir", "fix") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []  # the missing folders are not created, the probe is removed
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"output_dir .*/f/deeper cannot be created: .*/f is a file; fix"):
        check_writable_dir(tmp_path / "f" / "deeper", "output_dir", "fix")


def _enospc(msg: str = "No space left on device"):
    return OSError(errno.ENOSPC, msg)


def test_disk_full_while_writing_the_report(tmp_path, capsys, monkeypatch, synthetic_dir, tiny_clip_dir):
    """The disk fills after the checks: the report being written is not left half-written, the results
    written before it stay whole, and the error is one line naming the file."""
    import bench.io

    real = bench.io._write_all

    def half_then_full(fd, data):
        if b"<html" in data[:200]:
            os.write(fd, data[: len(data) // 2])
            os.close(fd)
            raise _enospc()
        return real(fd, data)

    monkeypatch.setattr(bench.io, "_write_all", half_then_full)
    out = tmp_path / "out"
    rc, err, lines = _cli(capsys, "run", str(_config(tmp_path, synthetic_dir, tiny_clip_dir)), "--no-progress",
                          "--out", str(out))
    assert rc == 2 and "Traceback" not in err
    errors = [ln for ln in lines if ln.startswith("bench: error:")]
    assert errors == [f"bench: error: cannot write {out / 'report.html'}: it is on a full disk (no space left on "
                      f"device); free some space, or write the outputs to another disk"]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "per_query.npz", "report.md", "results.json"]
    assert json.loads((out / "results.json").read_text())["complete"] is True


def _save_half_then_full(real_save):
    from safetensors import SafetensorError

    def fake(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        size = os.path.getsize(filename)
        os.truncate(filename, size // 2)  # what a disk that filled up mid-write leaves
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    return fake


def test_disk_full_while_writing_the_cache(tmp_path, capsys, monkeypatch, synthetic_dir, tiny_clip_dir):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", _save_half_then_full(safetensors.torch.save_file))
    rc, err, lines = _cli(capsys, "run", str(_config(tmp_path, synthetic_dir, tiny_clip_dir)), "--no-progress")
    assert rc == 2 and "Traceback" not in err
    errors = [ln for ln in lines if ln.startswith("bench: error:")]
    assert len(errors) == 1 and "No space left on device; free some space" in errors[0], err
    cached = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert cached == []  # no half shard, no temporary file, no meta.json claiming an entry


def test_disk_full_while_writing_embed_output(tmp_path, capsys, monkeypatch, synthetic_dir, tiny_clip_dir):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", _save_half_then_full(safetensors.torch.save_file))
    folder = tmp_path / "o"
    folder.mkdir()
    out = folder / "x.safetensors"
    rc, err, lines = _cli(capsys, "embed", "clip", "--model", str(tiny_clip_dir), "--images",
                          str(synthetic_dir / "images" / "val"), "--output", str(out), "--device", "cpu",
                          "--num-workers", "0")
    assert rc == 2 and "Traceback" not in err
    assert lines == [f"bench: error: cannot write {out}: it is on a full disk (no space left on device); "
                     f"free some space, or write the outputs to another disk"]
    assert list(folder.iterdir()) == []


def test_cli_safety_net_turns_user_os_errors_into_one_line(capsys, monkeypatch):
    """An OS error on a user's path that no check caught: one line, exit 2; other errors keep a traceback."""
    import bench.cli
    from safetensors import SafetensorError

    from bench.outputs import os_error_line

    assert os_error_line(OSError(errno.EROFS, "Read-only file system", "/data/x")) == (
        "/data/x: Read-only file system; write the outputs to a writable folder")
    assert os_error_line(SafetensorError('Error while serializing: I/O error: No space left on device '
                                         '(os error 28) at path "/c/.tmpAb"')) == (
        "/c/.tmpAb: No space left on device; free some space, or write the outputs to another disk")
    assert os_error_line(BrokenPipeError(errno.EPIPE, "Broken pipe")) is None
    assert os_error_line(ValueError("x")) is None

    def boom(args):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/home/u/runs")

    monkeypatch.setattr(bench.cli, "_cmd_list", boom)
    rc, err, lines = _cli(capsys, "list")
    assert rc == 2 and lines == [f"bench: error: /home/u/runs: {os.strerror(errno.EDQUOT)}; free some space, "
                                 f"or write the outputs to another disk"]

    def bug(args):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/internal")

    monkeypatch.setattr(bench.cli, "_cmd_list", bug)
    with pytest.raises(FileNotFoundError):
        main(["list"])
