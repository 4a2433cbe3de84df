"""Tiny checkpoints in the published layout of VLM2Vec's full fine-tune (`TIGER-Lab/VLM2Vec-Full`).

What VLM2Vec's v1 code writes (github.com/TIGER-AI-Lab/VLM2Vec, branch v1; read at commit 015ea36,
"update demo", 2024-11-01, the code of the VLM2Vec-Full / VLM2Vec-LoRA release, and unchanged in
substance at the branch head 28fdbdd):

- `src/model.py` `MMEBModel.build`: `AutoConfig.from_pretrained(model_name, trust_remote_code on)`,
  then `config.use_cache = False` and `config.padding_side = "right"` (so both land in the saved
  config.json), `AutoModelForCausalLM.from_pretrained(..., torch_dtype=torch.bfloat16,
  trust_remote_code on)`: microsoft/Phi-3.5-vision-instruct's own `Phi3VForCausalLM`
  (model_type `phi3_v`), trained in bf16. With `--lora`, peft `LoraConfig(r=lora_r, lora_alpha,
  target_modules=lora_target_modules.split(','), lora_dropout, init_lora_weights="gaussian",
  use_dora=True)` wraps that whole model (`src/arguments.py`: r 16, alpha 64, dropout 0.1, targets
  `qkv_proj,o_proj,gate_up_proj,down_proj,k_proj,q_proj,out_proj,v_proj`).
- `src/trainer.py` `MMEBTrainer._save`: strips the `encoder.` prefix and calls
  `encoder.save_pretrained(output_dir, state_dict=..., safe_serialization=args.save_safetensors)`:
  for a full fine-tune, transformers' (4.39.3, `requirements.txt`) sharded safetensors
  (`model-0000K-of-0000N.safetensors` + `model.safetensors.index.json`, 5 GB shards filled in module
  order) under the hub model's own names (`model.embed_tokens`, `model.vision_embed_tokens.*`,
  `model.layers.N.*`, `model.norm`, `lm_head.weight` included), tensors in bf16, `torch_dtype:
  bfloat16` in config.json; for LoRA, peft's `adapter_config.json` + `adapter_model.safetensors`.
- `train.py` ends with `processor.save_pretrained(output_dir)` (the Phi-3.5-V processor loaded with
  `num_crops=model_args.num_crops`, default 16 in `src/arguments.py`, 4 in the README's training
  command): the checkpoint carries its tokenizer and `preprocessor_config.json`. `demo.py` and
  `eval.py` load the processor from the fine-tuned repo itself
  (`AutoProcessor.from_pretrained("TIGER-Lab/VLM2Vec-Full", trust_remote_code on, num_crops=4)`),
  so VLM2Vec evaluates with num_crops 4 whatever the file says: set `num_crops: 4` in bench.
- `MMEBModel.load` for LoRA: the base (`--model_name microsoft/Phi-3.5-vision-instruct`) plus
  `PeftModel.from_pretrained(base, checkpoint_path)` and `merge_and_unload()`
  (`--checkpoint_path TIGER-Lab/VLM2Vec-LoRA`): in bench, `model:` the base and `adapter:` the LoRA.

So a VLM2Vec-Full folder is a Phi-3.5-vision checkpoint with other values: bench's loaders read it as
they read the base (key names, config, tokenizer, processor config all in place); this generator
writes that layout (bf16 tensors, module-order shards, VLM2Vec's config keys, preprocessor num_crops
16) from a tiny base with perturbed ("fine-tuned") weights, so tests can check that nothing in it trips
the loaders. Not verified here (no network): the hub repo's exact file list.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SHARD = "model-{:05d}-of-{:05d}.safetensors"


def make_tiny_vlm2vec_full(out_dir: str | Path, base_dir: str | Path, seed: int = 7, shards: int = 2,
                           num_crops: int = 16, noise: float = 0.05) -> Path:
    """Write a "fully fine-tuned" copy of the tiny Phi-3-V checkpoint in `base_dir` in VLM2Vec's layout."""
    import torch
    from safetensors.torch import save_file

    from bench.models.phi3v.checkpoint import Phi3VCheckpoint

    base, out = Path(base_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Phi3VCheckpoint(base)
    tensors = ckpt.read(list(ckpt.keys()))
    gen = torch.Generator().manual_seed(seed)
    tuned = {k: (v + noise * v.std().nan_to_num(0.0) * torch.randn(v.shape, generator=gen)).to(torch.bfloat16)
             for k, v in sorted(tensors.items())}
    # transformers' module order (Phi3VForCausalLM: model.embed_tokens, model.vision_embed_tokens,
    # model.layers, model.norm, lm_head), split into `shards` files of about equal size.
    rank = {"model.embed_tokens.": 0, "model.vision_embed_tokens.": 1, "model.layers.": 2, "model.norm.": 3}
    order = sorted(tuned, key=lambda k: (next((v for p, v in rank.items() if k.startswith(p)), 4),
                                         _natural(k)))
    total = sum(t.numel() * t.element_size() for t in tuned.values())
    weight_map, part, size, index = {}, {}, 0, 1
    for k in order:
        part[k] = tuned[k]
        size += tuned[k].numel() * tuned[k].element_size()
        if size >= total * index / shards and index < shards:
            weight_map.update(dict.fromkeys(part, SHARD.format(index, shards)))
            save_file(part, str(out / SHARD.format(index, shards)), metadata={"format": "pt"})
            part, index = {}, index + 1
    if part:
        weight_map.update(dict.fromkeys(part, SHARD.format(index, shards)))
        save_file(part, str(out / SHARD.format(index, shards)), metadata={"format": "pt"})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    config = json.loads((base / "config.json").read_text())
    config.update({
        "_name_or_path": "microsoft/Phi-3.5-vision-instruct", "torch_dtype": "bfloat16", "use_cache": False,
        "padding_side": "right", "transformers_version": "4.39.3",
        "auto_map": {"AutoConfig": "configuration_phi3_v.Phi3VConfig",
                     "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM"},
    })
    (out / "config.json").write_text(json.dumps(config, indent=2))
    pre = json.loads((base / "preprocessor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(json.dumps({**pre, "num_crops": num_crops}, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (base / name).is_file():
            shutil.copy(base / name, out / name)
    # The remote code transformers copies beside a trust_remote_code model (never read by bench).
    for name in ("configuration_phi3_v.py", "modeling_phi3_v.py", "processing_phi3_v.py"):
        (out / name).write_text("# remote code of microsoft/Phi-3.5-vision-instruct (placeholder)\n")
    return out


def _natural(key: str) -> tuple:
    """'layers.10' after 'layers.9', as module order has it."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split("."))
