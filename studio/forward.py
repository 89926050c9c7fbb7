"""The forward (noising) process: a clean picture noised to timestep t, the way training and
img2img do it, x_t = sqrt(a) x0 + sqrt(1 - a) eps in latent space (Ho et al. 2020, eq. 4).

It is a preview: by default at the model's native size capped at FORWARD_SIDE, decoded by the
full VAE up to FORWARD_FULL_VAE_PIXELS and by the fast map above (once it is fitted). The last
picture's encoding is kept, so moving the timestep or strength costs only the decode. The
manager calls it under its lock with the loaded model.
"""
from __future__ import annotations

import dataclasses
import hashlib

import torch

from studio import images, schedulers
from studio.errors import StudioError
from studio.fields import FIELD
from studio.requests import check_field, check_steps_left
from studio.trajectory import alpha_bar_at, sigma_from_alpha_bar

FORWARD_SIDE = 256  # px: the forward process's pictures are previews, at most this size
FORWARD_FULL_VAE_PIXELS = 128 * 128  # up to here the full VAE decodes them (cheap even for SD's)


@dataclasses.dataclass(frozen=True)
class ForwardResult:
    picture: object       # PIL image of the noised picture
    timestep: float
    sigma: float
    steps_to_run: int     # steps a run from here takes


class ForwardProcess:
    def __init__(self):
        self._last: tuple[tuple, torch.Tensor] | None = None  # the last picture's key and latents

    @torch.no_grad()
    def __call__(self, model, previews, image, *, timestep: float | None = None, strength: float | None = None,
                 num_inference_steps: int = FIELD["num_inference_steps"].default,
                 scheduler: str = FIELD["scheduler"].default, seed: int = 0, size: int | None = None,
                 decoder: str = "auto") -> ForwardResult:
        """`image` noised to `timestep`, or to where img2img at `strength` starts."""
        size = size or min(model.native_size, FORWARD_SIDE)
        fresh = schedulers.make_scheduler(scheduler, model.scheduler_config)
        timestep, steps = self.start(fresh, timestep, strength, num_inference_steps)
        clean = self.encoded(model, previews, images.prepare(image, size, size))  # (1, c, h, w), alpha scale
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
        alpha_bar = alpha_bar_at(fresh.alphas_cumprod, timestep)
        noisy = alpha_bar ** 0.5 * clean + (1 - alpha_bar) ** 0.5 * noise
        if decoder == "auto":  # the full VAE where it is cheap, or while the fast map is fitted
            small = size * size <= FORWARD_FULL_VAE_PIXELS
            decoder = "full" if small or not previews.fast_ready(model) else "fast"
        return ForwardResult(picture=previews.decode(model, noisy, decoder)[0], timestep=timestep,
                             sigma=sigma_from_alpha_bar(alpha_bar), steps_to_run=steps)

    @staticmethod
    def start(scheduler, timestep, strength, num_inference_steps) -> tuple[float, int]:
        """The timestep to noise to and the steps a run from there takes."""
        if strength is not None:
            steps = check_field(FIELD["num_inference_steps"], num_inference_steps)
            left = check_steps_left(steps, check_field(FIELD["strength"], strength))
            scheduler.set_timesteps(steps)
            return float(scheduler.timesteps[(steps - left) * getattr(scheduler, "order", 1)]), left
        if timestep is None or not 0 <= float(timestep) < len(scheduler.alphas_cumprod):
            raise StudioError(f"timestep={timestep!r} is not allowed: expected 0 to "
                              f"{len(scheduler.alphas_cumprod) - 1}.")
        return float(timestep), num_inference_steps

    def encoded(self, model, previews, picture) -> torch.Tensor:
        """The VAE's latents of `picture`, remembered for the last picture (the slow half)."""
        key = (model.hash, picture.size, hashlib.sha1(picture.tobytes()).hexdigest())
        if self._last is None or self._last[0] != key:
            self._last = (key, previews.encode(model, picture))
        return self._last[1]
