"""A tiny random-initialized CLIP checkpoint in the real on-disk layout, for tests and the demo.

Layout = what `huggingface-cli download openai/clip-vit-base-patch32` gives: config.json,
model.safetensors, preprocessor_config.json, vocab.json + merges.txt (+ tokenizer.json,
tokenizer_config.json, special_tokens_map.json). The BPE vocabulary is real byte-level CLIP BPE
(256 byte symbols, their `</w>` forms, merges), just with merges learned from a small word list.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

STAMP = ".bench_tiny_clip.json"  # written last: its presence means the checkpoint is complete
_VERSION = 2  # bump when the generated files change, so stale copies are rebuilt

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
IMAGE_SIZE, PATCH_SIZE, MAX_TOKENS = 32, 8, 77

_FALLBACK_WORDS = (
    "a an the of in on with and photo picture image small large big red green blue yellow black white "
    "orange purple gray circle square triangle cross star stripe stripes dot dots shape shapes cat dog "
    "car bird tree house person man woman boy girl sitting standing on top left right center background "
    "bright dark two three one many near next to"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode symbol table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _default_words() -> list[str]:
    try:  # the synthetic dataset's captions, so every caption word is one token
        from bench.demo.synthetic import caption_vocabulary  # lazy: optional dependency
    except ImportError:
        return list(_FALLBACK_WORDS)
    return list(caption_vocabulary())


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain CLIP BPE on one pre-token: repeatedly merge the lowest-ranked adjacent pair."""
    word = list(symbols)
    while len(word) > 1:
        pair = min(zip(word, word[1:]), key=lambda p: ranks.get(p, float("inf")))
        if pair not in ranks:
            break
        merged, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


def build_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-style BPE vocabulary and merges in which every word of `words` is a single token."""
    import re

    byte_map = _bytes_to_unicode()
    base = list(byte_map.values())
    vocab_list = base + [s + "</w>" for s in base]
    seen = set(vocab_list)
    ranks: dict[tuple[str, str], int] = {}
    pieces: list[str] = []
    for w in words:
        pieces += re.findall(r"[^\W\d_]+|\d", str(w).lower())
    for piece in dict.fromkeys(pieces):  # dedupe, keep order -> deterministic
        symbols = [byte_map[b] for b in piece.encode("utf-8")]
        symbols[-1] += "</w>"
        # New merges rank after all earlier ones, so they never change how earlier words split;
        # chain the pieces the current merges leave until the word is one token (terminates: each
        # round removes at least one piece).
        while len(toks := _bpe(symbols, ranks)) > 1:
            cur = toks[0]
            for t in toks[1:]:
                ranks.setdefault((cur, t), len(ranks))
                cur += t
                if cur not in seen:
                    seen.add(cur)
                    vocab_list.append(cur)
    vocab_list += [BOS, EOS]
    return {tok: i for i, tok in enumerate(vocab_list)}, sorted(ranks, key=ranks.get)


def _stamp(seed: int, words: list[str]) -> dict:
    return {"version": _VERSION, "seed": seed,
            "words_sha256": hashlib.sha256("\n".join(words).encode()).hexdigest()}


def make_tiny_clip(out_dir: str | Path, seed: int = 0, words: list[str] | None = None) -> Path:
    """Write a tiny seeded CLIPModel checkpoint to `out_dir` (skipped when already there) and return it."""
    out = Path(out_dir)
    words = list(words) if words is not None else _default_words()
    stamp = _stamp(seed, words)
    stamp_path = out / STAMP
    try:
        if json.loads(stamp_path.read_text()) == stamp:
            return out
    except (OSError, ValueError):
        pass
    out.mkdir(parents=True, exist_ok=True)
    stamp_path.unlink(missing_ok=True)

    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from bench.models.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    vocab, merges = build_bpe(words)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                    encoding="utf-8")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)
    tokenizer.save_pretrained(out)

    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=MAX_TOKENS,
                         bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS]),
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=24,
    )
    with torch.random.fork_rng(devices=[]):  # seeded weights without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(out, safe_serialization=True)

    preprocessor = {
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(OPENAI_CLIP_STD),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": IMAGE_SIZE},
    }
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    stamp_path.write_text(json.dumps(stamp))
    return out
