"""peft LoRA / rsLoRA / DoRA adapters of Phi-3-vision, merged at load time into bench's native modules.

An adapter folder (or hub id in the local HF cache) holds `adapter_config.json` and
`adapter_model.safetensors`, as `PeftModel.save_pretrained` writes them for a model wrapped whole
(VLM2Vec wraps `Phi3VForCausalLM`; bench.finetune wraps `causal_lm_view`). peft 0.21.2 saves, per
adapted Linear at published name `M` (e.g. `model.layers.0.self_attn.qkv_proj`,
`model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.self_attn.q_proj`):

    base_model.model.M.lora_A.weight          [r, in]
    base_model.model.M.lora_B.weight          [out, r]
    base_model.model.M.lora_magnitude_vector  [out]      (DoRA only; `.weight` appended by some versions)

The merge is bench's own (peft is not imported here), in float32, cast back to the module's dtype:
LoRA `W' = W + s·B·A` with `s = alpha / r` (`alpha / sqrt(r)` with `use_rslora`; r and alpha per
module from `rank_pattern` / `alpha_pattern`, matched as peft matches them); DoRA (peft's
tuners/lora/dora.py) `W' = m / ||W + s·B·A||_row · (W + s·B·A)`, the norm taken per output row of the
[out, in] weight (peft's `transpose(weight, fan_in_fan_out)` is the identity for nn.Linear, whose
fan_in_fan_out peft forces to False) and detached, i.e. a constant: the merged weight is exactly what
peft's unmerged forward computes. Biases are unchanged (DoRA's forward keeps the bias outside the scale).

Refused, each with one ModelError naming the problem and the fix: other peft types; features not
implemented here (bias training or lora_bias with tensors, modules_to_save tensors, layer_replication,
target_parameters, trainable tokens, aLoRA / QALoRA / VeLoRA / MiCA and other variants, inits that
rewrote the base weights (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA) unless converted, Embedding or Conv
targets); keys that map to no module of the model; target_modules that match nothing; shapes that do
not fit (an adapter for another base model). Parts of the model that the embedder does not load
(the language model in `phi3v`) are skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import ModelError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE = "adapter_model.bin"
PREFIX = "base_model.model."
LM_PARTS = ("model.layers.", "model.embed_tokens", "model.norm", "lm_head")
VISION_PART = "model.vision_embed_tokens."
_SUFFIXES = {
    ".lora_A.weight": "A",
    ".lora_B.weight": "B",
    ".lora_magnitude_vector": "m",
    ".lora_magnitude_vector.weight": "m",
}
_MAX_LISTED = 6
# Inits that change the base weights (the adapter is then relative to a residual model) unless peft
# converted the adapter on save (`path_initial_model_for_weight_conversion`, which resets this to true).
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga", "mica")
# Settings that, when set (truthy), ask for something this loader does not implement.
_UNSUPPORTED = {
    "layer_replication": "layer replication (repeated decoder layers)",
    "target_parameters": "target_parameters (LoRA on bare nn.Parameters)",
    "trainable_token_indices": "trainable token embeddings",
    "alora_invocation_tokens": "activated LoRA (aLoRA), which cannot be merged",
    "use_qalora": "QALoRA (quantized models)",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
    "use_bdlora": "block-diagonal LoRA",
    "arrow_config": "Arrow routing",
    "kasa_config": "KaSA",
    "lora_ga_config": "LoRA-GA",
    "megatron_config": "Megatron parallel layers",
    "lora_bias": "lora_bias (a bias on lora_B)",
}


def _listing(items) -> str:
    items = list(items)
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Adapter:
    """A validated peft LoRA/DoRA adapter: its config and, per published module name, A, B (and m)."""

    source: str
    folder: Path
    revision: str | None
    config: dict[str, Any]
    modules: dict[str, dict[str, Any]]
    file_hash: str
    merged: dict[str, Any] = field(default_factory=dict)  # the last merge's summary

    @property
    def kind(self) -> str:
        return "DoRA" if self.config.get("use_dora") else "LoRA"

    def rank_alpha(self, name: str) -> tuple[int, float]:
        """(r, alpha) of module `name`, with peft's rank_pattern / alpha_pattern rule."""
        cfg = self.config
        r, alpha = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
        for key, value in (cfg.get("rank_pattern") or {}).items():
            if re.match(rf"(.*\.)?({key})$", name):
                r = int(value)
                break
        for key, value in (cfg.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?({key})$", name):
                alpha = float(value)
                break
        return r, alpha

    def scaling(self, name: str) -> float:
        r, alpha = self.rank_alpha(name)
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def identity(self) -> dict[str, Any]:
        """What enters an embedder's fingerprint: the files' hash and the settings that shape the merge."""
        cfg = self.config
        return {
            "hash": self.file_hash,
            "kind": self.kind,
            "r": cfg.get("r"),
            "lora_alpha": cfg.get("lora_alpha"),
            "use_rslora": bool(cfg.get("use_rslora")),
            "modules": len(self.modules),
        }

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        out = {
            "source": self.source,
            "folder": str(self.folder),
            "kind": self.kind + (" (rsLoRA scaling)" if cfg.get("use_rslora") else ""),
            "r": cfg.get("r"),
            "lora_alpha": cfg.get("lora_alpha"),
            "base_model": cfg.get("base_model_name_or_path"),
            "hash": self.file_hash[:16],
        }
        if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
            out["patterns"] = {"rank": cfg.get("rank_pattern") or {}, "alpha": cfg.get("alpha_pattern") or {}}
        return {**out, **self.merged}

    def apply(self, model_or_view: Any) -> dict[str, Any]:
        """Merge into a Phi3VForEmbedding, a Phi3VImageEmbedding or a causal_lm_view (see merge_adapter)."""
        return merge_adapter(model_or_view, self)


def load_adapter(path_or_hub_id: str | Path, revision: str | None = None) -> Adapter:
    """Read and validate an adapter folder (or hub id in the local HF cache); tensors kept on the CPU."""
    from bench.models.hub import resolve_model_dir

    folder = resolve_model_dir(str(path_or_hub_id), revision, required=(CONFIG,))
    where = f"adapter {folder}"
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{where}: cannot read {CONFIG}: {e} (re-download or re-save the adapter)") from None
    if not isinstance(config, dict):
        raise ModelError(f"{where}: {CONFIG} must hold a JSON object")
    check_config(config, where)
    weights = folder / WEIGHTS
    if not weights.is_file():
        if (folder / PICKLE).is_file():
            src, dst = str(folder / PICKLE), str(weights)
            raise ModelError(
                f"{where} holds only pickle weights ({PICKLE}): bench never unpickles (a pickle can "
                f"run code); convert once, where you trust the file: python -c \"import torch; from "
                f"safetensors.torch import save_file; sd = torch.load({src!r}, weights_only=True); "
                f"save_file({{k: v.contiguous() for k, v in sd.items()}}, {dst!r}, "
                f"metadata={{'format': 'pt'}})\""
            )
        raise ModelError(f"{where} has no {WEIGHTS} (an interrupted download?); re-download or re-save it")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(
            f"{where}: cannot read {WEIGHTS}: {e} (corrupt or truncated; re-download it)"
        ) from None
    modules = group_tensors(tensors, config, where)
    h = hashlib.sha256(f"{_sha256(folder / CONFIG)}:{_sha256(weights)}".encode()).hexdigest()
    return Adapter(str(path_or_hub_id), folder, revision, config, modules, h)


def check_config(config: dict[str, Any], where: str) -> None:
    """Refuse what the merge does not implement; one ModelError naming the setting and the fix."""
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise ModelError(
            f"{where}: peft_type {peft_type!r} is not supported; bench merges LoRA adapters "
            f"(peft_type 'LORA', incl. rsLoRA and DoRA): merge it with peft "
            f"(`merge_and_unload()`) and save a full checkpoint instead"
        )
    fix = ("merge it with peft (`PeftModel.merge_and_unload()`, then save_pretrained) and load the merged "
           "checkpoint")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise ModelError(
                f"{where}: {key} = {config[key]!r} asks for {what}, which bench's merge does not "
                f"implement; {fix}"
            )
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise ModelError(
            f"{where}: init_lora_weights {init!r} rewrote the base weights at initialization, so the "
            f"adapter only fits that modified base; save it with peft's "
            f"`save_pretrained(..., path_initial_model_for_weight_conversion=...)` to convert it to a "
            f"plain LoRA of the original model, or {fix}"
        )
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if value is not None and (
            not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0
        ):
            raise ModelError(f"{where}: {key} must be a positive number, got {value!r}")
    targets = config.get("target_modules")
    if not (
        isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
    ):
        raise ModelError(
            f"{where}: target_modules must be a list of module names or a regex string, got {targets!r}"
        )


def group_tensors(tensors: dict[str, Any], config: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """{published module name: {"A", "B"[, "m"]}} from peft's saved keys; refuses any other tensor."""
    modules: dict[str, dict[str, Any]] = {}
    for key in sorted(tensors):
        part = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if part is None or not key.startswith(PREFIX):
            raise ModelError(
                f"{where}: {unsupported_tensor(key, config)}; {WEIGHTS} may hold only lora_A, lora_B "
                f"and lora_magnitude_vector tensors under '{PREFIX}' (merge it with peft and load the "
                f"merged checkpoint instead)"
            )
        name = key[len(PREFIX) : -len(part)]
        slot = _SUFFIXES[part]
        if slot in modules.setdefault(name, {}):
            raise ModelError(
                f"{where}: two tensors for {name}'s {slot} (both spellings of the magnitude vector)"
            )
        modules[name][slot] = tensors[key]
    dora = bool(config.get("use_dora"))
    for name, parts in modules.items():
        if "A" not in parts or "B" not in parts:
            raise ModelError(
                f"{where}: {name} has {'lora_A' if 'A' in parts else 'lora_B'} but not "
                f"{'lora_B' if 'A' in parts else 'lora_A'} (a truncated adapter; re-save it)"
            )
        if dora != ("m" in parts):
            state = "use_dora is true but" if dora else "use_dora is false but"
            raise ModelError(
                f"{where}: {state} {name} {'has no' if dora else 'has a'} lora_magnitude_vector "
                f"({CONFIG} and {WEIGHTS} do not belong together)"
            )
        a, b = parts["A"], parts["B"]
        if a.dim() != 2 or b.dim() != 2:
            raise ModelError(
                f"{where}: {name}.lora_A has shape {tuple(a.shape)} and lora_B {tuple(b.shape)}: "
                f"a convolution adapter; only Linear layers are supported"
            )
        if a.shape[0] != b.shape[1]:
            raise ModelError(
                f"{where}: {name}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} disagree on "
                f"the rank (a corrupt adapter; re-save it)"
            )
    return modules


def unsupported_tensor(key: str, config: dict[str, Any]) -> str:
    """Why a tensor of the adapter file cannot be merged, in words."""
    if "lora_embedding_A" in key or "lora_embedding_B" in key:
        return f"tensor {key} is a LoRA on an Embedding layer, which is not supported (only Linear layers)"
    if ".lora_B.bias" in key:
        return f"tensor {key} is a lora_bias, which is not supported"
    if "modules_to_save" in key or config.get("modules_to_save"):
        return (
            f"tensor {key} is a fully trained module (modules_to_save = {config.get('modules_to_save')!r}), "
            f"which is not supported"
        )
    if key.endswith(".bias") and config.get("bias", "none") != "none":
        return f"tensor {key} is a trained bias (bias = {config.get('bias')!r}), which is not supported"
    return f"tensor {key} is not a LoRA tensor bench knows"


# ---- merging -------------------------------------------------------------------------------------
def _view_of(target: Any):
    from bench.models.phi3v.layout import Phi3VCausalLMView, causal_lm_view

    if isinstance(target, Phi3VCausalLMView):
        return target
    if hasattr(target, "image_embed") and hasattr(target, "model"):  # Phi3VForEmbedding
        return causal_lm_view(target)
    if hasattr(target, "img_processor"):  # Phi3VImageEmbedding
        return causal_lm_view(image_embed=target)
    raise TypeError(
        f"merge_adapter needs a Phi3VForEmbedding, a Phi3VImageEmbedding or a causal_lm_view, "
        f"got {type(target).__name__}"
    )


def _part(name: str) -> str:
    return "vision" if name.startswith(VISION_PART) else "language_model"


def target_matches(config: dict[str, Any], name: str, module: Any) -> bool:
    """peft's `check_target_module_exists` rule (list: exact name or '.'-suffix; string: full regex
    match; 'all-linear': every Linear), minus exclude_modules and layers_to_transform (the saved tensors
    say which modules were adapted)."""
    from torch import nn

    targets = config.get("target_modules")
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            return isinstance(module, nn.Linear)
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets or ())


def merge_adapter(target: Any, adapter: Adapter) -> dict[str, Any]:
    """Merge `adapter`'s deltas in place into the native modules of `target` (a Phi3VForEmbedding, a
    Phi3VImageEmbedding or a `causal_lm_view`). Modules of a part the target does not hold (the language
    model of an image embedding alone) are skipped and counted. Returns a summary for describe()."""
    import torch
    from torch import nn

    view = _view_of(target)
    where = f"adapter {adapter.folder}"
    inner = view.model
    held = {"language_model": hasattr(inner, "layers"), "vision": hasattr(inner, "vision_embed_tokens")}
    named = dict(view.named_modules())
    missing = [n for n in adapter.modules if held[_part(n)] and n not in named]
    if missing:
        raise ModelError(
            f"{where}: {len(missing)} adapted module(s) do not exist in the model: {_listing(missing)} "
            f"(the adapter was made for another base model; use its base, "
            f"{adapter.config.get('base_model_name_or_path') or 'named in ' + CONFIG})"
        )
    if not any(target_matches(adapter.config, n, m) for n, m in named.items() if n) and all(held.values()):
        raise ModelError(
            f"{where}: target_modules {adapter.config.get('target_modules')!r} match no module of the "
            f"model (an adapter for another architecture; use its base model)"
        )
    plan, ignored = [], {"language_model": 0, "vision": 0}
    for name, parts in adapter.modules.items():
        if not held[_part(name)]:
            ignored[_part(name)] += 1
            continue
        module = named[name]
        if not isinstance(module, nn.Linear):
            raise ModelError(
                f"{where}: {name} is a {type(module).__name__}; LoRA{'/DoRA' if 'm' in parts else ''} "
                f"is supported on Linear layers only"
            )
        out_f, in_f = module.weight.shape
        r, _ = adapter.rank_alpha(name)
        want = {"A": (r, in_f), "B": (out_f, r), "m": (out_f,)}
        for slot, tensor in parts.items():
            if tuple(tensor.shape) != want[slot]:
                key = (
                    PREFIX
                    + name
                    + {"A": ".lora_A.weight", "B": ".lora_B.weight", "m": ".lora_magnitude_vector"}[slot]
                )
                raise ModelError(
                    f"{where}: {key} has shape {tuple(tensor.shape)} but the model's {name} "
                    f"({tuple(module.weight.shape)}, rank {r} from {CONFIG}) needs {want[slot]} "
                    f"(the adapter was made for another base model or its config was edited)"
                )
        plan.append((name, module, parts))
    if not plan:
        skipped = ", ".join(f"{n} {p.replace('_', ' ')}" for p, n in ignored.items() if n)
        raise ModelError(
            f"{where} changes nothing this embedder runs (all {skipped} module(s) skipped): the "
            f"phi3v embedder runs the image embedding only, use phi3v-lm for a language-model adapter"
        )
    merged = {"language_model": 0, "vision": 0}
    with torch.no_grad():
        for name, module, parts in plan:
            w = module.weight
            a = parts["A"].to(w.device, torch.float32)
            b = parts["B"].to(w.device, torch.float32)
            new = w.float() + adapter.scaling(name) * (b @ a)
            if "m" in parts:  # DoRA: per-output-row norm of the adapted weight, a constant (detached in peft)
                norm = torch.linalg.norm(new, dim=1)
                new = (parts["m"].to(w.device, torch.float32) / norm).unsqueeze(1) * new
            w.copy_(new.to(w.dtype))
            merged[_part(name)] += 1
    summary = {
        "modules_merged": {k: v for k, v in merged.items() if v},
        "modules_ignored": {k: v for k, v in ignored.items() if v},
    }
    adapter.merged = summary
    return summary
