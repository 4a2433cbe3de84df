"""Phi-3-vision prompt handling: text chunks and image placeholder blocks -> input ids (reference section 4).

The reference processor (`processing_phi3_v.py`) splits a prompt at `<|image_N|>` tags, tokenizes
every text chunk on its own WITH BOS (the Llama tokenizer's default, no EOS), and puts
`num_img_tokens` copies of `-N` where image N goes. Text-only prompts are tokenized whole (BOS, no
EOS). Batches are right-padded: with causal attention the states of the real tokens then do not
depend on the padding, so a batch gives the same vectors as one prompt at a time.

Here BOS is added explicitly (`add_special_tokens=False` + the tokenizer's `bos_token_id`) instead of
trusting each checkpoint's `add_bos_token` flag, so the rule holds for any tokenizer class. BOS,
EOS and pad ids are always read from the tokenizer (falling back to config.json), never hard-coded.

The tiny tokenizer of the demo checkpoints lives in bench.demo.tiny_tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.errors import ConfigError, ModelError

IMAGE_TAG = re.compile(r"<\|image_\d+\|>")
_TAG_NUMBER = re.compile(r"<\|image_(\d+)\|>")

# Files any tokenizer folder needs one of (tokenizer.json for the fast/tokenizers backend,
# tokenizer.model for a SentencePiece-only export).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


# ---- loading -------------------------------------------------------------------------------------
def load_tokenizer(folder: str | Path) -> Any:
    """The checkpoint's tokenizer (transformers AutoTokenizer, offline); ModelError if missing/broken."""
    folder = Path(folder)
    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not present:
        raise ModelError(f"no tokenizer in {folder}: looked for {' and '.join(TOKENIZER_FILES)} "
                         f"(with tokenizer_config.json); the phi3v-lm embedder needs the checkpoint's "
                         f"tokenizer: download the full checkpoint (not only the weights) or copy the "
                         f"tokenizer files of the base model into that folder")
    from transformers import AutoTokenizer

    from bench.models.hub import quiet_transformers

    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError, ImportError) as e:
        raise ModelError(f"cannot load the tokenizer in {folder} (found {', '.join(present)}): {e}") from None
    return tok


def special_ids(tokenizer: Any, config: dict | None = None) -> tuple[int, int]:
    """(bos_id, pad_id): from the tokenizer, else from config.json. Pad falls back to EOS (as Phi-3 does)."""
    config = config or {}
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        bos = config.get("bos_token_id")
    if bos is None:
        raise ModelError("the tokenizer has no BOS token and config.json no bos_token_id: Phi-3 prompts "
                         "start every text chunk with BOS")
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        pad = config.get("pad_token_id", config.get("eos_token_id"))
    if isinstance(pad, list):
        pad = pad[0]
    if pad is None:
        pad = 0  # pads are masked out and never read, any id in the vocabulary works
    return int(bos), int(pad)


# ---- prompts -------------------------------------------------------------------------------------
def split_prompt(prompt: str) -> tuple[list[str], list[int]]:
    """Text chunks around the `<|image_N|>` tags and the tags' numbers (len(chunks) = len(numbers) + 1)."""
    return IMAGE_TAG.split(prompt), [int(n) for n in _TAG_NUMBER.findall(prompt)]


def prompt_ids(tokenizer: Any, prompt: str, num_img_tokens: Sequence[int] = (),
               bos_id: int | None = None) -> list[int]:
    """Token ids of one prompt; image N becomes `num_img_tokens[N-1]` copies of `-N`.

    A prompt without tags is tokenized whole with BOS (the reference's text-only path); with tags,
    every chunk (including an empty one before the first tag) is tokenized with its own BOS.
    """
    if bos_id is None:
        bos_id = special_ids(tokenizer)[0]
    chunks, numbers = split_prompt(prompt)
    if not numbers:
        if num_img_tokens:
            raise ConfigError(f"prompt {prompt!r} has no <|image_1|> tag but {len(num_img_tokens)} image(s) "
                              f"were given; put <|image_1|> where the image goes")
        return [bos_id] + _encode(tokenizer, prompt)
    if sorted(set(numbers)) != list(range(1, len(set(numbers)) + 1)):
        raise ConfigError(f"prompt {prompt!r}: image tags must be numbered <|image_1|>, <|image_2|>, ... "
                          f"without gaps, got {sorted(set(numbers))}")
    if len(set(numbers)) != len(num_img_tokens):
        raise ConfigError(f"prompt {prompt!r} has {len(set(numbers))} image tag(s) but "
                          f"{len(num_img_tokens)} image(s) were given")
    ids = [bos_id] + _encode(tokenizer, chunks[0])
    for number, chunk in zip(numbers, chunks[1:]):
        ids += [-number] * int(num_img_tokens[number - 1])
        ids += [bos_id] + _encode(tokenizer, chunk)
    return ids


def _encode(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int):
    """Right-pad id lists -> (input_ids LongTensor [B, L], attention_mask LongTensor [B, L])."""
    import torch

    if not sequences:
        raise ValueError("no sequences to pad")
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, :len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[i, :len(seq)] = 1
    return ids, mask


def build_inputs(tokenizer: Any, prompts: Sequence[str],
                 num_img_tokens_per_image: Sequence[int | Sequence[int] | None] | None = None,
                 bos_id: int | None = None, pad_id: int | None = None):
    """Prompts -> right-padded (input_ids, attention_mask).

    `num_img_tokens_per_image[b]` is the token count of prompt b's image (an int), of its images 1..k
    (a list), or None / absent for a text-only prompt. In a batch every prompt's `<|image_N|>` refers
    to its own images; the image embedding fills the negative ids in row-major order.
    """
    default_bos, default_pad = special_ids(tokenizer)
    bos_id = default_bos if bos_id is None else bos_id
    pad_id = default_pad if pad_id is None else pad_id
    prompts = list(prompts)
    counts = list(num_img_tokens_per_image) if num_img_tokens_per_image is not None else [None] * len(prompts)
    if len(counts) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(counts)} image token counts")
    seqs = []
    for prompt, n in zip(prompts, counts):
        per_image = [] if n is None else [int(x) for x in n] if isinstance(n, (list, tuple)) else [int(n)]
        seqs.append(prompt_ids(tokenizer, prompt, per_image, bos_id))
    return pad_right(seqs, pad_id)
