"""The PNG "parameters" text chunk, in AUTOMATIC1111's format: write it, and read it back.

    a small red circle at the top left on a blue background
    Negative prompt: green
    Steps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 123, Size: 64x64, Model hash: 1a2b3c4d5e, ...

A value holding a comma, colon or newline is JSON-quoted, as A1111 does, so tools that read
A1111 PNGs read ours. This module is the one home of that format; it does not generate.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image, PngImagePlugin

from studio import __version__

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
        "Sampler": result.scheduler_name or r.scheduler,
        "CFG scale": r.guidance_scale,
        "Seed": seed,
        "Size": f"{r.width}x{r.height}",
        "Model hash": result.model_hash,
        "Model": Path(result.model).name or result.model,
    }
    if r.is_img2img:
        fields["Denoising strength"] = r.strength
    if r.clip_skip:
        fields["Clip skip"] = r.clip_skip
    fields["Version"] = f"diffusion-studio {__version__}"
    lines = [r.prompt]
    if r.negative_prompt:
        lines.append(f"{NEGATIVE} {r.negative_prompt}")
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in fields.items()))
    return "\n".join(lines)


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


def read_parameters(image: Image.Image) -> str | None:
    """The parameters text of an opened PNG (ours or A1111's), if it has one."""
    text = image.info.get(KEY)
    if text is None and hasattr(image, "text"):
        text = image.text.get(KEY)
    return text
