"""Input pictures for img2img: opened safely, turned upright, made 8-bit RGB, sized as asked.

Whatever arrives (RGBA, grayscale, palette, 16-bit, CMYK, an EXIF-rotated phone photo) leaves as
an upright RGB image of the requested size. Transparent areas (an alpha channel, or a PNG's tRNS
colour) are laid on white. A mismatched aspect ratio is centre-cropped, not stretched ("crop and
resize"). Pictures too large to decode safely are refused from their header, before their pixels
are read. This module does not touch models.
"""
from __future__ import annotations

import io
import numbers
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from studio.errors import StudioError, bad_argument

MAX_INPUT_PIXELS = 8192 * 8192  # refuse larger pictures (decompression bombs) before decoding
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
               Image.DecompressionBombError)


def describe(source) -> str:
    """How an error message shows the source: a path as typed, bytes by their length."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return repr(str(source))


def open_header(path) -> Image.Image:
    """The picture at `path` opened lazily: its header read, no pixels decoded. PIL's bomb warning
    is silenced, since whoever calls this checks the size itself (check_size) or never decodes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def check_size(image: Image.Image, name: str) -> None:
    """StudioError unless the picture has pixels and at most MAX_INPUT_PIXELS of them."""
    if image.width < 1 or image.height < 1 or image.width * image.height > MAX_INPUT_PIXELS:
        raise StudioError(f"{name} is {image.width}x{image.height} pixels; from 1 to "
                          f"{MAX_INPUT_PIXELS:,} pixels are accepted.")


def open_image(source, name: str = "image") -> Image.Image:
    """A decoded PIL image from a PIL image, a path or bytes; StudioError if it is not one."""
    if isinstance(source, Image.Image):
        check_size(source, name)
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        stream = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        stream = Path(source)
    else:
        raise bad_argument(name, type(source).__name__, "a PIL image, a file path or the file's bytes")
    try:
        image = Image.open(stream)
    except READ_ERRORS as exc:
        raise StudioError(f"{name}={describe(source)} could not be read as a picture ({exc}).") from exc
    try:
        check_size(image, name)  # from the header: nothing is decoded yet
        image.load()
    except StudioError:
        image.close()
        raise
    except READ_ERRORS as exc:
        image.close()
        raise StudioError(f"{name}={describe(source)} could not be decoded as a picture ({exc}).") from exc
    return image


def value_range(values: np.ndarray, mode: str) -> float:
    """The full-scale value of high-bit-depth pixels, so they scale to 8 bits instead of clipping.

    "I;16*" is 16-bit by definition. "I" and "F" do not say: take the smallest usual range that
    holds the largest value (F: 1.0, then 255, then 65535, then the maximum itself).
    """
    if mode.startswith("I;16"):
        return 65535.0
    top = float(values.max(initial=0.0))
    candidates = ((1.0,) if mode == "F" else ()) + (255.0, 65535.0)
    return next((c for c in candidates if top <= c), top)


def to_8bit(image: Image.Image) -> Image.Image:
    """A high-bit-depth grayscale picture as 8-bit "L", scaled by its full-scale value."""
    values = np.asarray(image, dtype=np.float64)
    scaled = values / value_range(values, image.mode) * 255.0 + 0.5
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """8-bit RGB, with transparency laid on white and high-bit-depth values scaled, not clipped."""
    if image.mode in HIGH_BIT_MODES:
        image = to_8bit(image)
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")  # a palette's or a tRNS chunk's transparency becomes alpha
    try:
        if image.mode in ALPHA_MODES:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as exc:
        raise StudioError(f"{name} has the colour mode {image.mode!r}, which cannot be made RGB ({exc}).") from exc


def prepare(source, width: int, height: int, name: str = "image") -> Image.Image:
    """The picture upright, in RGB, centre-cropped and resized to width x height."""
    for side, value in (("width", width), ("height", height)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise bad_argument(side, value, "a whole number of pixels, at least 1")
    image = open_image(source, name)
    image = to_rgb(ImageOps.exif_transpose(image), name)
    return ImageOps.fit(image, (int(width), int(height)), Image.Resampling.LANCZOS)
