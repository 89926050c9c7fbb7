"""Input pictures for img2img: opened safely, turned upright, made 8-bit RGB, sized as asked.

Whatever arrives (RGBA, grayscale, palette, 16-bit, CMYK, an EXIF-rotated phone photo) leaves as
an upright RGB image of the requested size. Transparent areas are laid on white. A mismatched
aspect ratio is centre-cropped, not stretched ("crop and resize"). Pictures too large to decode
safely are refused before their pixels are read. This module does not touch models.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from studio.errors import StudioError

MAX_INPUT_PIXELS = 8192 * 8192  # refuse larger pictures (decompression bombs) before decoding
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def open_image(source, name: str = "image") -> Image.Image:
    """A decoded PIL image from a PIL image, a path or bytes; StudioError if it is not one."""
    if isinstance(source, Image.Image):
        return source
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
        if image.width * image.height > MAX_INPUT_PIXELS:
            raise StudioError(f"{name} is {image.width}x{image.height} pixels; at most "
                              f"{MAX_INPUT_PIXELS:,} pixels are accepted.")
        image.load()
        return image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise StudioError(f"{name} could not be read as a picture ({exc}).") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, with alpha laid on white and high-bit-depth values scaled, not clipped."""
    if image.mode in HIGH_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" else 65535.0 if values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def prepare(source, width: int, height: int, name: str = "image") -> Image.Image:
    """The picture upright, in RGB, centre-cropped and resized to width x height."""
    image = open_image(source, name)
    if image.width * image.height > MAX_INPUT_PIXELS:
        raise StudioError(f"{name} is {image.width}x{image.height} pixels; at most "
                          f"{MAX_INPUT_PIXELS:,} pixels are accepted.")
    image = to_rgb(ImageOps.exif_transpose(image))
    return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
