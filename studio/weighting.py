"""AUTOMATIC1111's prompt syntax and long prompts, as the embeddings the pipeline gets.

- `(word)` multiplies the attention to those tokens by 1.1, `((word))` by 1.21, `(word:1.3)` sets
  it, `[word]` divides it by 1.1; `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are literal; an unclosed
  bracket weights the rest of the prompt, a stray closing one is text (as in A1111).
- `BREAK` (upper case, a word of its own) ends the chunk, padding it out.
- `<lora:name:weight>` picks a LoRA (studio.loras) and is not part of the text.
- A prompt longer than the text encoder's window is encoded in chunks of the window minus its
  start and end tokens (75 for CLIP's 77; 18 for the bundled model's 20), each encoded on its own,
  and the chunks' embeddings are concatenated; the negative prompt gets as many chunks (empty ones
  added), so both halves of CFG have one length. SDXL: both encoders per chunk, pooled from the
  first chunk.
- Weights are A1111's: each token's embedding times its weight, then the chunk rescaled to its
  mean before weighting.

A prompt with no syntax that fits the window is not handled here: the pipeline gets the text,
as before, so its pixels stay those of a plain diffusers call. This module does not run the denoiser.
"""
from __future__ import annotations

import re

import torch

from studio import loras

UP = 1.1
SYNTAX = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
BREAK = re.compile(r"\s*\bBREAK\b\s*")
Fragments = list  # [(text, weight)], with ("BREAK", -1.0) where a chunk ends


def parse(text: str) -> Fragments:
    """[(text, weight), ...] of a prompt in A1111's syntax, neighbours of one weight merged."""
    text = loras.strip_tags(text)  # <lora:name:weight> picks a LoRA (studio.loras); it is not text
    out: list[list] = []
    round_open, square_open = [], []

    def scale(start: int, factor: float) -> None:
        for fragment in out[start:]:
            fragment[1] *= factor

    for match in SYNTAX.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            out.append([token[1], 1.0])
        elif token == "(":
            round_open.append(len(out))
        elif token == "[":
            square_open.append(len(out))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale(round_open.pop(), UP)
        elif token == "]" and square_open:
            scale(square_open.pop(), 1 / UP)
        else:  # text; also a stray closing bracket or ":1.3)", kept as text as A1111 keeps them
            for k, part in enumerate(BREAK.split(token)):
                out += [["BREAK", -1.0]] if k else []
                out += [[part, 1.0]] if part else []
    for start in round_open:
        scale(start, UP)
    for start in square_open:
        scale(start, 1 / UP)
    merged: list[list] = []
    for text_, weight in out:
        if merged and merged[-1][1] == weight and weight != -1.0:
            merged[-1][0] += text_
        else:
            merged.append([text_, weight])
    return [(t, w) for t, w in merged] or [("", 1.0)]


def plain_text(text: str) -> str:
    """The prompt's words without the syntax: what the text encoder reads."""
    return "".join(" " if w == -1.0 else t for t, w in parse(text))


def token_weights(tokenizer, text: str) -> list[list[tuple[int, float]]]:
    """The prompt's tokens with their weights, cut into chunks of the window minus start and end."""
    size = tokenizer.model_max_length - 2
    chunks, current = [], []
    for fragment, weight in parse(text):
        if weight == -1.0:  # BREAK
            chunks.append(current)
            current = []
            continue
        for token in tokenizer(fragment, add_special_tokens=False, verbose=False).input_ids:  # chunked below
            if len(current) == size:
                chunks.append(current)
                current = []
            current.append((token, weight))
    return chunks + [current] if current or not chunks else chunks


def token_count(tokenizer, text: str) -> tuple[int, int]:
    """(tokens, what the chunks hold): "23/75" as A1111 shows it under the prompt."""
    chunks = token_weights(tokenizer, text)
    return sum(map(len, chunks)), len(chunks) * (tokenizer.model_max_length - 2)


def needs_embeddings(tokenizer, *texts: str) -> bool:
    """Whether any of `texts` has syntax or is longer than one window: then it goes through here."""
    return any(parse(t) != [(t, 1.0)] or len(token_weights(tokenizer, t)) > 1 for t in texts)


@torch.no_grad()
def encode_chunks(tokenizer, encoder, chunks, layer: int | None, norm=None, pooled: bool = False):
    """Each chunk's weighted embedding, concatenated: (1, chunks x window, dim), and the first
    chunk's pooled embedding if `pooled`. `layer`: the hidden state to take (None: the last, as
    the encoder gives it), then `norm` if given (clip_skip's final layer norm)."""
    device, window = encoder.device, tokenizer.model_max_length
    pieces, first_pooled = [], None
    for chunk in chunks:
        ids = [tokenizer.bos_token_id] + [t for t, _ in chunk] + [tokenizer.eos_token_id]
        weights = torch.tensor([1.0] + [w for _, w in chunk] + [1.0] * (window - len(chunk) - 1))
        ids = torch.tensor([ids + [tokenizer.pad_token_id] * (window - len(ids))], device=device)
        out = encoder(ids, output_hidden_states=True)
        hidden = out[0] if layer is None else out.hidden_states[layer]
        hidden = hidden if norm is None else norm(hidden)
        if first_pooled is None and pooled:
            first_pooled = out[0]  # CLIPTextModelWithProjection: text_embeds
        before = hidden.float().mean()
        weighted = hidden.float() * weights.to(device)[None, :, None]
        after = weighted.mean()
        # A1111 restores the chunk's mean after weighting. A mean of exactly 0 (seen with a tiny
        # random encoder on one CPU, its layer-normed outputs summing to nothing) has nothing to
        # restore, and 0 / 0 would make every embedding NaN.
        if after != 0:
            weighted = weighted * (before / after)
        pieces.append(weighted.to(hidden.dtype))
    return torch.cat(pieces, dim=1), first_pooled


def embeddings(pipe, prompt: str, negative_prompt: str, clip_skip: int | None = None) -> dict:
    """The pipeline's keyword arguments for a weighted or long prompt: prompt_embeds and
    negative_prompt_embeds (SDXL: and the pooled ones), of one length."""
    xl = getattr(pipe, "text_encoder_2", None) is not None
    pairs = [(pipe.tokenizer, pipe.text_encoder)] + ([(pipe.tokenizer_2, pipe.text_encoder_2)] if xl else [])
    norm = None
    if xl:  # diffusers' SDXL reads the penultimate layer, and clip_skip more before it
        layer = -2 if clip_skip is None else -(clip_skip + 2)
    else:  # SD 1.x/2.x: the last; clip_skip (studio.prompts): earlier, through the final layer norm
        layer = None if clip_skip is None else -(clip_skip + 1)
        norm = None if clip_skip is None else getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm
    halves = [token_weights(pipe.tokenizer, prompt), token_weights(pipe.tokenizer, negative_prompt)]
    count = max(map(len, halves))
    halves = [h + [[]] * (count - len(h)) for h in halves]  # the negative as long as the prompt, or the other way
    kwargs = {}
    for name, chunks in zip(("prompt_embeds", "negative_prompt_embeds"), halves):
        encoded = [encode_chunks(t, e, chunks, layer, norm, pooled=xl and k == len(pairs) - 1)
                   for k, (t, e) in enumerate(pairs)]
        kwargs[name] = torch.cat([e for e, _ in encoded], dim=-1).to(pipe.text_encoder.dtype)
        if xl:
            kwargs[name.replace("prompt_embeds", "pooled_prompt_embeds")] = encoded[-1][1]
    return kwargs
