"""The procedural "tiny shapes" world: vocabulary, drawing, captions and the held-out split.

One coloured shape on a flat background, drawn anti-aliased at 4x and box-filtered down, with a
seeded caption such as "a small red circle at the top left on a blue background". This module
is the one home of the world's facts (palette, sizes, positions, hold-out triples); training,
evaluation, the classifier and the tests all read them from here. It is not a torch Dataset and
knows nothing of models.
"""
from __future__ import annotations

import dataclasses
import random

import numpy as np
from PIL import Image, ImageDraw

RESOLUTION = 64
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (35, 70, 225),
    "yellow": (245, 225, 40),
    "purple": (140, 50, 185),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
# Half-extent of the shape's bounding box, in pixels at RESOLUTION.
SIZES: dict[str, float] = {"small": 8.0, "large": 14.0}
# Bounding-box centre as a fraction of the canvas: a 3x3 grid.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25), "top": (0.5, 0.25), "top right": (0.75, 0.25),
    "left": (0.25, 0.5), "center": (0.5, 0.5), "right": (0.75, 0.5),
    "bottom left": (0.25, 0.75), "bottom": (0.5, 0.75), "bottom right": (0.75, 0.75),
}
SIZE_JITTER = 1.5      # pixels of half-extent
POSITION_JITTER = 2.5  # pixels of centre

# (colour, shape, background) triples never drawn for training; evaluation uses only these.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "blue"), ("green", "square", "white"), ("blue", "triangle", "yellow"),
    ("yellow", "circle", "purple"), ("purple", "square", "orange"), ("orange", "triangle", "black"),
    ("white", "circle", "green"), ("black", "square", "red"), ("red", "triangle", "green"),
    ("green", "circle", "orange"), ("blue", "square", "black"), ("yellow", "triangle", "white"),
    ("purple", "circle", "yellow"), ("orange", "square", "blue"), ("white", "triangle", "purple"),
    ("black", "circle", "white"),
)

# Words the captions use, besides the attribute values above.
FILLER_WORDS = ("a", "an", "at", "the", "on", "in", "background", "shape")


@dataclasses.dataclass(frozen=True)
class Scene:
    """One picture's attributes; `caption_parts` says which of them the caption names."""

    colour: str
    shape: str
    background: str
    size: str
    position: str
    half: float
    cx: float
    cy: float


def vocabulary() -> list[str]:
    """Every whole word a caption can contain, in a fixed order."""
    words: list[str] = list(FILLER_WORDS)
    words += list(COLOURS) + list(SHAPES) + list(SIZES)
    for position in POSITIONS:
        words += position.split()
    return list(dict.fromkeys(words))


def training_triples() -> list[tuple[str, str, str]]:
    held = set(HELD_OUT)
    return [(c, s, b) for c in COLOURS for s in SHAPES for b in COLOURS
            if c != b and (c, s, b) not in held]


def sample_scene(rng: random.Random, triple: tuple[str, str, str]) -> Scene:
    colour, shape, background = triple
    size = rng.choice(list(SIZES))
    position = rng.choice(list(POSITIONS))
    fx, fy = POSITIONS[position]
    half = SIZES[size] + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
    cx = fx * RESOLUTION + rng.uniform(-POSITION_JITTER, POSITION_JITTER)
    cy = fy * RESOLUTION + rng.uniform(-POSITION_JITTER, POSITION_JITTER)
    # Keep the whole shape on the canvas: a clipped shape would change its outline.
    cx, cy = (min(max(v, half + 1), RESOLUTION - half - 1) for v in (cx, cy))
    return Scene(colour, shape, background, size, position, half, cx, cy)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float],
               fill) -> None:
    """Draw one shape filling `box` (x0, y0, x1, y1): the triangle is upright, apex at the top."""
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:  # an upright triangle filling half its bounding box
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def supersampled(half: float, cx: float, cy: float, resolution: int) -> tuple[float, ...]:
    """A shape's bounding box (given at RESOLUTION) on the SUPERSAMPLE x `resolution` canvas."""
    k = SUPERSAMPLE * resolution / RESOLUTION
    return (cx - half) * k, (cy - half) * k, (cx + half) * k, (cy + half) * k


def render(scene: Scene, resolution: int = RESOLUTION) -> Image.Image:
    """Draw the scene anti-aliased: at SUPERSAMPLE x the size, then box-filtered down."""
    big = Image.new("RGB", (resolution * SUPERSAMPLE,) * 2, COLOURS[scene.background])
    box = supersampled(scene.half, scene.cx, scene.cy, resolution)
    draw_shape(ImageDraw.Draw(big), scene.shape, box, COLOURS[scene.colour])
    return big.resize((resolution, resolution), Image.Resampling.BOX)


def coverage(shape: str, half: float, cx: float, cy: float) -> np.ndarray:
    """(RESOLUTION, RESOLUTION) float32 in [0, 1]: how much of each pixel the shape covers,
    anti-aliased exactly as `render` draws it."""
    big = Image.new("L", (RESOLUTION * SUPERSAMPLE,) * 2, 0)
    draw_shape(ImageDraw.Draw(big), shape, supersampled(half, cx, cy, RESOLUTION), 255)
    return np.asarray(big.resize((RESOLUTION,) * 2, Image.Resampling.BOX), np.float32) / 255


def caption(scene: Scene, rng: random.Random | None = None, keep: float = 1.0,
            centre_keep: float | None = None) -> str:
    """The scene's caption; with `rng`, each optional attribute is kept with probability `keep`.

    With `centre_keep`, only a centred shape's place may be left out (it is kept with that
    probability), so that a caption without a place means the centre; other places are always named.
    The draws from `rng` are the same either way."""
    def kept(probability: float = keep) -> bool:
        return rng is None or rng.random() < probability

    words = ["a"]
    if kept():
        words.append(scene.size)
    if kept():
        words.append(scene.colour)
    words.append(scene.shape)
    centred = scene.position == "center"
    if kept(keep if centre_keep is None else centre_keep if centred else 1.0):
        words += ["in", "the", "center"] if centred else ["at", "the", scene.position]
    if kept():
        words += ["on", "a", scene.background, "background"]
    return " ".join(words)


def scenes(seed: int, count: int, triples: list[tuple[str, str, str]]) -> list[Scene]:
    rng = random.Random(seed)
    return [sample_scene(rng, rng.choice(triples)) for _ in range(count)]


def render_batch(batch: list[Scene]) -> np.ndarray:
    """(n, RESOLUTION, RESOLUTION, 3) uint8."""
    return np.stack([np.asarray(render(s)) for s in batch])
