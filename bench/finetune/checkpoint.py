"""The fine-tuned model in the Hugging Face layout, and the training record beside it.

out_dir/ model.safetensors, config.json, preprocessor_config.json, tokenizer files (copied from the
base checkpoint), and training_record.json, written last: its presence, with a matching fingerprint,
means the checkpoint is complete (see launch.needs_training). Resume state lives in out_dir/.train_state
(hidden, so it never enters the model's file fingerprint) and is removed once training completes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench.errors import ModelError, OutputError

RECORD = "training_record.json"
STATE_DIR = ".train_state"
WEIGHTS = "model.safetensors"
COPIED_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
                "merges.txt", "special_tokens_map.json", "added_tokens.json")
MODEL_FILES = (WEIGHTS, "config.json", "generation_config.json") + COPIED_FILES


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (bench.io: temp file + fsync + rename; one-line OutputError)."""
    from bench.io import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def clear_outputs(out_dir: Path) -> None:
    """Remove a previous (other-fingerprint) checkpoint: the record first, so a kill never leaves a
    complete-looking folder with stale weights."""
    (out_dir / RECORD).unlink(missing_ok=True)
    for name in MODEL_FILES:
        (out_dir / name).unlink(missing_ok=True)


def save_checkpoint(model: Any, base_model_dir: str | Path, out_dir: str | Path) -> Path:
    """model (an unwrapped CLIPModel) -> safetensors + config; preprocessor/tokenizer files from the base."""
    out, base = Path(out_dir), Path(base_model_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        from bench.models.hub import quiet_transformers

        with quiet_transformers():  # no "Writing model shards" progress bar
            model.save_pretrained(out, safe_serialization=True)
        for name in COPIED_FILES:
            if (base / name).is_file():
                shutil.copyfile(base / name, out / name)
    except OSError as e:
        raise OutputError(f"cannot write the fine-tuned checkpoint to {out}: {e}") from None
    if not (out / "preprocessor_config.json").is_file():
        raise ModelError(f"base checkpoint {base} has no preprocessor_config.json to copy into {out}")
    return out


def read_record(out_dir: str | Path) -> dict[str, Any] | None:
    """The training record of a completed fine-tuning, or None (absent or unreadable)."""
    try:
        rec = json.loads((Path(out_dir) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None
