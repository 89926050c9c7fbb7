"""Unconditional models (a plain UNet2DModel, noise to image with no prompt) in the studio.

diffusers' DDPMPipeline has no `callback_on_step_end`, so `UnconditionalRunner` runs the same
loop (same noise draw, same scheduler calls, so the same pixels) with that callback added, and
presents the few attributes the manager and the recorder use. Its "latents" are pixels in
[-1, 1]. It is not a general pipeline: prompts, guidance and img2img do not apply.
"""
from __future__ import annotations

import torch
from diffusers import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


class UnconditionalRunner:
    def __init__(self, pipe):
        self.pipe = pipe
        self._interrupt = False
        self.num_timesteps = 0

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @scheduler.setter
    def scheduler(self, value) -> None:
        self.pipe.scheduler = value

    @torch.no_grad()
    def __call__(self, num_inference_steps: int, num_images_per_prompt: int, generator,
                 callback_on_step_end=None, latents=None, **_ignored):
        unet, scheduler = self.pipe.unet, self.pipe.scheduler
        size = unet.config.sample_size
        shape = (num_images_per_prompt, unet.config.in_channels, size, size)  # (b, c, h, w)
        if latents is None:
            image = randn_tensor(shape, generator=generator, device=unet.device, dtype=unet.dtype)
        else:  # as the text-to-image pipelines take given latents
            image = latents.to(unet.device, unet.dtype) * scheduler.init_noise_sigma
        scheduler.set_timesteps(num_inference_steps)
        timesteps = scheduler.timesteps  # a resumed run's are the remaining ones (studio.resume)
        self._interrupt, self.num_timesteps = False, len(timesteps)
        for i, t in enumerate(timesteps):
            if self._interrupt:
                continue
            model_output = unet(scheduler.scale_model_input(image, t), t).sample
            image = scheduler.step(model_output, t, image, generator=generator).prev_sample
            if callback_on_step_end is not None:
                image = callback_on_step_end(self, i, t, {"latents": image}).pop("latents", image)
        pixels = (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()  # (b, h, w, 3)
        return ImagePipelineOutput(images=pixels)
