"""A guidance interval: classifier-free guidance only while the noise is high enough.

Below `min_sigma` (the noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) of the step), the
UNet runs on the conditional half of the batch alone and hands that prediction back for both
halves, so the pipeline's u + s (c - u) is c: the step follows the prompt without the push away
from the unconditional (or negative) prediction, and costs one UNet pass instead of two.
Kynkäänniemi et al. 2024 ("Applying guidance in a limited interval improves sample and
distribution quality") found guidance harmful at low noise; AUTOMATIC1111 calls this threshold
"NGMS" (`s_min_uncond`) and skips every such step with its "all steps" option, as here.

It works through the UNet's forward hooks, so it serves every pipeline and sampler alike
(text to image, img2img, inpainting, SDXL's extra conditioning), from the first step on. Every
recorder that reads the UNet's output (the CFG lens, studio.trajectory) sees the two equal
halves: at such a step the unconditional, the conditional and the guided x0 are one picture,
which is what the step used. This module knows nothing of Gradio.
"""
from __future__ import annotations

import torch

from studio.trajectory import alpha_bar_at, sigma_from_alpha_bar


def guided(sigma: float, min_sigma: float) -> bool:
    """Whether a step at noise level `sigma` runs guidance under the threshold `min_sigma`."""
    return not sigma < min_sigma


class GuidanceInterval:
    """For one run: `install()` on the run's UNet, `remove()` after. `images` is the batch the
    pipeline makes (guidance doubles it), `alphas_cumprod` the run's scheduler's."""

    def __init__(self, unet, min_sigma: float, alphas_cumprod: torch.Tensor, images: int):
        self.unet, self.min_sigma, self.images = unet, float(min_sigma), images
        self.alphas_cumprod = alphas_cumprod
        self.skipped = 0          # UNet calls that ran the conditional half alone
        self._halved = False
        self._hooks = []

    def install(self) -> None:
        # prepend: every other hook (the recorders') sees the batch and the output the pipeline does
        self._hooks = [self.unet.register_forward_pre_hook(self._halve, with_kwargs=True, prepend=True),
                       self.unet.register_forward_hook(self._double, prepend=True)]

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

    def _halve(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self._halved = sample.shape[0] == 2 * self.images and not guided(self.sigma(timestep), self.min_sigma)
        if not self._halved:
            return None
        self.skipped += 1
        return tuple(self._conditional(a) for a in args), {k: self._conditional(v) for k, v in kwargs.items()}

    def _conditional(self, value):
        """The conditional (second) half of a batched tensor, or of a dict of them (SDXL's)."""
        if isinstance(value, dict):
            return {k: self._conditional(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == 2 * self.images:
            return value[self.images:]
        return value

    def _double(self, module, args, output):
        if not self._halved:
            return None
        self._halved = False
        if isinstance(output, tuple):
            return (torch.cat([output[0], output[0]]), *output[1:])
        output.sample = torch.cat([output.sample, output.sample])
        return output


def for_run(pipe, min_sigma: float | None, guidance_scale: float, images: int) -> GuidanceInterval | None:
    """The interval for one run of `pipe`, or None where it changes nothing: no threshold, no
    guidance, or no UNet (an unconditional model's loop never doubles its batch either)."""
    unet = getattr(pipe, "unet", None)
    if not min_sigma or guidance_scale <= 1 or unet is None:
        return None
    return GuidanceInterval(unet, min_sigma, pipe.scheduler.alphas_cumprod, images)
