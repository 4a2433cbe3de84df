"""Phi-3-vision prompt handling: text chunks and image placeholder blocks -> input ids (reference section 4).

The reference processor (`processing_phi3_v.py`) splits a prompt at `<|image_N|>` tags, tokenizes
every text chunk on its own WITH BOS (the Llama tokenizer's default, no EOS), and puts
`num_img_tokens` copies of `-N` where image N goes. Text-only prompts are tokenized whole (BOS, no
EOS). Batches are right-padded: with causal attention the states of the real tokens then do not
depend on the padding, so a batch gives the same vectors as one prompt at a time.

Here BOS is added explicitly (`add_special_tokens=False` + the tokenizer's `bos_token_id`) instead of
trusting each checkpoint's `add_bos_token` flag, so the rule holds for any tokenizer class. BOS,
EOS and pad ids are always read from the tokenizer (falling back to config.json), never hard-coded.

`write_tiny_tokenizer` writes a small word-level tokenizer (tokenizer.json + tokenizer_config.json,
loadable offline by AutoTokenizer) for tiny test checkpoints.
"""

from __future__ import annotations

import json
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

# Special tokens of the tiny tokenizer, in id order. Small ids (unlike the real checkpoints' 32000+)
# so that they fit any tiny vocab_size; the code reads the ids from the tokenizer.
TINY_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>",
                       "<|system|>", "<|image|>", "<|image_1|>", "<|image_2|>")
# Words of the built-in prompt templates (bench.embedders.phi3v_lm), so they never map to <unk>.
_PROMPT_WORDS = ("represent the given image find me an everyday that matches caption summary above "
                 "in one word sentence a photo of")
_PUNCTUATION = (".", ",", ":", ";", "!", "?", "'", '"', "(", ")", "-", "/")
_FALLBACK_WORDS = ("a an and on the in at of with next to left right top bottom center corner "
                   "background picture image drawing shape red green blue yellow white black circle "
                   "square triangle star cross diamond small large one two three photo").split()


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


# ---- a tiny tokenizer for tests --------------------------------------------------------------------
def _default_words() -> list[str]:
    try:
        from bench.data.synthetic import caption_vocabulary
    except ImportError:
        return list(_FALLBACK_WORDS)
    return list(caption_vocabulary())


def tiny_vocabulary(words: Sequence[str] | None = None) -> dict[str, int]:
    """Token -> id of the tiny tokenizer: specials, '▁', '▁\\n', punctuation, then '▁word' per word."""
    words = _default_words() if words is None else list(words)
    vocab: dict[str, int] = {}
    for token in (*TINY_SPECIAL_TOKENS, "\u2581", "\u2581\n", *_PUNCTUATION):
        vocab.setdefault(token, len(vocab))
    for word in [*words, *_PROMPT_WORDS.split()]:
        for piece in re.findall(r"\w+", word.lower()):
            vocab.setdefault("\u2581" + piece, len(vocab))
    return vocab


def write_tiny_tokenizer(folder: str | Path, words: Sequence[str] | None = None,
                         vocab_size: int | None = None) -> int:
    """Write a tiny lower-casing word-level tokenizer into `folder`; returns its size (number of ids).

    Llama-like surface (Metaspace '▁' word pieces, BOS '<s>' prepended, no EOS, pad = EOS =
    '<|endoftext|>') with the specials at small ids. `vocab_size` (default: config.json's in `folder`,
    if any) is a hard limit: words beyond it are dropped; ModelError if even the specials do not fit.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if vocab_size is None and (folder / "config.json").is_file():
        cfg = json.loads((folder / "config.json").read_text())
        vocab_size = cfg.get("vocab_size")
    vocab = tiny_vocabulary(words)
    n_fixed = len(TINY_SPECIAL_TOKENS) + 2 + len(_PUNCTUATION)
    if vocab_size is not None:
        if vocab_size < n_fixed:
            raise ModelError(f"vocab_size {vocab_size} is too small for the tiny tokenizer's {n_fixed} special "
                             f"and punctuation tokens")
        vocab = {t: i for t, i in vocab.items() if i < vocab_size}

    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # '\n' is isolated first so that the word after it still gets its '▁' (E5-V prompts use newlines).
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always"),
        pre_tokenizers.Punctuation(),
    ])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TINY_SPECIAL_TOKENS])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "padding_side": "right",
        "model_max_length": 131072, "clean_up_tokenization_spaces": False,
    }, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>",
    }, indent=2))
    return len(vocab)
