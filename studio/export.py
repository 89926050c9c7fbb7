"""Pictures of a trajectory: per-step images, a contact sheet, an animated GIF, the noise schedule.

Everything is drawn on demand from the latents a Trajectory keeps, through the manager's preview
decoders, and captioned with the step, timestep and sigma. `write_trajectory` is what the CLI's
--trajectory DIR writes. This module does not run models beyond decoding.
"""
from __future__ import annotations

import math

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CELL = 128          # pixels per picture in sheets and GIF frames
CAPTION = 16
GIF_MS_PER_FRAME = 150


def font(size: int = 11) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def caption(step) -> str:
    return f"step {step.index + 1}  t={step.timestep:.0f}  σ={step.sigma:.2f}"


def step_pictures(manager, trajectory, kind: str = "fast", image_index: int = 0) -> list[tuple]:
    """[(x_t picture, x0 picture), ...] for every step, for one image of the batch."""
    model = manager.loaded
    pairs = []
    for step in trajectory.steps:
        latents = step.latents[image_index:image_index + 1]
        x0 = step.x0[image_index:image_index + 1]
        pairs.append((manager.previews.decode(model, latents, kind)[0],
                      manager.previews.decode(model, x0, kind)[0]))
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


def schedule_chart(trajectory, current: int | None = None, size=(420, 200)) -> Image.Image:
    """Sigma over the N steps, on a log scale; the current step marked; img2img's skipped steps greyed.

    Log scale, because sigma spans orders of magnitude: 14.6 to 0.03 for Stable Diffusion, and
    up to 4096 for a zero-terminal-SNR schedule like the bundled model's.
    """
    sigmas = trajectory.schedule or [s.sigma for s in trajectory.steps]
    width, height = size
    left, right, top, bottom = 52, 12, 10, 28
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
    draw.line([xy(i, s) for i, s in enumerate(sigmas)], fill=(40, 90, 200), width=2)
    draw.line((left, height - bottom, width - right, height - bottom), fill="black")
    draw.line((left, top, left, height - bottom), fill="black")
    draw.text((left - 4, top), number(10 ** high), fill="black", font=font(10), anchor="ra")
    draw.text((left - 4, height - bottom), number(10 ** low), fill="black", font=font(10), anchor="rb")
    draw.text((left - 4, (top + height - bottom) / 2), "sigma", fill="grey", font=font(10), anchor="rm")
    draw.text((left, height - bottom + 4), "step 1", fill="black", font=font(10))
    draw.text((width - right, height - bottom + 4), f"step {len(sigmas)}", fill="black", font=font(10), anchor="ra")
    if current is not None and trajectory.steps:
        step = trajectory.steps[current]
        x, y = xy(start + current, step.sigma)
        draw.line((x, top, x, height - bottom), fill=(220, 60, 60))
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=(220, 60, 60))
    return chart


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
