"""The fields of a generation request: one table, the one home of each field's facts, and the
GenerationRequest made of them.

Each Field has diffusers' own name, its type, default, range and step, its label and hint, its
AUTOMATIC1111 infotext key, its command-line flag and, if the X/Y plot can sweep it, its axis
label. From this table come `requests.check_inputs`, the UI's controls and the API's named
parameters, the CLI's flags, the PNG "parameters" writer and reader, and the X/Y axes. A new
field is a row here, plus whatever the manager does with it. This module imports nothing of the
studio but the sampler names and the LoRA syntax, and nothing of Gradio or torch.
"""
from __future__ import annotations

import dataclasses

from PIL import Image

from studio import loras, schedulers
from studio.config import PREVIEWS

MAX_STEPS = 150
MIN_SIDE, MAX_SIDE = 64, 2048
MAX_GUIDANCE = 30.0
MAX_GUIDANCE_SIGMA = 100.0  # guidance_min_sigma: SD's schedule starts at sigma 14.6
MAX_BATCH = 8
MAX_BATCH_COUNT = 16  # batches run one after another (A1111's "batch count")
MAX_SEED = 2**32 - 1
MAX_CLIP_SKIP = 12


@dataclasses.dataclass(frozen=True)
class Field:
    name: str                      # GenerationRequest's attribute: diffusers' argument name
    kind: type                     # int, float, str or bool
    default: object
    label: str
    hint: str = ""
    low: float | None = None       # numbers: the range, both ends allowed unless low_open
    high: float | None = None
    step: float | None = None      # the UI's slider step
    low_open: bool = False
    optional: bool = False         # None is allowed (and means: the model decides)
    choices: tuple = ()            # str fields with a fixed set of values
    infotext: str | None = None    # A1111's key in the PNG's parameters text
    a1111: str | None = None       # A1111's HTTP API name for it (/sdapi/v1, studio.a1111)
    flag: str | None = None        # the command line's flag; None: not on the command line
    axis: str | None = None        # the X/Y plot's label for it, if it can be swept
    img2img: bool = False          # only an image-to-image request has it
    inpaint: bool = False          # only an inpainting request (img2img with a mask) has it
    multiple_of: int = 1
    row: str = ""                  # the UI lays fields of one row side by side
    ui_default: object = None      # the UI's value where it differs from the request's (not None)
    normalise: object = None       # str fields: text -> the studio's form of it, or StudioError naming it

    @property
    def shown(self):
        return self.default if self.ui_default is None else self.ui_default

    @property
    def expected(self) -> str:
        """What a bad value is told it should be, as check_inputs and PNG info say it."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is bool:
            return "true or false"
        if self.kind is int:
            return f"a whole number from {self.low:g} to {self.high:g}"
        return f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


FIELDS: tuple[Field, ...] = (
    Field("prompt", str, "", "Prompt", a1111="prompt", flag="--prompt",
          ui_default="a small red circle at the top left on a blue background"),  # the bundled model draws it
    Field("negative_prompt", str, "", "Negative prompt", "what the picture should not have",
          a1111="negative_prompt", flag="--negative-prompt"),
    Field("loras", str, "", "LoRA", "name:weight, ... of LoRA files in --lora-dir; <lora:name:weight> in the "
          "prompt adds one", infotext="LoRA", flag="--lora", normalise=loras.normalise),
    Field("num_inference_steps", int, 20, "Steps", "denoising steps: more is slower, usually finer",
          1, MAX_STEPS, 1, infotext="Steps", a1111="steps", flag="--steps", axis="Steps", row="sampling"),
    Field("guidance_scale", float, 7.5, "Guidance (CFG scale)", "how strongly to follow the prompt",
          0.0, MAX_GUIDANCE, 0.5, infotext="CFG scale", a1111="cfg_scale", flag="--guidance-scale", axis="CFG scale", row="sampling"),
    Field("guidance_min_sigma", float, None, "Guidance down to sigma",
          "below this noise level a step follows the prompt alone: no unconditional (negative) pass, one UNet "
          "call (studio.guidance); 0: guidance at every step; empty: the model's own", 0.0, MAX_GUIDANCE_SIGMA, 0.05,
          optional=True, infotext="NGMS", a1111="s_min_uncond", flag="--guidance-min-sigma", axis="Guidance min sigma"),
    Field("guidance_fade_sigma", float, None, "Guidance fades from sigma",
          "with guidance_min_sigma: guidance fades from full at this noise level to none at that one; 0: no fade "
          "(it stops at once); empty: the model's own", 0.0, MAX_GUIDANCE_SIGMA, 0.05, optional=True,
          infotext="Guidance fade sigma", flag="--guidance-fade-sigma", axis="Guidance fade sigma"),
    Field("width", int, None, "Width", "default: the model's native size", MIN_SIDE, MAX_SIDE, 8, optional=True,
          multiple_of=8, a1111="width", flag="--width", row="size"),
    Field("height", int, None, "Height", "default: the model's native size", MIN_SIDE, MAX_SIDE, 8, optional=True,
          multiple_of=8, a1111="height", flag="--height", row="size"),
    Field("scheduler", str, schedulers.DEFAULT, "Sampler",
          "Default: the model's own · " + " · ".join(f"{n}: {h}" for n, h in schedulers.HINTS.items()),
          choices=tuple(schedulers.NAMES), infotext="Sampler", flag="--scheduler", axis="Sampler", row="batch"),
    Field("num_images_per_prompt", int, 1, "Batch size", "pictures made together in one run",
          1, MAX_BATCH, 1, infotext="Batch size", a1111="batch_size", flag="--batch", row="batch"),
    Field("seed", int, -1, "Seed (-1: random)", "", -1, MAX_SEED, 1, infotext="Seed", a1111="seed", flag="--seed",
          axis="Seed", row="seed"),
    Field("subseed", int, -1, "Variation seed", "a second noise, mixed in by the variation strength; -1: random",
          -1, MAX_SEED, 1, infotext="Variation seed", a1111="subseed", flag="--subseed", row="variation"),
    Field("subseed_strength", float, 0.0, "Variation strength", "0: the seed's picture, 1: the variation seed's",
          0.0, 1.0, 0.01, infotext="Variation seed strength", a1111="subseed_strength",
          flag="--subseed-strength", axis="Var. strength", row="variation"),
    Field("clip_skip", int, None, "Clip skip", "", 1, MAX_CLIP_SKIP, 1, optional=True, infotext="Clip skip",
          flag="--clip-skip"),
    Field("strength", float, 0.75, "Strength (denoising strength)", "img2img: how much to change it",
          0.0, 1.0, 0.01, low_open=True, infotext="Denoising strength", a1111="denoising_strength",
          flag="--strength", axis="Denoising strength", img2img=True),
    Field("mask_blur", int, 4, "Mask blur", "pixels of soft edge where the repainted area meets the kept picture",
          0, 64, 1, infotext="Mask blur", a1111="mask_blur", flag="--mask-blur", img2img=True, inpaint=True),
    Field("masked_content", str, "original", "Masked content",
          "original: repaint from the picture noised by the strength; latent noise: from pure noise (every step runs)",
          choices=("original", "latent noise"), infotext="Masked content", flag="--masked-content",
          img2img=True, inpaint=True),
    Field("inpaint_only_masked", bool, False, "Inpaint only the masked area",
          "repaint the mask's box (with 32 px around it) at the full size, then paste it back",
          infotext="Inpaint only masked", flag="--inpaint-only-masked", img2img=True, inpaint=True),
    Field("preview", str, "none", "Live preview", "decoder for step previews", choices=tuple(PREVIEWS),
          flag="--preview", ui_default="fast"),
    Field("preview_every", int, 1, "Preview every", "", 1, MAX_STEPS, 1),
    Field("record_attention", bool, False, "Record attention",
          "keep which word the model looked at, at every pixel and step, for the viewer", flag="--attention"),
)
FIELD = {f.name: f for f in FIELDS}
# The fields a generation tab shows and the API takes, in the order the panel lays them out
PANEL = ("prompt", "negative_prompt", "loras", "num_inference_steps", "guidance_scale", "width", "height",
         "scheduler", "num_images_per_prompt", "seed", "subseed", "subseed_strength", "preview", "record_attention")
# What a branch may change when it carries a run on from a step (studio.branching); the rest is the parent's.
BRANCHABLE = ("prompt", "negative_prompt", "guidance_scale", "scheduler", "seed")
BY_INFOTEXT = {f.infotext: f for f in FIELDS if f.infotext}
BY_A1111 = {f.a1111: f for f in FIELDS if f.a1111}
AXES = {f.name: f.axis for f in FIELDS if f.axis}


def steps_to_run(num_inference_steps: int, strength: float | None = None) -> int:
    """The denoising steps a run takes: img2img (a strength) skips the first (1 - strength), as
    diffusers' img2img pipelines count them. The one home of this count."""
    if strength is None:
        return num_inference_steps
    return min(int(num_inference_steps * strength), num_inference_steps)


def default(name: str):
    return dataclasses.field(default=FIELD[name].default)


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """What one run asks for: a field of the table each (its default, range and names there),
    and the img2img picture."""
    prompt: str = default("prompt")
    negative_prompt: str = default("negative_prompt")
    loras: str = default("loras")                   # "name:weight, ..." (studio.loras)
    num_inference_steps: int = default("num_inference_steps")
    guidance_scale: float = default("guidance_scale")
    guidance_min_sigma: float | None = default("guidance_min_sigma")  # None: the model's own (studio.guidance)
    guidance_fade_sigma: float | None = default("guidance_fade_sigma")
    width: int | None = default("width")            # None: the model's native size
    height: int | None = default("height")
    seed: int = default("seed")                     # -1: random
    subseed: int = default("subseed")               # A1111's variation seed, -1: random
    subseed_strength: float = default("subseed_strength")
    num_images_per_prompt: int = default("num_images_per_prompt")
    scheduler: str = default("scheduler")
    clip_skip: int | None = default("clip_skip")
    image: Image.Image | None = None                # set for img2img
    strength: float = default("strength")
    mask_image: Image.Image | None = None           # img2img with a mask: inpainting (white is repainted)
    mask_blur: int = default("mask_blur")
    masked_content: str = default("masked_content")
    inpaint_only_masked: bool = default("inpaint_only_masked")
    preview: str = default("preview")
    preview_every: int = default("preview_every")
    record_attention: bool = default("record_attention")  # per-word cross-attention maps (studio.attention)

    @property
    def is_img2img(self) -> bool:
        return self.image is not None

    @property
    def is_inpaint(self) -> bool:
        return self.mask_image is not None

    @property
    def run_strength(self) -> float | None:
        """The strength the pipeline runs at: None in text to image; inpainting from latent noise
        starts from pure noise, 1."""
        if not self.is_img2img:
            return None
        return 1.0 if self.is_inpaint and self.masked_content == "latent noise" else self.strength

    def steps_to_run(self) -> int:
        return steps_to_run(self.num_inference_steps, self.run_strength)

    def parameters(self) -> dict:
        """The request as plain values (no pictures), for metadata and history."""
        values = dataclasses.asdict(dataclasses.replace(self, image=None, mask_image=None))
        for f in FIELDS:
            if (f.img2img and not self.is_img2img) or (f.inpaint and not self.is_inpaint):
                values.pop(f.name)
        del values["image"], values["mask_image"]
        return values
