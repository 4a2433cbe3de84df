"""The tiny word-level tokenizer of the demo's generated Phi-3-vision checkpoints (and the tests).

Llama-like surface (Metaspace word pieces, BOS prepended), small ids so it fits any tiny vocab_size.
Demo/test fixture only: real checkpoints ship their own tokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from bench.errors import ModelError

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


def _default_words() -> list[str]:
    try:
        from bench.demo.synthetic import caption_vocabulary
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
