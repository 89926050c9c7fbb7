"""A deterministic pixel classifier for tiny-shapes pictures: colour, background, shape, size, place.

It reads a 64x64 RGB picture the way the world in shapes.py draws one: the border is background;
each pixel's coverage is its position on the line from the background colour to the shape's
colour; the box where coverage passes 1/2 tells size and grid position. The shape is the one
of the three ideal drawings, with the covered area and centroid measured, that overlaps the
coverage best (soft intersection over union), counting coverage only in that box and its
EDGE_MARGIN, so faint noise elsewhere in the background is not taken for shape. It has no
learned parts, so its verdicts are reproducible; it is not meant for pictures from any other
source.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from training import shapes

PALETTE = np.array(list(shapes.COLOURS.values()), dtype=np.float32)  # (8, 3)
NAMES = list(shapes.COLOURS)
MIN_CONTRAST = 60.0  # RGB distance from the background for a pixel to count as shape
# Pixels around the coverage > 1/2 box that still count, for the shape's anti-aliased edge.
# Until v4 the shape was read from the covered area over the box area, summed over the whole
# picture: faint background noise then added area, and even the VAE's round trips of the ideal
# held-out scenes scored 71.9% on shape (small shapes 50%); this reading scores them 100%.
EDGE_MARGIN = 2
# A shape's area per squared half-extent: what its half-extent is, given the covered area.
AREA = {"circle": np.pi, "square": 4.0, "triangle": 2.0}


@dataclasses.dataclass(frozen=True)
class Verdict:
    colour: str | None
    background: str
    shape: str | None
    size: str | None
    position: str | None
    # How well the named shape's ideal drawing overlaps the picture's coverage (soft IoU): about
    # 0.97 for the drawings themselves, 0.92 for their VAE round trips; lower is a rougher shape.
    shape_fit: float | None = None


def nearest_colour(rgb: np.ndarray) -> str:
    return NAMES[int(np.argmin(((PALETTE - rgb) ** 2).sum(axis=1)))]


def coverage(pixels: np.ndarray, background: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Per-pixel fraction of shape colour, (h, w) in [0, 1]: projection onto bg -> fg."""
    direction = foreground - background
    alpha = ((pixels - background) @ direction) / max(float(direction @ direction), 1e-6)
    return np.clip(alpha, 0.0, 1.0)


def read_colours(image: np.ndarray):
    """(background, shape colour, coverage): the border's median colour, the median of the pixels
    far from it, and each pixel's place between the two; no shape colour if too few are far."""
    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    far = np.linalg.norm(pixels - background, axis=2) > MIN_CONTRAST
    if far.sum() < 4:
        return background, None, None
    foreground = np.median(pixels[far], axis=0)
    return background, foreground, coverage(pixels, background, foreground)


def classify(image: np.ndarray) -> Verdict:
    """`image`: (h, w, 3) uint8, h = w = shapes.RESOLUTION."""
    background, foreground, alpha = read_colours(image)
    if foreground is None:
        return Verdict(None, nearest_colour(background), None, None, None)
    rows, cols = np.nonzero(alpha > 0.5)
    if len(rows) == 0:
        return Verdict(nearest_colour(foreground), nearest_colour(background), None, None, None)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    local = np.zeros_like(alpha)
    box = (slice(max(rows.min() - EDGE_MARGIN, 0), rows.max() + 1 + EDGE_MARGIN),
           slice(max(cols.min() - EDGE_MARGIN, 0), cols.max() + 1 + EDGE_MARGIN))
    local[box] = alpha[box]
    shape, fit = best_shape(local)
    half = np.sqrt(height * width) / 2
    size = "small" if half < (shapes.SIZES["small"] + shapes.SIZES["large"]) / 2 else "large"
    centre = ((cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2)
    return Verdict(nearest_colour(foreground), nearest_colour(background), shape, size,
                   grid_position(centre, image.shape[0]), round(fit, 4))


def best_shape(alpha: np.ndarray) -> tuple[str, float]:
    """The shape whose ideal drawing, of the same area and centroid, overlaps `alpha` best, and
    that overlap (soft intersection over union)."""
    area = float(alpha.sum())
    ys, xs = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]] + 0.5  # pixel centres
    mx, my = float((alpha * xs).sum()) / area, float((alpha * ys).sum()) / area

    def overlap(shape: str) -> float:
        half = np.sqrt(area / AREA[shape])
        # A triangle's centroid lies a third of its half-extent below its box's centre.
        ideal = shapes.coverage(shape, half, mx, my - half / 3 if shape == "triangle" else my)
        return float(np.minimum(alpha, ideal).sum() / np.maximum(alpha, ideal).sum())

    fits = {shape: overlap(shape) for shape in shapes.SHAPES}
    best = max(fits, key=fits.get)
    return best, fits[best]


FIT_HALVES = (-0.5, 0.0, 0.5, 1.0, 1.5)  # px added to the box's half-extent when fitting the ideal
FIT_SHIFTS = (-1.0, 0.0, 1.0)            # px the ideal may move from the box's centre


def box_iou(image: np.ndarray, shape: str) -> float:
    """The stricter reading of a picture's shape: the intersection over union of what it draws
    (coverage > 1/2) and the ideal `shape` (the prompt's) drawn in the same box, its corners and
    edges where the box says. A rounded square, a lumpy circle or a spire of a triangle scores
    low here even where `best_shape` still names it right. 0 when nothing is drawn."""
    _, foreground, alpha = read_colours(image)
    if foreground is None:
        return 0.0
    drawn = alpha > 0.5
    rows, cols = np.nonzero(drawn)
    half = (rows.max() - rows.min() + 1 + cols.max() - cols.min() + 1) / 4
    cx, cy = (cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2

    def iou(h: float, dx: float, dy: float) -> float:
        ideal = shapes.coverage(shape, h, cx + dx, cy + dy) > 0.5
        return float((drawn & ideal).sum() / (drawn | ideal).sum())

    # The ideal is fitted to the box as the drawing's own threshold sees it: a triangle's thin
    # apex and corners fall under 1/2, so its thresholded box is smaller than the box it fills.
    return max(iou(half + dh, dx, dy) for dh in FIT_HALVES for dx in FIT_SHIFTS for dy in FIT_SHIFTS)


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
