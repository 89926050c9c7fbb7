"""A guidance interval: classifier-free guidance only while the noise is high enough, fading out.

Below `min_sigma` (the noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) of the step), the
UNet runs on the conditional half of the batch alone and hands that prediction back for both
halves, so the pipeline's u + s (c - u) is c: the step follows the prompt without the push away
from the unconditional (or negative) prediction, and costs one UNet pass instead of two.
Kynkäänniemi et al. 2024 ("Applying guidance in a limited interval improves sample and
distribution quality") found guidance harmful at low noise; AUTOMATIC1111 calls this threshold
"NGMS" (`s_min_uncond`) and skips every such step with its "all steps" option, as here.

With `fade_sigma` above it, guidance fades instead of stopping: from full at fade_sigma to none
at min_sigma, linearly in sigma. A step there keeps a share w of the guidance: the unconditional
half is handed back as c + w (u - c), so the pipeline's mix is u + (1 + w (s - 1)) (c - u). A
multistep sampler (LMS, DPM++ 2M) mixes the predictions of several steps, and a sudden change of
the guided prediction between two of them costs it at few steps (the model card's figures).

It works through the UNet's forward hooks, so it serves every pipeline and sampler alike
(text to image, img2img, inpainting, SDXL's extra conditioning), from the first step on. The
recorders that read the UNet's output (the CFG lens, studio.trajectory) see what the pipeline
mixed: below min_sigma two equal halves, in the fade the faded unconditional half. This module
knows nothing of Gradio.
"""
from __future__ import annotations

import contextlib

import torch

from studio.errors import bad_argument
from studio.trajectory import alpha_bar_at, sigma_from_alpha_bar


def weight(sigma: float, min_sigma: float, fade_sigma: float | None = None) -> float:
    """The share of the guidance a step at noise level `sigma` keeps: 1 at or above fade_sigma
    (min_sigma without a fade), 0 below min_sigma, linear in sigma between."""
    if sigma < min_sigma:
        return 0.0
    if not fade_sigma or sigma >= fade_sigma:
        return 1.0
    return (sigma - min_sigma) / (fade_sigma - min_sigma)


FIELDS = ("guidance_min_sigma", "guidance_fade_sigma")  # the request's (studio.fields)


def resolve(request, defaults: dict) -> dict:
    """The run's interval as request fields: the request's, the model's own (`defaults`, from its
    studio.json) where they are None; checked; with no end (0), nothing fades."""
    ends = {name: defaults.get(name) if getattr(request, name) is None else getattr(request, name)
            for name in FIELDS}
    check_interval(*ends.values())
    if not ends["guidance_min_sigma"]:
        ends["guidance_fade_sigma"] = None
    return ends


def check_interval(min_sigma: float | None, fade_sigma: float | None) -> None:
    """StudioError naming guidance_fade_sigma unless it is off (None, 0) or above min_sigma."""
    if min_sigma and fade_sigma and fade_sigma <= min_sigma:
        raise bad_argument("guidance_fade_sigma", fade_sigma,
                           f"0 (no fade) or a noise level above guidance_min_sigma={min_sigma:g}, where guidance ends")


class GuidanceInterval:
    """For one run: `install()` on the run's UNet, `remove()` after. `images` is the batch the
    pipeline makes (guidance doubles it), `alphas_cumprod` the run's scheduler's."""

    def __init__(self, unet, min_sigma: float, alphas_cumprod: torch.Tensor, images: int,
                 fade_sigma: float | None = None):
        check_interval(min_sigma, fade_sigma)
        self.unet, self.images, self.alphas_cumprod = unet, images, alphas_cumprod
        self.min_sigma, self.fade_sigma = float(min_sigma), fade_sigma
        self._weight = 1.0  # the running UNet call's share of the guidance
        self._hooks = []

    def install(self) -> None:
        # prepend: every other hook (the recorders') sees the batch and the output the pipeline does
        self._hooks = [self.unet.register_forward_pre_hook(self._before, with_kwargs=True, prepend=True),
                       self.unet.register_forward_hook(self._after, prepend=True)]

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def __enter__(self):
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def sigma(self, timestep) -> float:
        t = timestep.flatten()[0] if isinstance(timestep, torch.Tensor) else timestep
        return sigma_from_alpha_bar(alpha_bar_at(self.alphas_cumprod, float(t)))

    def _before(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self._weight = 1.0
        if sample.shape[0] != 2 * self.images:  # no guidance in this call
            return None
        self._weight = weight(self.sigma(timestep), self.min_sigma, self.fade_sigma)
        if self._weight > 0:
            return None
        return tuple(self._conditional(a) for a in args), {k: self._conditional(v) for k, v in kwargs.items()}

    def _conditional(self, value):
        """The conditional (second) half of a batched tensor, or of a dict of them (SDXL's)."""
        if isinstance(value, dict):
            return {k: self._conditional(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == 2 * self.images:
            return value[self.images:]
        return value

    def _after(self, module, args, output):
        w, self._weight = self._weight, 1.0
        if w >= 1:
            return None
        sample = output[0] if isinstance(output, tuple) else output.sample
        if w > 0:  # (batch 2b): [u, c] -> [c + w (u - c), c]
            unconditional, conditional = sample.chunk(2)
            sample = torch.cat([conditional + w * (unconditional - conditional), conditional])
        else:      # (batch b): the conditional prediction, for both halves
            sample = torch.cat([sample, sample])
        if isinstance(output, tuple):
            return (sample, *output[1:])
        output.sample = sample
        return output


def applied(pipe, min_sigma: float | None, guidance_scale: float, images: int, fade_sigma: float | None = None):
    """A context manager that installs the interval on `pipe` for a direct pipeline call (a no-op
    where for_run gives none), for the training scripts' batched calls."""
    interval = for_run(pipe, min_sigma, guidance_scale, images, fade_sigma)
    return interval if interval is not None else contextlib.nullcontext()


def for_run(pipe, min_sigma: float | None, guidance_scale: float, images: int,
            fade_sigma: float | None = None) -> GuidanceInterval | None:
    """The interval for one run of `pipe`, or None where it changes nothing: no threshold, no
    guidance, or no UNet (an unconditional model's loop never doubles its batch either)."""
    unet = getattr(pipe, "unet", None)
    if not min_sigma or guidance_scale <= 1 or unet is None:
        return None
    return GuidanceInterval(unet, min_sigma, pipe.scheduler.alphas_cumprod, images, fade_sigma)
