"""Pydantic validation errors -> one line naming the key path, the allowed keys or values, and a
"did you mean" for a typo. Split from bench.config, which only defines the schema."""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError

from bench import registry
from bench.config import config_model
from bench.errors import did_you_mean


def _loc_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def first_error(e: ValidationError, raw: dict[str, Any]) -> str:
    errs = e.errors()
    err = errs[0]
    # Discriminated unions put the tag in the location ("embedders.0.clip.model"): drop it.
    loc = list(err["loc"])
    cleaned: list = []
    node: Any = raw
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part not in node and "type" in node \
                and part == node.get("type"):
            continue  # the union tag, not a real key
        cleaned.append(part)
        if isinstance(node, dict):
            node = node.get(part) if isinstance(part, str) else None
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    where = _loc_str(tuple(cleaned))
    etype = err["type"]
    more = f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
    if etype == "extra_forbidden":
        parent_model = _model_at(cleaned[:-1], raw)
        allowed = sorted(parent_model.model_fields) if parent_model else []
        key = str(cleaned[-1])
        return (f"unknown key '{where}'{did_you_mean(key, allowed)} allowed here: {', '.join(allowed)}{more}")
    if etype in ("union_tag_invalid", "union_tag_not_found"):
        ctx = err.get("ctx", {})
        allowed = registry.names(_kind_of(cleaned)) if _kind_of(cleaned) in registry.KINDS else []
        tag = ctx.get("tag", "")
        what = _kind_of(cleaned)
        if etype == "union_tag_not_found":
            return f"{where}: missing 'type'; allowed {what} types: {', '.join(allowed)}{more}"
        return f"{where}.type: unknown {what} '{tag}'{did_you_mean(str(tag), allowed)} known: {', '.join(allowed)}{more}"
    if etype == "missing":
        return f"missing required key '{where}'{more}"
    if etype == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"{where}: invalid value {err.get('input')!r}; allowed: {allowed}{more}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        # cross-reference errors carry their own location
        if re.match(r"^[\w\[\]\.]+: ", msg) and not where:
            return msg + more
    inp = err.get("input")
    shown = f" (got {inp!r})" if not isinstance(inp, (dict, list)) and etype != "value_error" else ""
    return f"{where or 'config'}: {msg}{shown}{more}"


def _kind_of(loc: list) -> str:
    head = loc[0] if loc else ""
    return {"datasets": "dataset", "embedders": "embedder", "tasks": "task"}.get(str(head), "component")


def _has(node, part) -> bool:
    return (isinstance(node, list) and isinstance(part, int) and part < len(node)) or (
        isinstance(node, dict) and part in node)


def _pick_model(ann, node):
    """Unwrap list/dict/Annotated/Union to the model that validates `node`."""

    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is Annotated:
        return _pick_model(args[0], node)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if origin in (list, dict):
        return _Deferred(args[-1])
    if origin is Union or str(origin) == "types.UnionType":
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(node, dict) and "type" in node:
            for m in models:
                tf = m.model_fields.get("type")
                if tf is not None and node["type"] in typing.get_args(tf.annotation):
                    return m
        return models[0] if len(models) == 1 else None
    return None


class _Deferred:
    """A container's item type; resolved once the index/key is consumed."""

    def __init__(self, ann) -> None:
        self.ann = ann
        self.model_fields: dict = {}


def _model_at(loc: list, raw: dict[str, Any]):
    """The pydantic model class that validates the mapping at `loc` (for listing allowed keys)."""
    model: Any = config_model()
    node: Any = raw
    pending = None
    for part in loc:
        if pending is not None:
            node = node[part] if _has(node, part) else None
            model = _pick_model(pending, node)
            pending = None
            continue
        if model is None or not hasattr(model, "model_fields"):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        node = node.get(part) if isinstance(node, dict) else None
        picked = _pick_model(field.annotation, node)
        if isinstance(picked, _Deferred):
            pending, model = picked.ann, None
        else:
            model = picked
    return model if pending is None else None
