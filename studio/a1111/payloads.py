"""AUTOMATIC1111's request and response bodies, in the studio's terms: a txt2img or img2img body
becomes a plan of GenerationRequests (one per batch of `n_iter`), and the runs' results become
A1111's `{images, parameters, info}`.

A field is read by its A1111 name (studio.fields' `a1111` column: `steps` is num_inference_steps)
and checked there, so a bad value is refused naming the field as the client sent it. Unknown keys
are ignored, as real clients send about 40. A field left out, or sent as null, takes the studio's
default (the model's native size, 20 steps, CFG 7.5, the model's own sampler), not A1111's
512x512 at 50 steps, which the bundled 64-pixel model cannot draw. This module knows nothing of
HTTP or Gradio.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re

from PIL import ImageOps

from studio import __version__, images, metadata, schedulers
from studio.errors import StudioError, bad_argument
from studio.fields import BY_A1111, FIELD, MAX_BATCH_COUNT
from studio.requests import GenerationRequest, batches, check_field, check_steps_left, whole_number

DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


class FieldError(StudioError):
    """A value A1111's API refuses: `field` as the client named it, the value, and why."""

    def __init__(self, field: str, value, message: str):
        super().__init__(message)
        self.field, self.value = field, value

    def detail(self) -> list[dict]:
        """FastAPI's 422 body: `{"detail": [this]}`, which A1111's clients show."""
        value = self.value if isinstance(self.value, (str, int, float, bool, type(None))) else repr(self.value)
        return [{"loc": ["body", self.field], "msg": str(self), "type": "value_error", "input": value}]


def checked(name: str, value):
    """`value` for the A1111 field `name`, as the studio's field type; FieldError naming it."""
    field = dataclasses.replace(BY_A1111[name], name=name)
    try:
        return check_field(field, value)
    except StudioError as exc:
        raise FieldError(name, value, str(exc)) from exc


def sampler(body: dict) -> str:
    """The studio's sampler for A1111's sampler_name (or sampler_index) and scheduler."""
    key = "sampler_name" if body.get("sampler_name") else "sampler_index"
    name = body.get(key) or schedulers.DEFAULT  # none named: the model's own, as the UI's default
    if not isinstance(name, str):
        raise FieldError(key, name, str(bad_argument(key, name, "a sampler's name (GET /sdapi/v1/samplers)")))
    known = {n.lower(): n for n in schedulers.NAMES}
    known |= {alias: n for n, aliases in schedulers.A1111_ALIASES.items() for alias in aliases}
    if name.lower() not in known:
        raise FieldError(key, name, str(bad_argument(key, name, "one of " + ", ".join(schedulers.NAMES))))
    name = known[name.lower()]
    schedule = body.get("scheduler")
    schedule = "automatic" if schedule in (None, "") else schedule
    if not isinstance(schedule, str) or schedule.lower() not in schedulers.A1111_SCHEDULES:
        raise FieldError("scheduler", schedule, str(bad_argument(
            "scheduler", schedule, "one of " + ", ".join(schedulers.A1111_SCHEDULES.values()))))
    if schedule.lower() == "karras" and not name.endswith("Karras"):
        if f"{name} Karras" not in schedulers.NAMES:
            raise FieldError("scheduler", schedule, f"scheduler={schedule!r} is not offered with sampler "
                             f"{name!r}: Karras sigmas come with DPM++ 2M only (DPM++ 2M Karras).")
        name = f"{name} Karras"
    return name


def decoded_image(value, name: str):
    """A PIL image from a base64 string, with or without a `data:image/...;base64,` prefix. Only
    ever bytes: a string is never taken for a path on this server."""
    if not isinstance(value, str):
        raise FieldError(name, value, str(bad_argument(name, value, "a base64-encoded picture")))
    try:
        data = base64.b64decode(DATA_URL.sub("", value.strip()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FieldError(name, value, str(bad_argument(name, value, f"base64-encoded picture bytes ({exc})"))) from exc
    try:
        return images.open_image(data, name)
    except StudioError as exc:
        raise FieldError(name, value, str(exc)) from exc


def plan(body, img2img: bool) -> list[GenerationRequest]:
    """The requests a txt2img or img2img body asks for, one per batch of n_iter."""
    if not isinstance(body, dict):
        raise FieldError("body", body, "The request body must be a JSON object of A1111's fields.")
    given = {name: body[name] for name in BY_A1111 if body.get(name) is not None}
    if given.get("s_min_uncond") == 0:  # A1111's default ("off"), which its clients send unasked: the model's own
        del given["s_min_uncond"]
    values = {BY_A1111[name].name: checked(name, value) for name, value in given.items()
              if img2img or not BY_A1111[name].img2img}
    values["scheduler"] = sampler(body)
    if img2img:
        values["image"] = init_image(body)
        steps = values.get("num_inference_steps", FIELD["num_inference_steps"].default)
        strength = values.get("strength", FIELD["strength"].default)
        try:
            check_steps_left(steps, strength)
        except StudioError as exc:
            raise FieldError("denoising_strength", strength, str(exc).replace("strength=", "denoising_strength=", 1)) from exc
    if img2img and body.get("mask") is not None:
        values |= mask_fields(body)
    count = body.get("n_iter")
    count = 1 if count is None else count
    try:
        whole_number("n_iter", count, 1, MAX_BATCH_COUNT)
    except StudioError as exc:
        raise FieldError("n_iter", count, str(exc)) from exc
    return batches(GenerationRequest(**values), int(count))


FILLS = {1: "original", 2: "latent noise"}  # A1111's inpainting_fill: 0 fill, 1 original, 2 latent noise, 3 latent nothing


def mask_fields(body: dict) -> dict:
    """Inpainting: A1111's mask (inverted with inpainting_mask_invert), inpainting_fill and
    inpaint_full_res as the studio's mask_image, masked_content and inpaint_only_masked."""
    mask = decoded_image(body["mask"], "mask").convert("L")
    if body.get("inpainting_mask_invert") not in (None, 0, False):
        mask = ImageOps.invert(mask)
    fill = body.get("inpainting_fill")
    fill = 1 if fill is None else fill
    if fill not in FILLS or isinstance(fill, bool):
        raise FieldError("inpainting_fill", fill, str(bad_argument(
            "inpainting_fill", fill, "1 (original) or 2 (latent noise): the studio has no fill or latent nothing")))
    only = body.get("inpaint_full_res")
    if only is not None and not isinstance(only, (bool, int)):
        raise FieldError("inpaint_full_res", only, str(bad_argument("inpaint_full_res", only, "true or false")))
    return {"mask_image": mask, "masked_content": FILLS[fill], "inpaint_only_masked": bool(only)}


def init_image(body: dict):
    pictures = body.get("init_images")
    if not isinstance(pictures, list) or not pictures:
        raise FieldError("init_images", pictures, "init_images: send a list of one base64 picture to start from.")
    return decoded_image(pictures[0], "init_images[0]")


def response(body: dict, results: list, pngs: list[bytes], img2img: bool, stopped: str | None = None) -> dict:
    """A1111's answer: the PNGs (with their infotext) in base64, the request echoed, and the info
    (a JSON string) that clients read: seeds, infotexts, sizes, the sampler."""
    pictures = {"init_images": None, "mask": None} if img2img else {}  # not echoed, as A1111 does
    parameters = {k: v for k, v in body.items() if k not in pictures} | pictures
    return {"images": [base64.b64encode(png).decode("ascii") for png in pngs], "parameters": parameters,
            "info": json.dumps(info(results, stopped))}


def info(results: list, stopped: str | None = None) -> dict:
    seeds = [seed for r in results for seed in r.seeds]
    first = results[0] if results else None
    r = first.request if first else GenerationRequest()
    texts = [metadata.format_parameters(result, seed) for result in results for seed in result.seeds]
    return {"prompt": r.prompt, "all_prompts": [r.prompt] * len(seeds), "negative_prompt": r.negative_prompt,
            "all_negative_prompts": [r.negative_prompt] * len(seeds), "seed": seeds[0] if seeds else r.seed,
            "all_seeds": seeds, "subseed": r.subseed, "all_subseeds": [r.subseed] * len(seeds),
            "subseed_strength": r.subseed_strength, "width": r.width, "height": r.height,
            "sampler_name": metadata.sampler_field(first) if first else r.scheduler,
            "cfg_scale": r.guidance_scale, "steps": r.num_inference_steps, "batch_size": r.num_images_per_prompt,
            "restore_faces": False, "face_restoration_model": None,
            "sd_model_name": first.model if first else None, "sd_model_hash": first.model_hash if first else None,
            "seed_resize_from_w": -1, "seed_resize_from_h": -1,
            "denoising_strength": r.strength if r.is_img2img else None, "extra_generation_params": {},
            "index_of_first_image": 0, "infotexts": texts, "styles": [], "job_timestamp": "",
            "clip_skip": r.clip_skip or 1, "is_using_inpainting_conditioning": False,
            "version": f"diffusion-studio {__version__}", "stopped": stopped}
