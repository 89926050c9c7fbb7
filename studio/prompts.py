"""Prompt text -> what the text encoder sees: token-limit warnings and clip_skip embeddings.

diffusers' own clip_skip path reads `text_encoder.text_model.final_layer_norm`, which
transformers >= 5.6 no longer has (CLIPTextModel holds `final_layer_norm` itself), so for the
Stable Diffusion 1.x/2.x families we encode skipped-layer prompts here and hand the pipeline
`prompt_embeds`. SDXL's clip_skip path does not touch that attribute and is left to diffusers.
This module does not run the denoiser.
"""
from __future__ import annotations

import torch


def token_limit_warning(tokenizer, text: str, name: str = "prompt") -> str | None:
    """A warning when `text` is longer than the text encoder reads, naming what is cut."""
    if tokenizer is None or not text:
        return None
    limit = tokenizer.model_max_length - 2  # the start and end tokens take two places
    ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
    if len(ids) <= limit:
        return None
    ignored = tokenizer.decode(ids[limit:]).strip()
    return (f"{name} is {len(ids)} tokens; the text encoder reads the first {limit}, "
            f"so this part is ignored: \"{ignored[:80]}{'...' if len(ignored) > 80 else ''}\"")


def final_layer_norm(text_encoder) -> torch.nn.Module:
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


@torch.no_grad()
def encode_with_clip_skip(pipe, texts: list[str], clip_skip: int) -> torch.Tensor:
    """Hidden states `clip_skip` layers before the last, through the final layer norm (A1111's meaning
    shifted by one, as diffusers counts it: clip_skip=1 uses the penultimate layer)."""
    tokens = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
    device = pipe.text_encoder.device
    out = pipe.text_encoder(tokens.input_ids.to(device), output_hidden_states=True)
    hidden = out.hidden_states[-(clip_skip + 1)]
    return final_layer_norm(pipe.text_encoder)(hidden).to(pipe.text_encoder.dtype)


def clip_skip_kwargs(pipe, prompt: str, negative_prompt: str, clip_skip: int | None) -> dict:
    """Pipeline keyword arguments that apply clip_skip correctly for this pipeline."""
    if clip_skip is None:
        return {"prompt": prompt, "negative_prompt": negative_prompt}
    if "XL" in type(pipe).__name__:
        return {"prompt": prompt, "negative_prompt": negative_prompt, "clip_skip": clip_skip}
    prompt_embeds, negative_embeds = encode_with_clip_skip(pipe, [prompt, negative_prompt], clip_skip)
    return {"prompt_embeds": prompt_embeds[None], "negative_prompt_embeds": negative_embeds[None]}
