"""Sampler names people know (AUTOMATIC1111's) and the diffusers schedulers behind them.

The one home of that mapping. `make_scheduler` builds a fresh scheduler from the model's own
scheduler config, so every run starts from clean state and keeps the model's noise schedule and
prediction type (epsilon or v). "Default" is the model's own scheduler, unchanged.
This module does not run schedulers.
"""
from __future__ import annotations

import inspect

import diffusers
import torch

from studio.errors import StudioError

DEFAULT = "Default"

# name -> (diffusers class name, extra config)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}
NAMES = [DEFAULT, *SCHEDULERS]


def make_scheduler(name: str, model_config: dict, seeds: list[int] | None = None):
    """A new scheduler called `name`, configured from the model's own scheduler config.

    `seeds`, one per image, seed the noise that DPM++ SDE draws from its Brownian tree; without
    them diffusers seeds that tree from torch's global generator, so the same request would give
    another picture each time.
    """
    if name == DEFAULT:
        cls_name, extra = model_config["_class_name"], {}
    elif name in SCHEDULERS:
        cls_name, extra = SCHEDULERS[name]
    else:
        raise StudioError(f"scheduler={name!r} is not known; choose one of: {', '.join(NAMES)}.")
    cls = getattr(diffusers, cls_name)
    # DDIM/DDPM/LCM default to clipping x0 to [-1, 1], right for pixels, wrong for latents. A
    # config that never mentions it comes from a scheduler without the option (Euler, PNDM...),
    # i.e. a latent model, so we do not clip; a config that sets it keeps its choice.
    config = {"clip_sample": False, **model_config, **extra}
    keywords = {}
    if seeds and accepts(cls, "noise_sampler_seed"):
        keywords["noise_sampler_seed"] = list(seeds)  # one tree per image, as in a batch
    if config.get("rescale_betas_zero_snr") and not accepts(cls, "rescale_betas_zero_snr") \
            and accepts(cls, "trained_betas"):
        # (a keyword: from_config drops a trained_betas found in the config dict itself)
        keywords["trained_betas"] = zero_snr_betas(model_config)
    return cls.from_config(config, **keywords)


def accepts(cls, parameter: str) -> bool:
    return parameter in inspect.signature(cls.__init__).parameters


def zero_snr_betas(model_config: dict) -> list[float]:
    """The model's betas rescaled to zero terminal SNR, for schedulers without that option.

    A model trained with `rescale_betas_zero_snr` (as the bundled one is) must be sampled on that
    schedule; Heun, LMS, PLMS, DPM2 and others ignore the option, so they get the betas instead.
    As diffusers' Euler does, the last cumulative alpha is 2^-24 rather than 0, which would make
    the first sigma infinite.
    """
    alphas_cumprod = diffusers.DDPMScheduler.from_config(model_config).alphas_cumprod.double().clone()
    alphas_cumprod[-1] = 2.0 ** -24
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return (1 - alphas_cumprod / previous).tolist()


def name_of(scheduler) -> str:
    """The user-facing name of a scheduler instance, for metadata ("Euler a", "DPM++ 2M Karras")."""
    cls_name = type(scheduler).__name__
    config = dict(scheduler.config)
    best, best_extra = cls_name, -1
    for name, (candidate, extra) in SCHEDULERS.items():
        matches = candidate == cls_name and all(config.get(k) == v for k, v in extra.items())
        if matches and len(extra) > best_extra:  # the most specific name wins
            best, best_extra = name, len(extra)
    return best
