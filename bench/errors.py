"""Typed errors. The CLI turns every BenchError into one line on stderr and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """A user-facing problem: bad config, missing file, mismatched checkpoint, corrupt input."""

    exit_code = 2


class ConfigError(BenchError):
    """The configuration file is wrong (unknown key, wrong type, unknown name)."""


class DataError(BenchError):
    """A dataset file is missing, unreadable or malformed."""


class ModelError(BenchError):
    """A checkpoint is missing, incomplete, or does not match its configuration."""


class CapabilityError(BenchError):
    """An embedder was asked for something it cannot do (e.g. text from an image-only model)."""


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """Return "; did you mean 'x'?" when a close match exists, else ''."""
    match = difflib.get_close_matches(value, list(allowed), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def unknown_name(kind: str, value: str, allowed: Iterable[str]) -> str:
    """Standard message for an unknown registry name."""
    allowed = sorted(allowed)
    return f"unknown {kind} '{value}'{did_you_mean(value, allowed)} known: {', '.join(allowed)}"


class OutputError(BenchError):
    """An output folder or file (output_dir, cache_dir, --out, --output) cannot be written."""
