"""A deterministic pixel classifier for tiny-shapes pictures: colour, background, shape, size, place.

It reads a 64x64 RGB picture the way the world in shapes.py draws one: the border is background;
each pixel's coverage is its position on the line from the background colour to the shape's
colour; the covered area over the bounding box area tells the shape (square 1, circle pi/4,
triangle 1/2); the bounding box tells size and grid position. It has no learned parts, so its
verdicts are reproducible; it is not meant for pictures from any other source.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from training import shapes

PALETTE = np.array(list(shapes.COLOURS.values()), dtype=np.float32)  # (8, 3)
NAMES = list(shapes.COLOURS)
MIN_CONTRAST = 60.0  # RGB distance from the background for a pixel to count as shape
# Bounding-box fill ratios between the shapes' ideal ones (1/2, pi/4, 1).
TRIANGLE_BELOW, CIRCLE_BELOW = 0.64, 0.89


@dataclasses.dataclass(frozen=True)
class Verdict:
    colour: str | None
    background: str
    shape: str | None
    size: str | None
    position: str | None


def nearest_colour(rgb: np.ndarray) -> str:
    return NAMES[int(np.argmin(((PALETTE - rgb) ** 2).sum(axis=1)))]


def coverage(pixels: np.ndarray, background: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Per-pixel fraction of shape colour, (h, w) in [0, 1]: projection onto bg -> fg."""
    direction = foreground - background
    alpha = ((pixels - background) @ direction) / max(float(direction @ direction), 1e-6)
    return np.clip(alpha, 0.0, 1.0)


def classify(image: np.ndarray) -> Verdict:
    """`image`: (h, w, 3) uint8, h = w = shapes.RESOLUTION."""
    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    far = np.linalg.norm(pixels - background, axis=2) > MIN_CONTRAST
    if far.sum() < 4:
        return Verdict(None, nearest_colour(background), None, None, None)
    foreground = np.median(pixels[far], axis=0)
    alpha = coverage(pixels, background, foreground)
    rows, cols = np.nonzero(alpha > 0.5)
    if len(rows) == 0:
        return Verdict(nearest_colour(foreground), nearest_colour(background), None, None, None)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    fill = float(alpha.sum()) / float(height * width)
    shape = "triangle" if fill < TRIANGLE_BELOW else "circle" if fill < CIRCLE_BELOW else "square"
    half = np.sqrt(height * width) / 2
    size = "small" if half < (shapes.SIZES["small"] + shapes.SIZES["large"]) / 2 else "large"
    centre = ((cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2)
    return Verdict(nearest_colour(foreground), nearest_colour(background), shape, size,
                   grid_position(centre, image.shape[0]))


def grid_position(centre: tuple[float, float], resolution: int) -> str:
    column = ("left", "", "right")[int(np.digitize(centre[0] / resolution, [0.375, 0.625]))]
    row = ("top", "", "bottom")[int(np.digitize(centre[1] / resolution, [0.375, 0.625]))]
    return " ".join(p for p in (row, column) if p) or "center"


def score(verdicts: list[Verdict], scenes: list[shapes.Scene]) -> dict[str, float]:
    """Accuracy per attribute, as fractions."""
    result = {}
    for attribute in ("colour", "background", "shape", "size", "position"):
        hits = [getattr(v, attribute) == getattr(s, attribute) for v, s in zip(verdicts, scenes)]
        result[attribute] = sum(hits) / len(hits)
    return result
