"""The PNG "parameters" text chunk, in AUTOMATIC1111's format: write it, and read it back.

    a small red circle at the top left on a blue background
    Negative prompt: green
    Steps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 123, Size: 64x64, Model hash: 1a2b3c4d5e, ...

A value holding a comma, colon or newline is JSON-quoted, as A1111 does, so tools that read
A1111 PNGs read ours. `request_fields` maps a parsed text (ours or A1111's) back to
GenerationRequest arguments, with a note for each value the studio cannot use. This module is the
one home of that format; it does not generate.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image, PngImagePlugin

from studio import __version__, schedulers
from studio.errors import StudioError
from studio.fields import FIELD, FIELDS
from studio.requests import check_field

KEY = "parameters"
NEGATIVE = "Negative prompt:"
PAIR = re.compile(r'\s*([\w][\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(value) -> str:
    text = str(value)
    if any(c in text for c in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def format_parameters(result, seed: int) -> str:
    """The parameters text for one image of `result` (a studio.requests.GenerationResult)."""
    r = result.request
    fields = {
        "Steps": r.num_inference_steps,
        "Sampler": sampler_field(result),
        "CFG scale": r.guidance_scale,
        "Seed": seed,
        "Size": f"{r.width}x{r.height}",
        "Model hash": result.model_hash,
        "Model": Path(result.model).name or result.model,
    }
    if fields["Sampler"] != (result.scheduler_name or r.scheduler):  # the model's own, unnamed
        fields["Scheduler"] = result.scheduler_name
    if len(result.seeds) > 1:  # as A1111 writes them: the batch, and this image's place in it
        fields["Batch size"] = len(result.seeds)
        fields["Batch pos"] = result.seeds.index(seed)
    fields |= extra_fields(r)
    if getattr(result, "lineage", None) is not None:  # a branch: where it left its parent (studio.branching)
        fields |= result.lineage.infotext()
    fields |= getattr(result, "card", None) or {}  # what the pixels depend on besides these (studio.runcard)
    fields["Version"] = f"diffusion-studio {__version__}"
    lines = [r.prompt]
    if r.negative_prompt:
        lines.append(f"{NEGATIVE} {r.negative_prompt}")
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in fields.items()))
    return "\n".join(lines)


HEAD = {"Steps", "Sampler", "CFG scale", "Seed", "Batch size"}  # written above, as A1111 writes them


def extra_fields(request) -> dict:
    """The table's other infotext fields (studio.fields): an img2img field when it is img2img,
    any other when it is set to something but its default."""
    extra = {}
    for field in FIELDS:
        if field.infotext is None or field.infotext in HEAD or (field.img2img and not request.is_img2img) \
                or (field.inpaint and not request.is_inpaint):
            continue
        value = getattr(request, field.name)
        if field.img2img or value not in (None, field.default):
            extra[field.infotext] = value
    return extra


def sampler_field(result) -> str:
    """The sampler's name as the studio reads it back: a scheduler class with no name of its own
    (the model's default, e.g. DEISMultistepScheduler) is "Default", the class kept apart."""
    name = result.scheduler_name or result.request.scheduler
    return name if name in schedulers.NAMES else schedulers.DEFAULT


def parse_parameters(text: str) -> dict[str, str]:
    """{"Prompt": ..., "Negative prompt": ..., "Steps": "20", ...} from a parameters text."""
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    pairs = PAIR.findall(last)
    if len(pairs) < 3:  # no settings line: the whole text is the prompt
        pairs, body = [], lines
    else:
        body = lines[:-1]
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith(NEGATIVE):
            in_negative, line = True, line[len(NEGATIVE):].lstrip()
        (negative if in_negative else prompt).append(line)
    values = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    values.update({k.strip(): unquote(v) for k, v in pairs})
    return values


def save_png(image: Image.Image, path: Path, result, seed: int) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text(KEY, format_parameters(result, seed))
    image.save(path, pnginfo=info)
    return path


def parameters_in_file(path) -> str | None:
    """The parameters text of the picture file at `path`, without decoding its pixels.

    PIL reads the text chunks before the pixel data on open; a PNG's text after its pixels
    (allowed, and what some tools write) PIL finds only by decoding the whole picture
    (`image.text`), so those chunks are read here one by one, skipping the pixel chunks."""
    from studio.images import open_header

    with open_header(path) as image:  # the header and what precedes the pixels
        if KEY in image.info or image.format != "PNG":
            return image.info.get(KEY)
    with open(path, "rb") as file:
        file.seek(8)  # the PNG signature, checked by the open above
        png = PngImagePlugin.PngStream(file)
        while True:
            kind, position, length = png.read()
            if kind == b"IEND":
                return None
            if kind in (b"tEXt", b"zTXt", b"iTXt"):
                png.call(kind, position, length)
                file.seek(4, 1)  # its CRC
                if KEY in png.im_info:
                    return png.im_info[KEY]
            else:
                file.seek(length + 4, 1)  # the chunk's data and CRC, unread


def read_parameters(image: Image.Image) -> str | None:
    """The parameters text of an opened PNG (ours or A1111's), if it has one."""
    text = image.info.get(KEY)
    if text is None and hasattr(image, "text"):
        text = image.text.get(KEY)
    return text


# A1111's numeric keys this studio reads back, each a request field (studio.fields)
NUMERIC_FIELDS = {f.infotext: f for f in FIELDS if f.infotext and f.kind in (int, float)}


def checked_value(key: str, text: str):
    """The number in `text` for the A1111 `key`; StudioError naming the field if out of range."""
    field = NUMERIC_FIELDS[key]
    try:
        value = to_number(text)
    except ValueError:
        raise StudioError(f"{field.name}={text!r} is not a number.") from None
    return check_field(field, value)


def to_number(text: str) -> int | float:
    """"20" -> 20, "7.5" -> 7.5; ValueError for anything else (A1111 writes plain decimals)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def sampler_name(values: dict[str, str]) -> str:
    """The sampler, joined with A1111's separate "Schedule type" (>= 1.9): DPM++ 2M + Karras."""
    name = values["Sampler"].strip()
    schedule = values.get("Schedule type", "").strip()
    if schedule and schedule.lower() not in ("automatic", "uniform") and not name.endswith(schedule):
        name = f"{name} {schedule}"
    return name


def request_fields(values: dict[str, str]) -> tuple[dict, list[str]]:
    """GenerationRequest arguments from `parse_parameters`' output, and a note per unusable value.

    A value that is missing or cannot be used is left out of the arguments (a UI keeps what it
    had), and its note names the field and the value. Without "Batch size" the batch is 1, as
    A1111 writes it only for batches."""
    fields = {"prompt": values.get("Prompt", ""), "negative_prompt": values.get("Negative prompt", "")}
    notes: list[str] = []
    settings = [k for k in values if k not in ("Prompt", "Negative prompt")]
    if settings:  # what A1111 leaves out when it is not used: the batch of 1, no variation, no clip skip
        fields |= {f.name: f.default for f in FIELDS if f.infotext and f.infotext not in values
                   and (f.infotext == "Batch size" or f.infotext not in HEAD and not f.img2img and not f.inpaint)}
    for field in [f for f in NUMERIC_FIELDS if f in values]:
        try:
            fields[NUMERIC_FIELDS[field].name] = checked_value(field, values[field])
        except StudioError as exc:
            notes.append(f"{field}: {values[field]!r} cannot be used: {exc} It was left as it was.")
    for field in [f for f in FIELDS if f.kind is str and f.infotext in values and f.infotext != "Sampler"]:
        try:  # LoRA, Masked content
            fields[field.name] = check_field(field, values[field.infotext])
        except StudioError as exc:
            notes.append(f"{field.infotext}: {values[field.infotext]!r} cannot be used: {exc} It was left as it was.")
    if "Size" in values:
        fields.update(size_fields(values["Size"], notes))
    if "Sampler" in values:
        name = sampler_name(values)
        if name in schedulers.NAMES:
            fields["scheduler"] = name
        else:
            notes.append(f"Sampler: {name!r} is not a sampler this studio has (it has "
                         f"{', '.join(schedulers.NAMES)}). It was left as it was.")
    return fields, notes


def size_fields(text: str, notes: list[str]) -> dict:
    """{"width": w, "height": h} from "WxH", or {} and a note."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text)
    if match is None:
        notes.append(f"Size: {text!r} cannot be used (expected WIDTHxHEIGHT, like 512x512). "
                     "Width and height were left as they were.")
        return {}
    sizes = {}
    for name, value in zip(("width", "height"), map(int, match.groups())):
        try:
            sizes[name] = check_field(FIELD[name], value)
        except StudioError as exc:
            notes.append(f"Size: {exc} The {name} was left as it was.")
    return sizes
