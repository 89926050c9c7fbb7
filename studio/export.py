"""Pictures of a trajectory: per-step images, a contact sheet, an animated GIF, the noise schedule.

Everything is drawn on demand from the latents a Trajectory keeps, through the manager's preview
decoders, and captioned with the step, timestep and sigma. `write_trajectory` is what the CLI's
--trajectory DIR writes. This module does not run models beyond decoding.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CELL = 128          # pixels per picture in sheets and GIF frames
CAPTION = 16
GIF_MS_PER_FRAME = 150


FONT_FILE = "DejaVuSans.ttf"  # Debian's fonts-dejavu-core; it has σ, Pillow's default font has not


@functools.lru_cache(maxsize=8)
def font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype(FONT_FILE, size)
    except OSError:
        return ImageFont.load_default(size=size)


def sigma_sign() -> str:
    """σ where the font draws it, else the word (never a missing-glyph box)."""
    return "σ" if isinstance(font(), ImageFont.FreeTypeFont) and FONT_FILE in str(font().path) else "sigma"


def caption(step) -> str:
    return f"step {step.index + 1}  t={step.timestep:.0f}  {sigma_sign()}={step.sigma:.2f}"


def step_caption(trajectory, number: int) -> str:
    """"Step 12 of 12"; for a run that ran fewer steps than it scheduled (img2img, Stop), which of
    the ones that ran, and where that is in the schedule, so the header and the slider agree."""
    entry, ran, total = trajectory.steps[number - 1], len(trajectory.steps), trajectory.num_inference_steps
    head = f"**Step {number} of {total}**"
    if ran != total:
        skipped = f"; strength skipped the first {trajectory.start_step}" if trajectory.start_step else ""
        head = (f"**Step {number} of the {ran} that ran** ({trajectory.start_step + number} of {total} "
                f"scheduled{skipped})")
    noise_share = (entry.sigma ** 2 / (1 + entry.sigma ** 2)) ** 0.5
    return (f"{head} · timestep t = {entry.timestep:.0f} · σ = {entry.sigma:.3f} · "
            f"noise share √(1−ᾱ) = {noise_share:.2f}")


def step_pictures(manager, trajectory, kind: str = "fast", image_index: int = 0) -> list[tuple]:
    """[(x_t picture, x0 picture), ...] for every step, for one image of the batch."""
    pairs = []
    for step in trajectory.steps:
        latents = step.latents[image_index:image_index + 1]
        x0 = step.x0[image_index:image_index + 1]
        pairs.append((manager.decode(latents, kind)[0], manager.decode(x0, kind)[0]))
    return pairs


def side_by_side(noisy: Image.Image, clean: Image.Image, text: str) -> Image.Image:
    """x_t | x0 with a caption underneath: one GIF frame or one contact-sheet cell."""
    frame = Image.new("RGB", (2 * CELL, CELL + CAPTION), "white")
    frame.paste(noisy.convert("RGB").resize((CELL, CELL), Image.Resampling.LANCZOS), (0, 0))
    frame.paste(clean.convert("RGB").resize((CELL, CELL), Image.Resampling.LANCZOS), (CELL, 0))
    ImageDraw.Draw(frame).text((4, CELL + 2), text, fill="black", font=font())
    return frame


def contact_sheet(pairs: list[tuple], steps, columns: int = 5) -> Image.Image:
    """All steps in a grid, each cell x_t | x0, captioned."""
    cells = [side_by_side(a, b, caption(s)) for (a, b), s in zip(pairs, steps)]
    rows = (len(cells) + columns - 1) // columns
    width, height = cells[0].size
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for i, cell in enumerate(cells):
        sheet.paste(cell, ((i % columns) * width, (i // columns) * height))
    return sheet


def animated_gif(pairs: list[tuple], steps, path: Path) -> Path:
    frames = [side_by_side(a, b, caption(s)) for (a, b), s in zip(pairs, steps)]
    durations = [GIF_MS_PER_FRAME] * (len(frames) - 1) + [GIF_MS_PER_FRAME * 8]  # linger on the end
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path


def chart_axes(draw, xy, count: int, levels: tuple[float, float], margins: tuple, size: tuple,
               label: str | None = None) -> None:
    """A chart's frame: a labelled grid line at each power of ten, five step ticks."""
    (low, high), (left, right, top, bottom), (width, height) = levels, margins, size
    for power in range(math.ceil(low), math.floor(high) + 1):
        y = xy(0, 10.0 ** power)[1]
        draw.line((left, y, width - right, y), fill=(225, 225, 225))
        draw.text((left - 4, y), number(10.0 ** power), fill="black", font=font(10), anchor="rm")
    for tick in sorted({round(f * (count - 1)) for f in (0, 0.25, 0.5, 0.75, 1)}):
        x = xy(tick, 1.0)[0]
        draw.line((x, height - bottom, x, height - bottom + 4), fill="black")
        draw.text((x, height - bottom + 6), str(tick + 1), fill="black", font=font(10), anchor="ma")
    draw.line((left, height - bottom, width - right, height - bottom), fill="black")
    draw.line((left, top, left, height - bottom), fill="black")
    label = label or f"noise level {sigma_sign()} (log scale)"
    draw.text((left, top - 4), label, fill="black", font=font(11), anchor="ld")
    draw.text(((left + width - right) / 2, height - 4), "step", fill="black", font=font(11), anchor="md")


def schedule_chart(trajectory, current: int | None = None, size=(420, 220)) -> Image.Image:
    """Sigma over the N steps, on a log scale; the current step marked; img2img's skipped steps greyed.

    Log scale, because sigma spans orders of magnitude: 14.6 to 0.03 for Stable Diffusion, and
    up to 4096 for a zero-terminal-SNR schedule like the bundled model's. Each power of ten is a
    labelled grid line, and the step axis has five labelled ticks.
    """
    sigmas = trajectory.schedule or [s.sigma for s in trajectory.steps]
    width, height = size
    left, right, top, bottom = 56, 14, 22, 40
    chart = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(chart)
    positive = [s for s in sigmas if s > 0] or [1.0]
    high, low = math.log10(max(positive)), math.log10(min(positive))
    if high - low < 1e-6:
        high, low = high + 0.5, low - 0.5

    def xy(i: int, sigma: float) -> tuple[float, float]:
        x = left + (width - left - right) * i / max(len(sigmas) - 1, 1)
        level = math.log10(sigma) if sigma > 0 else low
        return x, top + (height - top - bottom) * (high - level) / (high - low)

    start = trajectory.start_step
    if start:
        draw.rectangle((left, top, xy(start, 0)[0], height - bottom), fill=(235, 235, 235))
        draw.text((left + 4, top + 2), f"skipped by strength ({start})", fill="grey", font=font(10))
    chart_axes(draw, xy, len(sigmas), (low, high), (left, right, top, bottom), size)
    draw.line([xy(i, s) for i, s in enumerate(sigmas)], fill=(40, 90, 200), width=2)
    if current is not None and trajectory.steps:
        step = trajectory.steps[current]
        x, y = xy(start + current, step.sigma)
        draw.line((x, top, x, height - bottom), fill=(220, 60, 60))
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=(220, 60, 60))
        draw.text((min(x + 6, width - right - 60), max(y - 14, top)), f"{sigma_sign()}={step.sigma:.3g}",
                  fill=(220, 60, 60), font=font(10))
    return chart


def convergence_chart(moves: list[float], threshold: float, settled: int | None, current: int | None = None,
                      size=(420, 220)) -> Image.Image:
    """How far x0 moved into each step (studio.lens.changes), a bar per step on a log scale, the
    threshold dashed, and the step the picture settled at marked. `current` is 0-based."""
    width, height = size
    left, right, top, bottom = 56, 14, 40, 40
    chart = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(chart)
    count = len(moves) + 1  # steps: the first has no move into it
    floor = min([m for m in moves if m > 0] + [threshold]) / 2
    low, high = math.log10(floor), math.log10(max(moves + [threshold * 2]))

    def xy(i: int, value: float) -> tuple[float, float]:
        x = left + (width - left - right) * i / max(count - 1, 1)
        level = math.log10(max(value, floor))
        return x, top + (height - top - bottom) * (high - level) / (high - low)

    chart_axes(draw, xy, count, (low, high), (left, right, top, bottom), size,
               label="how far x0 moved into each step (share of its size, log)")
    bar = max((width - left - right) / max(count, 1) * 0.6, 1.0)
    for i, move in enumerate(moves, start=1):
        x, y = xy(i, move)
        colour = (40, 90, 200) if move > threshold else (150, 170, 210)
        draw.rectangle((x - bar / 2, y, x + bar / 2, height - bottom), fill=colour)
    y = xy(0, threshold)[1]
    for x in range(left, width - right, 8):
        draw.line((x, y, x + 4, y), fill=(90, 160, 90))
    if settled is not None:
        x = xy(settled - 1, floor)[0]
        draw.line((x, top, x, height - bottom), fill=(90, 160, 90), width=2)
        draw.text((min(x + 4, width - right - 80), top + 2), f"settled after {settled}", fill=(60, 130, 60), font=font(10))
    if current is not None:
        x = xy(current, floor)[0]
        draw.line((x, top, x, height - bottom), fill=(220, 60, 60))
    return chart


def branch_sheet(rows: list[list[Image.Image]], at_step: int, labels: tuple[str, str], cell: int = 48,
                 most: int = 24) -> Image.Image:
    """A run's x0 filmstrip above its branch's, step by step; the steps they share (the first
    `at_step`) are drawn faded in the branch's row, and a red line marks where it left."""
    count = len(rows[0])
    shown = sorted({round(i * (count - 1) / (most - 1)) for i in range(most)} | {max(at_step - 1, 0), at_step}) \
        if count > most else list(range(count))
    shown = [i for i in shown if i < count]
    left, top = 80, 16
    sheet = Image.new("RGB", (left + len(shown) * cell, top + 2 * (cell + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (row, label) in enumerate(zip(rows, labels)):
        y = top + r * (cell + CAPTION)
        draw.text((4, y + cell // 2), label, fill="black", font=font(11), anchor="lm")
        for c, i in enumerate(shown):
            picture = row[i].convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            if r == 1 and i < at_step:  # shared with the run above
                picture = Image.blend(picture, Image.new("RGB", picture.size, "white"), 0.55)
            sheet.paste(picture, (left + c * cell, y))
            draw.text((left + c * cell + cell // 2, y + cell + 1), str(i + 1), fill="black", font=font(9), anchor="ma")
    split = left + sum(1 for i in shown if i < at_step) * cell
    draw.line((split, top - 4, split, sheet.height), fill=(220, 60, 60), width=2)
    draw.text((split + 3, 2), f"branch after step {at_step}" if at_step else "branch from the start",
              fill=(220, 60, 60), font=font(10))
    return sheet


def number(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def write_trajectory(manager, result, folder: Path, kind: str = "full") -> list[Path]:
    """One PNG per step for x_t and x0, plus trajectory.gif and contact_sheet.png."""
    folder.mkdir(parents=True, exist_ok=True)
    steps = result.trajectory.steps
    pairs = step_pictures(manager, result.trajectory, kind)
    written = []
    for step, (noisy, clean) in zip(steps, pairs):
        for name, picture in (("xt", noisy), ("x0", clean)):
            path = folder / f"step_{step.index + 1:03d}_{name}.png"
            picture.save(path)
            written.append(path)
    written.append(animated_gif(pairs, steps, folder / "trajectory.gif"))
    sheet = folder / "contact_sheet.png"
    contact_sheet(pairs, steps).save(sheet)
    written.append(sheet)
    return written
