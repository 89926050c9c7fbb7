"""The X/Y plot's grid picture: every cell's picture as a tile, enlarged crisply when small, with
the axes' labels in a header row and column, wrapped to fit."""
from __future__ import annotations

import functools
import math

from PIL import Image, ImageDraw, ImageFont

MIN_TILE = 192      # small pictures are enlarged by a whole factor (NEAREST) to at least this
FONT_SIZE = 16
LINE_HEIGHT = FONT_SIZE + 4
PAD = 6             # around label text
GAP = 4             # between tiles


@functools.cache
def font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def wrap(draw: ImageDraw.ImageDraw, text: str, width: int) -> list[str]:
    """`text` in lines no wider than `width` pixels (a word too long for a line is cut)."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font()) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
        while len(line) > 1 and draw.textlength(line, font=font()) > width:
            cut = 1
            while cut < len(line) - 1 and draw.textlength(line[:cut + 1], font=font()) <= width:
                cut += 1
            lines.append(line[:cut])
            line = line[cut:]
    return lines + ([line] if line else [])


def draw_lines(draw: ImageDraw.ImageDraw, lines: list[str], centre_x: float, middle_y: float) -> None:
    """A block of text lines, centred on (centre_x, middle_y)."""
    for i, line in enumerate(lines):
        top = middle_y - len(lines) * LINE_HEIGHT / 2 + i * LINE_HEIGHT
        draw.text((centre_x, top), line, fill="black", font=font(), anchor="ma")


def draw_grid(plan, pictures: list[Image.Image]) -> Image.Image:
    """Tiles row by row (missing ones grey), X labels along the top, Y labels down the left."""
    # 1. Tiles: enlarged by a whole factor with NEAREST, so small pictures stay crisp
    width, height = pictures[0].size
    scale = max(1, math.ceil(MIN_TILE / max(width, height)))
    tile_w, tile_h = width * scale, height * scale
    # 2. Room for labels: X labels wrapped to a tile's width; Y labels in a column on the left
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    top_lines = [wrap(probe, plan.x.describe(v), tile_w - 2 * PAD) for v in plan.x.values]
    widest = max(probe.textlength(plan.y.describe(v), font=font()) for v in plan.y.values)
    left = 0 if not plan.y.labelled else int(min(max(widest + 4 * PAD, 80), max(tile_w, 160)))
    left_lines = [wrap(probe, plan.y.describe(v), left - 2 * PAD) for v in plan.y.values]
    top = 0 if not plan.x.labelled else max(map(len, top_lines)) * LINE_HEIGHT + 2 * PAD
    grid = Image.new("RGB", (left + plan.columns * (tile_w + GAP), top + plan.rows * (tile_h + GAP)), "white")
    draw = ImageDraw.Draw(grid)
    # 3. The tiles, then the labels
    for index in range(plan.columns * plan.rows):
        row, column = divmod(index, plan.columns)
        x, y = left + column * (tile_w + GAP), top + row * (tile_h + GAP)
        if index < len(pictures):
            grid.paste(pictures[index].convert("RGB").resize((tile_w, tile_h), Image.Resampling.NEAREST), (x, y))
        else:  # not run (stopped)
            draw.rectangle((x, y, x + tile_w - 1, y + tile_h - 1), fill=(225, 225, 225))
            draw.text((x + tile_w / 2, y + tile_h / 2), "not run", fill="grey", font=font(), anchor="mm")
    for column, lines in enumerate(top_lines if top else []):
        draw_lines(draw, lines, left + column * (tile_w + GAP) + tile_w / 2, top / 2)
    for row, lines in enumerate(left_lines if left else []):
        draw_lines(draw, lines, left / 2, top + row * (tile_h + GAP) + tile_h / 2)
    return grid
