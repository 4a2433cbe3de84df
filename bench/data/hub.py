"""Hub datasets from the local Hugging Face cache only (never downloaded): used by `type: hf` and
`type: webdataset` when their `path` is a hub id."""

from __future__ import annotations

from pathlib import Path

from bench.errors import DataError


def resolve_hub_dataset(repo_id: str, revision: str | None) -> Path:
    """The cached snapshot folder of a hub dataset, offline only; DataError saying where it looked
    and how to get it there when it is not cached."""
    from huggingface_hub import snapshot_download

    from bench.models.hub import hf_cache_dir

    cache = hf_cache_dir()
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True,
                                      cache_dir=cache))
    except (OSError, ValueError):
        repo = cache / ("datasets--" + repo_id.replace("/", "--"))
        have = sorted(p.name for p in (repo / "snapshots").iterdir()) if (repo / "snapshots").is_dir() else []
        rev = f" --revision {revision}" if revision else ""
        cached = f"; cached snapshots: {', '.join(have)}" if have else ""
        raise DataError(f"hub dataset '{repo_id}'{f' revision {revision}' if revision else ''} is not in the "
                        f"local Hugging Face cache (looked in {repo}{cached}); bench never downloads: run "
                        f"`hf download {repo_id} --repo-type dataset{rev}` (older huggingface_hub: "
                        f"`huggingface-cli download {repo_id} --repo-type dataset{rev}`), or set "
                        "HF_HUB_CACHE/HF_HOME to the cache that holds it") from None
