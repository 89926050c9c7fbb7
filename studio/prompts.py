"""Prompt text -> what the pipeline gets: the text, weighted embeddings, or clip_skip embeddings.

diffusers' own clip_skip path reads `text_encoder.text_model.final_layer_norm`, which
transformers >= 5.6 no longer has (CLIPTextModel holds `final_layer_norm` itself), so for the
Stable Diffusion 1.x/2.x families we encode skipped-layer prompts here and hand the pipeline
`prompt_embeds`. SDXL's clip_skip path does not touch that attribute and is left to diffusers.
This module does not run the denoiser.
"""
from __future__ import annotations

import torch

from studio import loras, weighting


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


def prompt_kwargs(pipe, prompt: str, negative_prompt: str, clip_skip: int | None) -> dict:
    """The pipeline's prompt arguments: a prompt in A1111's syntax, or longer than the text
    encoder's window, as weighted embeddings in chunks (studio.weighting); any other as the text.
    `<lora:name:weight>` tags pick LoRAs (studio.loras) and are left out of the text here."""
    prompt, negative_prompt = loras.strip_tags(prompt), loras.strip_tags(negative_prompt)
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is not None and weighting.needs_embeddings(tokenizer, prompt, negative_prompt):
        return weighting.embeddings(pipe, prompt, negative_prompt, clip_skip)
    return clip_skip_kwargs(pipe, prompt, negative_prompt, clip_skip)


def clip_skip_kwargs(pipe, prompt: str, negative_prompt: str, clip_skip: int | None) -> dict:
    """Pipeline keyword arguments that apply clip_skip correctly for this pipeline."""
    if clip_skip is None:
        return {"prompt": prompt, "negative_prompt": negative_prompt}
    if "XL" in type(pipe).__name__:
        return {"prompt": prompt, "negative_prompt": negative_prompt, "clip_skip": clip_skip}
    prompt_embeds, negative_embeds = encode_with_clip_skip(pipe, [prompt, negative_prompt], clip_skip)
    return {"prompt_embeds": prompt_embeds[None], "negative_prompt_embeds": negative_embeds[None]}
