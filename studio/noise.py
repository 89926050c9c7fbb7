"""The starting noise of a text-to-image run, with AUTOMATIC1111's variation seed.

Without a variation (subseed_strength 0) the pipeline draws its own noise from the per-image
generators, as it always has (pixel identity with diffusers). With one, each picture's noise is
the spherical interpolation (slerp) from its seed's noise towards the variation seed's, by the
strength: 0 is the seed's picture, 1 the variation seed's, and in between lie near variations of
one picture. The seed's noise is drawn from the run's own generators, exactly as the pipeline
would draw it, so the samplers' later noise is what it would be. One variation seed serves the
whole batch (A1111 adds each picture's index); each picture's infotext then remakes it alone.
"""
from __future__ import annotations

import dataclasses
import random

import torch
from diffusers.utils.torch_utils import randn_tensor

from studio.errors import bad_argument
from studio.fields import MAX_SEED, GenerationRequest

PARALLEL = 0.9995  # above this cosine the two noises are nearly parallel: interpolate straight (as A1111)


def slerp(strength: float, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Per picture (the first axis): from `start` at 0 to `end` at 1 along the great circle."""
    a, b = start.flatten(1).double(), end.flatten(1).double()
    cosine = (torch.nn.functional.normalize(a, dim=1) * torch.nn.functional.normalize(b, dim=1)).sum(1)
    omega = torch.acos(cosine.clamp(-1, 1)).unsqueeze(1)
    curved = (torch.sin((1 - strength) * omega) * a + torch.sin(strength * omega) * b) / torch.sin(omega)
    straight = (1 - strength) * a + strength * b
    mixed = torch.where(cosine.unsqueeze(1) > PARALLEL, straight, curved)
    return mixed.reshape(start.shape).to(start.dtype)


def variation(pipe, request: GenerationRequest, generators: list[torch.Generator], width: int,
              height: int) -> tuple[dict, GenerationRequest]:
    """The pipeline's `latents` argument for the request's variation seed ({} without one), and
    the request with its variation seed resolved (-1 drawn)."""
    if request.subseed_strength == 0:
        return {}, request
    if request.is_img2img or not hasattr(pipe, "vae_scale_factor"):
        raise bad_argument("subseed_strength", request.subseed_strength,
                           "0 here: a variation seed works in text to image, on text-to-image models")
    subseed = request.subseed if request.subseed >= 0 else random.randrange(MAX_SEED + 1)
    unet = pipe.unet
    shape = (len(generators), unet.config.in_channels, height // pipe.vae_scale_factor,
             width // pipe.vae_scale_factor)
    device, dtype = pipe._execution_device, unet.dtype
    own = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
    other = randn_tensor(shape, generator=[torch.Generator("cpu").manual_seed(subseed) for _ in generators],
                         device=device, dtype=dtype)
    mixed = slerp(request.subseed_strength, own, other)
    return {"latents": mixed}, dataclasses.replace(request, subseed=subseed)
