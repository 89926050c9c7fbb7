"""What a generation asks for and what it gives back, and the checks every request passes first.

Field names are diffusers' own (num_inference_steps, guidance_scale, ...), the same from the UI's
sliders through the manager to the pipeline call. `check_inputs` rejects bad values with a
message naming the argument and the value; it never corrects them silently. This module does not
run models.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import random

from PIL import Image

from studio import schedulers
from studio.config import PREVIEWS
from studio.errors import StudioError, bad_argument

MAX_STEPS = 150
MIN_SIDE, MAX_SIDE = 64, 2048
SIZE_FACTOR = 4.0  # width and height go up to this many times the model's native size (--size-factor)
# A shared (public) server takes at most this much work in one request, counted in steps of one
# picture at the model's native size: 8 pictures x 150 steps, or one 4x-wide picture x 75 steps.
MAX_PUBLIC_WORK = 1200
MAX_GUIDANCE = 30.0
MAX_BATCH = 8
MAX_BATCH_COUNT = 16  # batches run one after another (A1111's "batch count")
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 4000
ALLOWED_CONTROL = "\t\n\r"


@dataclasses.dataclass
class GenerationRequest:
    prompt: str = ""
    negative_prompt: str = ""
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    width: int | None = None          # None: the model's native size
    height: int | None = None
    seed: int = -1                    # -1: random
    num_images_per_prompt: int = 1
    scheduler: str = schedulers.DEFAULT
    clip_skip: int | None = None
    image: Image.Image | None = None  # set for img2img
    strength: float = 0.75
    preview: str = "none"             # none, fast, tiny or full
    preview_every: int = 1

    @property
    def is_img2img(self) -> bool:
        return self.image is not None

    def steps_to_run(self) -> int:
        """The denoising steps the pipeline will run: img2img skips the first (1 - strength)."""
        if not self.is_img2img:
            return self.num_inference_steps
        return min(int(self.num_inference_steps * self.strength), self.num_inference_steps)

    def parameters(self) -> dict:
        """The request as plain values (no image), for metadata and history."""
        values = dataclasses.asdict(dataclasses.replace(self, image=None))
        values.pop("image")
        if not self.is_img2img:
            values.pop("strength")
        return values


@dataclasses.dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    request: GenerationRequest        # as run: seed, size and scheduler resolved
    model: str
    model_hash: str
    device: str
    dtype: str
    timings: dict[str, float]
    warnings: list[str] = dataclasses.field(default_factory=list)
    trajectory: object | None = None  # studio.trajectory.Trajectory
    scheduler_name: str = ""          # the scheduler that ran, by its user-facing name


def whole_number(name: str, value, low: int, high: int) -> None:
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not is_int and isinstance(value, float) and value.is_integer():
        is_int = True
    if not is_int or not low <= value <= high:
        raise bad_argument(name, value, f"a whole number from {low} to {high}")


def number(name: str, value, low: float, high: float, low_open: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise bad_argument(name, value, f"a number in {bracket}{low}, {high}]")


def check_text(name: str, value) -> None:
    if not isinstance(value, str):
        raise bad_argument(name, value, "text")
    if len(value) > MAX_PROMPT_CHARS:
        raise bad_argument(name, value, f"at most {MAX_PROMPT_CHARS} characters (got {len(value)})")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):  # JSON allows "\ud800"; UTF-8 and tokenizers do not
        raise bad_argument(name, value, "valid Unicode text (it holds a lone surrogate, half of a character)")
    bad = next((c for c in value if (ord(c) < 32 or ord(c) == 127) and c not in ALLOWED_CONTROL), None)
    if bad is not None:
        raise bad_argument(name, value, f"printable text (it holds the control character {ord(bad):#04x})")


def size_bound(native_size: int, factor: float = SIZE_FACTOR) -> int:
    """The largest width or height allowed for a model of `native_size` pixels (a multiple of 8)."""
    return max(MIN_SIDE, min(MAX_SIDE, int(factor * native_size) // 8 * 8))


def check_limits(request: GenerationRequest, native_size: int, factor: float = SIZE_FACTOR,
                 public: bool = False) -> None:
    """The server-side ceilings that depend on the model, for every caller (UI, API, CLI):
    sides up to `factor` x native; on a public server, at most MAX_PUBLIC_WORK per request."""
    bound = size_bound(native_size, factor)
    for side in ("width", "height"):
        value = getattr(request, side)
        if value is not None and int(value) > bound:
            raise bad_argument(side, value, f"at most {bound} for this model ({factor:g}x its native "
                                            f"{native_size}px; --size-factor raises it for local use)")
    if public:
        width, height = request.width or native_size, request.height or native_size
        work = request.steps_to_run() * request.num_images_per_prompt * width * height / native_size ** 2
        if work > MAX_PUBLIC_WORK:
            raise StudioError(f"This request is {work:,.0f} picture-steps at the model's native size "
                              f"(steps x batch x size); a shared server takes at most {MAX_PUBLIC_WORK:,} "
                              "in one request. Use fewer steps, a smaller batch or a smaller size.")


def check_inputs(request: GenerationRequest) -> GenerationRequest:
    """The request with whole numbers as ints; StudioError names the first bad argument and value."""
    check_text("prompt", request.prompt)
    check_text("negative_prompt", request.negative_prompt)
    whole_number("num_inference_steps", request.num_inference_steps, 1, MAX_STEPS)
    number("guidance_scale", request.guidance_scale, 0.0, MAX_GUIDANCE)
    for side in ("width", "height"):
        value = getattr(request, side)
        if value is not None:
            whole_number(side, value, MIN_SIDE, MAX_SIDE)
            if int(value) % 8:
                raise bad_argument(side, value, "a multiple of 8")
    whole_number("seed", request.seed, -1, MAX_SEED)
    whole_number("num_images_per_prompt", request.num_images_per_prompt, 1, MAX_BATCH)
    if request.scheduler not in schedulers.NAMES:
        raise bad_argument("scheduler", request.scheduler, "one of " + ", ".join(schedulers.NAMES))
    if request.clip_skip is not None:
        whole_number("clip_skip", request.clip_skip, 1, 12)
    whole_number("preview_every", request.preview_every, 1, MAX_STEPS)
    if request.preview not in PREVIEWS:
        raise bad_argument("preview", request.preview, "one of " + ", ".join(PREVIEWS))
    if request.is_img2img:
        number("strength", request.strength, 0.0, 1.0, low_open=True)
        if request.steps_to_run() < 1:
            raise bad_argument("strength", request.strength,
                               f"a value that leaves at least one step: int({request.num_inference_steps} "
                               f"x {request.strength}) = 0 steps would run")
    return dataclasses.replace(
        request,
        num_inference_steps=int(request.num_inference_steps),
        guidance_scale=float(request.guidance_scale),
        width=None if request.width is None else int(request.width),
        height=None if request.height is None else int(request.height),
        seed=int(request.seed),
        num_images_per_prompt=int(request.num_images_per_prompt),
        clip_skip=None if request.clip_skip is None else int(request.clip_skip),
        strength=float(request.strength),
        preview_every=int(request.preview_every),
    )


def batches(request: GenerationRequest, count) -> list[GenerationRequest]:
    """`count` requests run one after another ("batch count"), each of `num_images_per_prompt`
    pictures, with consecutive seeds across them all: with seed 10 and batch size 2, the second
    batch has seeds 12 and 13, so any picture can be made again alone from its own seed. A random
    seed (-1) is drawn once, for the first picture."""
    whole_number("batch_count", count, 1, MAX_BATCH_COUNT)
    whole_number("num_images_per_prompt", request.num_images_per_prompt, 1, MAX_BATCH)
    whole_number("seed", request.seed, -1, MAX_SEED)
    base = int(request.seed) if int(request.seed) >= 0 else random.randrange(MAX_SEED + 1)
    size = int(request.num_images_per_prompt)
    return [dataclasses.replace(request, seed=(base + k * size) % (MAX_SEED + 1)) for k in range(int(count))]
