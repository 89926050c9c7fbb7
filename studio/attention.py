"""Which word painted which pixels: per-token cross-attention maps, recorded at every step.

`AttentionRecorder` wraps the processors of the UNet's cross-attention layers only (diffusers
names them `...attn2.processor`); self-attention and the wrapped processor itself (SDPA, or
sliced attention) are untouched, so the pixels are those of a run without recording. Beside each
call it computes softmax(QK^T / sqrt(d)) for the conditional half with diffusers' own
`Attention.get_attention_scores`, averages it over heads, resizes it to the latent's size and
averages over the layers (as DAAM does, summing every layer's heat map). `take()` gives one map
per prompt token for the step: the first UNet call of the step (Heun-type samplers call it
twice), (pictures, tokens, h, w).

`words` splits a prompt into the words a person typed: CLIP's subword tokens merged (a token
ending in "</w>" ends a word), the start, end and padding tokens left out. This module knows
nothing of Gradio.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from studio import weighting
from studio.errors import StudioError

CROSS = "attn2.processor"  # diffusers' name of a transformer block's cross-attention processor
NO_TEXT = ("record_attention: this model is unconditional: it has no text, so there is no attention to "
           "words to record.")


@dataclasses.dataclass(frozen=True)
class Word:
    text: str
    tokens: tuple[int, ...]  # 0-based positions among the prompt's tokens (the first after the start token)


def prompt_tokens(tokenizer, prompt: str) -> list[str]:
    """The tokens of the prompt's first chunk (studio.weighting: A1111's syntax removed) as the
    text encoder sees them, without start and end: the key positions 1.. of cross-attention."""
    first = weighting.token_weights(tokenizer, prompt)[0]
    return tokenizer.convert_ids_to_tokens([token for token, _ in first])


def words(tokens: list[str]) -> list[Word]:
    """The words of a prompt's tokens: subwords merged; punctuation alone is not a word."""
    found, pending = [], []
    for position, token in enumerate(tokens):
        pending.append(position)
        if token.endswith("</w>") or position == len(tokens) - 1:
            text = "".join(tokens[p] for p in pending).replace("</w>", "")
            if any(ch.isalnum() for ch in text):
                found.append(Word(text, tuple(pending)))
            pending = []
    return found


def word_map(maps: torch.Tensor, word: Word) -> torch.Tensor:
    """(..., tokens, h, w) maps -> (..., h, w): the word's tokens summed."""
    return maps[..., list(word.tokens), :, :].float().sum(-3)


class CrossAttentionProbe:
    """Wraps one cross-attention processor; reports its conditional half's attention map."""

    def __init__(self, inner, recorder: AttentionRecorder):
        self.inner, self.recorder = inner, recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        if encoder_hidden_states is not None and hidden_states.ndim == 3:
            self.recorder.add(self.probabilities(attn, hidden_states, encoder_hidden_states))
        return out

    def probabilities(self, attn, hidden_states, context) -> torch.Tensor:
        """(pictures, queries, tokens), averaged over heads, for the conditional half."""
        images = self.recorder.images
        if hidden_states.shape[0] == 2 * images:  # classifier-free guidance: [unconditional, conditional]
            hidden_states, context = hidden_states[images:], context[images:]
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key = attn.to_q(hidden_states), attn.to_k(context)
        if attn.norm_q is not None or attn.norm_k is not None:  # qk-norm acts per head
            split = (images, -1, attn.heads, query.shape[-1] // attn.heads)
            query = (attn.norm_q or (lambda x: x))(query.view(split).transpose(1, 2)).transpose(1, 2).flatten(2)
            key = (attn.norm_k or (lambda x: x))(key.view(split).transpose(1, 2)).transpose(1, 2).flatten(2)
        scores = attn.get_attention_scores(attn.head_to_batch_dim(query), attn.head_to_batch_dim(key))
        return scores.view(images, attn.heads, *scores.shape[1:]).mean(1)


class AttentionRecorder:
    """Install on a UNet for one run with `install()`; `remove()` puts its processors back."""

    def __init__(self, unet, images: int, latent_size: tuple[int, int], tokens: list[str]):
        self.unet, self.images, self.size = unet, images, latent_size
        self.token_names, self.tokens = tokens, len(tokens)  # the prompt's, without start and end
        self._saved = None
        self._sum, self._layers = None, 0
        self._step: torch.Tensor | None = None  # the step's first UNet call's map

    def install(self) -> None:
        self._saved = dict(self.unet.attn_processors)
        self.unet.set_attn_processor({name: CrossAttentionProbe(p, self) if name.endswith(CROSS) else p
                                      for name, p in self._saved.items()})
        self._hook = self.unet.register_forward_hook(self._call_done)

    def remove(self) -> None:
        if self._saved is not None:
            self.unet.set_attn_processor(self._saved)
            self._hook.remove()
            self._saved = None

    def add(self, probabilities: torch.Tensor) -> None:
        """One layer's (pictures, queries, tokens): to (pictures, tokens, h, w) at the latent's size."""
        h, w = self.size
        # the UNet halves the size level by level, rounding up: find the level with these queries
        side = next((-(-h // 2 ** k), -(-w // 2 ** k)) for k in range(8)
                    if -(-h // 2 ** k) * -(-w // 2 ** k) == probabilities.shape[1])
        layer = probabilities[:, :, 1:1 + self.tokens].transpose(1, 2)
        layer = layer.reshape(self.images, layer.shape[1], *side).float()
        layer = F.interpolate(layer, size=self.size, mode="bilinear", align_corners=False)
        self._sum = layer if self._sum is None else self._sum + layer
        self._layers += 1

    def _call_done(self, module, args, output) -> None:
        if self._sum is not None and self._step is None:
            self._step = (self._sum / self._layers).to("cpu", torch.float16)
        self._sum, self._layers = None, 0

    def take(self) -> torch.Tensor | None:
        """The finished step's maps, (pictures, tokens, h, w) float16 on the CPU."""
        step, self._step = self._step, None
        return step


def for_run(pipe, request, images: int, warnings: list[str]) -> AttentionRecorder | None:
    """The recorder for one run of `pipe`, if the request asks for one (request's size resolved)."""
    if not request.record_attention:
        return None
    if getattr(pipe, "tokenizer", None) is None:
        warnings.append(NO_TEXT)
        return None
    tokens = prompt_tokens(pipe.tokenizer, request.prompt)
    factor = getattr(pipe, "vae_scale_factor", 8)
    return AttentionRecorder(pipe.unet, images, (request.height // factor, request.width // factor), tokens)


def run_words(trajectory) -> list[Word]:
    return words(trajectory.tokens) if trajectory is not None and trajectory.tokens else []


def recorded(trajectory) -> bool:
    return bool(trajectory is not None and trajectory.steps and all(s.attention is not None for s in trajectory.steps))


def find_word(trajectory, text: str) -> list[Word]:
    """Every occurrence of the word `text` in the run's prompt, or StudioError naming it."""
    found = [w for w in run_words(trajectory) if w.text.lower() == text.strip().lower()]
    if not found:
        known = ", ".join(dict.fromkeys(w.text for w in run_words(trajectory)))
        raise StudioError(f"attention={text!r} is not a word of this run's prompt (its words: {known}).")
    return found


def maps_at(trajectory, step: int | None, picture: int = 0) -> torch.Tensor:
    """(tokens, h, w) for picture `picture` at 0-based `step`, or averaged over every step (None)."""
    if not recorded(trajectory):
        raise StudioError("This run did not record attention: run it again with record_attention "
                          "(the viewer's toggle, generate --attention).")
    if step is not None:
        return trajectory.steps[step].attention[picture].float()
    return torch.stack([s.attention[picture] for s in trajectory.steps]).float().mean(0)


def heat(maps: torch.Tensor, found: list[Word], size: tuple[int, int], stretch: bool = False) -> np.ndarray:
    """The words' summed map at `size` (width, height), 0 to 1: 1 where it is highest, 0 where it
    is none, or with `stretch` where it is lowest (a word that is everywhere shows where it is most)."""
    total = sum(word_map(maps, w) for w in found)
    height, width = size[1], size[0]
    total = F.interpolate(total[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    if stretch:
        total = total - total.min()
    return (total / total.max().clamp(min=1e-12)).clamp(0, 1).numpy()


def grayscale(heat_map: np.ndarray) -> Image.Image:
    """The map as a grayscale picture, brightest where the attention is highest."""
    return Image.fromarray(np.round(heat_map * 255).astype(np.uint8), mode="L")


def spotlight(picture: Image.Image, heat_map: np.ndarray, floor: float = 0.2) -> Image.Image:
    """`picture` lit by the map: full brightness where the attention is highest, dimmed to
    `floor` where there is none."""
    base = np.asarray(picture.convert("RGB").resize(heat_map.shape[::-1], Image.BILINEAR), dtype=np.float32)
    return Image.fromarray(np.round(base * (floor + (1 - floor) * heat_map[..., None])).astype(np.uint8))


def hot(heat_map: np.ndarray) -> Image.Image:
    """The map in the "hot" colours: black, red, yellow, white as the attention rises."""
    rgb = np.stack([np.clip(3 * heat_map - k, 0, 1) for k in range(3)], -1)
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8))


def ranking(maps: torch.Tensor, trajectory, x: float, y: float) -> list[tuple[str, float]]:
    """The words by their share of the attention at (x, y), given as fractions of the picture's
    width and height: [(word, share), ...], highest first (the rest goes to the start token)."""
    h, w = maps.shape[-2:]
    row, col = min(int(y * h), h - 1), min(int(x * w), w - 1)
    shares: dict[str, float] = {}
    for word in run_words(trajectory):
        shares[word.text] = shares.get(word.text, 0.0) + float(word_map(maps, word)[row, col])
    return sorted(shares.items(), key=lambda item: -item[1])


def most_focused(maps: torch.Tensor, trajectory) -> str | None:
    """The word whose map is most concentrated (its peak over its mean): the viewer's first pick."""
    focus = {w.text: float(m.max() / m.mean().clamp(min=1e-12))
             for w in run_words(trajectory) for m in [word_map(maps, w)]}
    return max(focus, key=focus.get) if focus else None
