"""A CLIPTokenizer built offline from a word list: every word one token, anything else by bytes.

CLIP's tokenizer is byte-level BPE. We give it the 256 byte symbols (alone and word-final), one
merge chain per word of the vocabulary, and CLIP's start/end tokens, so the bundled model's
captions tokenize to whole words while any other text still tokenizes (into byte pieces).
This is not a trained BPE: it knows only the words it is given.
"""
from __future__ import annotations

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Tokens per prompt, start and end included; pipelines pad every prompt to it. CLIP's is 77, but
# the longest caption is 14 and the UNet attends to every padded place: 20 made a training step
# 0.9 -> 0.75 s (batch 64, v4 -> v6) and leaves room for 18 words.
MAX_LENGTH = 20


def byte_symbols() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def apply_merges(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding: merge the best-ranked adjacent pair until none is known."""
    while len(pieces) > 1:
        pairs = [(ranks.get(p, len(ranks)), i) for i, p in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]
    return pieces


def whole_word_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges, in rank order, under which every word becomes the single token `word</w>`.

    New merges go last, so they never change how an earlier word already merges.
    """
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        while len(pieces := apply_merges(list(word[:-1]) + [word[-1] + "</w>"], ranks)) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
    return list(ranks)


def build_tokenizer(words: list[str], max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    symbols = byte_symbols()
    vocab: dict[str, int] = {}
    for token in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(token, len(vocab))
    merges = whole_word_merges(words)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for special in (BOS, EOS):
        vocab[special] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    check_whole_words(tokenizer, words)
    return tokenizer


def check_whole_words(tokenizer: CLIPTokenizer, words: list[str]) -> None:
    for word in words:
        pieces = tokenizer.tokenize(word)
        if pieces != [word + "</w>"]:
            raise ValueError(f"word {word!r} tokenizes to {pieces}, not one token")
