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

from studio.errors import StudioError, bad_argument
from studio.fields import (FIELD, FIELDS, MAX_BATCH_COUNT, MAX_SEED, MAX_SIDE, MIN_SIDE, Field,
                           GenerationRequest, steps_to_run)  # GenerationRequest: importers take it from here

SIZE_FACTOR = 4.0  # width and height go up to this many times the model's native size (--size-factor)
# A shared (public) server takes at most this much work in one request, counted in steps of one
# picture at the model's native size: 8 pictures x 150 steps, or one 4x-wide picture x 75 steps.
MAX_PUBLIC_WORK = 1200
MAX_PROMPT_CHARS = 4000
ALLOWED_CONTROL = "\t\n\r"


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
    lineage: object | None = None     # a branch: its parent and step (studio.branching.Lineage)
    card: dict = dataclasses.field(default_factory=dict)  # the run card (studio.runcard): versions, device, ...


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


def check_field(field: Field, value):
    """`value` for `field` as its type (20.0 -> 20), or StudioError naming the field and value."""
    if value is None and field.optional:
        return None
    if field.choices:
        if value not in field.choices:
            raise bad_argument(field.name, value, field.expected)
        return value
    if field.kind is str:
        check_text(field.name, value)
        return value if field.normalise is None else field.normalise(value)
    if field.kind is bool:
        if not isinstance(value, bool):
            raise bad_argument(field.name, value, field.expected)
        return value
    if field.kind is int:
        whole_number(field.name, value, field.low, field.high)
        if int(value) % field.multiple_of:
            raise bad_argument(field.name, value, f"a multiple of {field.multiple_of}")
        return int(value)
    number(field.name, value, field.low, field.high, low_open=field.low_open)
    return float(value)


def check_inputs(request: GenerationRequest) -> GenerationRequest:
    """The request with each field as its type; StudioError names the first bad field and value."""
    if request.is_inpaint and not request.is_img2img:
        raise StudioError("mask_image: a mask needs the picture it masks (image, as in image to image).")
    checked = {f.name: check_field(f, getattr(request, f.name)) for f in FIELDS
               if (request.is_img2img or not f.img2img) and (request.is_inpaint or not f.inpaint)}
    if request.is_img2img and request.run_strength == checked["strength"]:
        check_steps_left(checked["num_inference_steps"], checked["strength"])
    return dataclasses.replace(request, **checked)


def check_steps_left(num_inference_steps: int, strength: float) -> int:
    """The steps img2img at `strength` runs, or StudioError if it would run none."""
    left = steps_to_run(num_inference_steps, strength)
    if left < 1:
        raise bad_argument("strength", strength, f"a value that leaves at least one step: int({num_inference_steps} "
                                                 f"x {strength}) = 0 steps would run")
    return left


def batches(request: GenerationRequest, count) -> list[GenerationRequest]:
    """`count` requests run one after another ("batch count"), each of `num_images_per_prompt`
    pictures, with consecutive seeds across them all: with seed 10 and batch size 2, the second
    batch has seeds 12 and 13, so any picture can be made again alone from its own seed. A random
    seed (-1) is drawn once, for the first picture."""
    whole_number("batch_count", count, 1, MAX_BATCH_COUNT)
    check_field(FIELD["num_images_per_prompt"], request.num_images_per_prompt)
    check_field(FIELD["seed"], request.seed)
    base = int(request.seed) if int(request.seed) >= 0 else random.randrange(MAX_SEED + 1)
    size = int(request.num_images_per_prompt)
    return [dataclasses.replace(request, seed=(base + k * size) % (MAX_SEED + 1)) for k in range(int(count))]
