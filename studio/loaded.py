"""LoadedModel: one loaded model's pipelines, made once and sharing one copy of the weights.

The pipeline as loaded (text to image, or unconditional), the img2img and inpainting pipelines
made from it with `from_pipe`, the loop with callbacks an unconditional model runs in, and the
LoRA adapters on them (studio.loras). The manager (studio.manager) owns the one LoadedModel it
runs; this module does not generate.
"""
from __future__ import annotations

import dataclasses

from studio import loras, models
from studio.unconditional import UnconditionalRunner


@dataclasses.dataclass
class LoadedModel:
    source: models.ModelSource
    txt2img: object               # the pipeline as loaded (text-to-image or unconditional)
    scheduler_config: dict        # the model's own scheduler config, never mutated
    family: str
    hash: str
    native_size: int
    defaults: dict = dataclasses.field(default_factory=dict)  # request fields the model sets (studio.models)
    _img2img: object | None = None
    _inpaint: object | None = None
    _runner: object | None = None
    _adapters: object | None = None

    @property
    def adapters(self) -> loras.Adapters:
        """The LoRA adapters on this model's pipelines (studio.loras)."""
        if self._adapters is None:
            self._adapters = loras.Adapters(self.txt2img, self.source.name)
        return self._adapters

    @property
    def unconditional(self) -> bool:
        return self.family == "unconditional"

    @property
    def inpainting_unet(self) -> bool:
        """A 9-channel inpainting UNet (latents, mask, masked picture): every run goes through the
        inpainting pipeline (studio.inpainting.whole_picture_kwargs outside inpainting)."""
        unet = getattr(self.txt2img, "unet", None)
        return unet is not None and unet.config.in_channels == 9

    @property
    def runner(self):
        """What generation calls: the pipeline, or for unconditional models a loop with callbacks."""
        if self.unconditional and self._runner is None:
            self._runner = UnconditionalRunner(self.txt2img)
        return self._runner if self.unconditional else self.txt2img

    @property
    def img2img(self):
        return self._derived("_img2img", "AutoPipelineForImage2Image")

    @property
    def inpaint(self):
        return self._derived("_inpaint", "AutoPipelineForInpainting")

    def _derived(self, slot: str, auto: str):
        """The img2img or inpainting pipeline, made once with `from_pipe`: it shares every module
        with txt2img (no second copy of the weights) and keeps the dtype."""
        if getattr(self, slot) is None:
            import diffusers

            pipe = getattr(diffusers, auto).from_pipe(self.txt2img)
            pipe.set_progress_bar_config(disable=True)
            setattr(self, slot, pipe)
        return getattr(self, slot)
