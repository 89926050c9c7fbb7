"""The benchmark's outputs: figures with goals, the machine description, the markdown table,
RESULTS.md, results.json and the scaling plot (drawn with PIL, no plotting library).

This module measures nothing; it formats what the sections measured.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from benchmarks.measure import Stats

PLOT_PANEL = (420, 300)   # width, height of one panel of the scaling plot, in pixels
PLOT_MARGIN = 48


@dataclasses.dataclass
class Figure:
    """One reported number: a median with its spread, and optionally a goal it must meet."""
    section: str
    name: str
    unit: str                       # "s", "x" (a ratio), "MiB", "KiB", "img/s", "bool"
    stats: Stats
    at_most: float | None = None    # goal: median <= at_most
    at_least: float | None = None   # goal: median >= at_least
    note: str = ""

    @property
    def goal(self) -> str:
        if self.unit == "bool" and self.at_least is not None:
            return "yes"
        if self.at_most is not None:
            return f"<= {self.at_most:g}{unit_suffix(self.unit)}"
        if self.at_least is not None:
            return f">= {self.at_least:g}{unit_suffix(self.unit)}"
        return ""

    @property
    def passed(self) -> bool | None:
        if self.at_most is None and self.at_least is None:
            return None
        low_ok = self.at_least is None or self.stats.median >= self.at_least
        high_ok = self.at_most is None or self.stats.median <= self.at_most
        return low_ok and high_ok

    def as_dict(self) -> dict:
        return {"section": self.section, "name": self.name, "unit": self.unit,
                "median": self.stats.median, "min": self.stats.low, "max": self.stats.high,
                "samples": self.stats.samples, "goal": self.goal or None, "passed": self.passed,
                "note": self.note}


def unit_suffix(unit: str) -> str:
    return {"s": " s", "x": "x", "MiB": " MiB", "KiB": " KiB", "img/s": " img/s"}.get(unit, "")


def number(value: float, unit: str) -> str:
    """A value with its unit, three decimals for seconds and ratios."""
    if unit == "bool":
        return "yes" if value >= 1 else "no"
    if math.isnan(value):
        return "n/a"
    text = f"{value:.3f}" if unit in ("s", "x") and abs(value) < 100 else f"{value:.4g}"
    return text + unit_suffix(unit)


def spread(stats: Stats, unit: str) -> str:
    """min – max, or a dash for a single sample."""
    if unit == "bool" or len(stats.samples) < 2:
        return "–"
    return f"{number(stats.low, unit)} – {number(stats.high, unit)}"


def verdict(figure: Figure) -> str:
    return {True: "PASS", False: "**FAIL**", None: ""}[figure.passed]


def markdown_table(figures: list[Figure]) -> str:
    """Figures as a markdown table: section, figure, median, spread, goal, result, note."""
    lines = ["| # | figure | median | spread (min – max) | goal | result | note |",
             "|---|---|---|---|---|---|---|"]
    for f in figures:
        lines.append(f"| {f.section} | {f.name} | {number(f.stats.median, f.unit)} | "
                     f"{spread(f.stats, f.unit)} | {f.goal} | {verdict(f)} | {f.note} |")
    return "\n".join(lines)


def machine() -> dict:
    """CPU model, cores, torch threads and the versions that matter."""
    import diffusers
    import gradio
    import torch
    import transformers

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "gradio": gradio.__version__, "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform knows elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


BUSY_CORES = 0.25   # other processes using more than this during a section make its figures suspect


def results_markdown(figures: list[Figure], info: dict, settings: dict, failures: dict[str, str]) -> str:
    """The whole RESULTS.md: how it was run, on what, the table, failed goals and broken sections."""
    failed = [f for f in figures if f.passed is False]
    load = settings.get("cores used by other processes, by section", {})
    busy = [f"{name} ({cores:g} cores)" for name, cores in load.items() if cores > BUSY_CORES]
    lines = ["# Benchmark results", "",
             f"`{settings['command']}` on {settings['date']}, {settings['seconds']:.0f} s in all.", ""]
    if busy:
        lines += [f"**Other processes were busy during: {'; '.join(busy)}.** Their work competed for "
                  "the same cores, so those sections' timings are slower and noisier than on a quiet machine.", ""]
    lines += ["## Machine", ""] + [f"- {key}: {value}" for key, value in info.items() if value is not None]
    lines += ["", "## Settings", ""]
    lines += [f"- {key}: {value}" for key, value in settings.items() if key not in ("command", "date", "seconds")]
    lines += ["", "## Figures", "", "Median over the repeats, spread = min – max; a ratio is the median of the per-repeat "
              "ratios, A and B being interleaved in each repeat (so a slow spell falls on both), with their spread.", "",
              markdown_table(figures), "", "## Goals not met", ""]
    lines += [f"- {f.name}: {number(f.stats.median, f.unit)} (goal {f.goal}). {f.note}" for f in failed] or ["- none"]
    lines += ["", "## Sections that could not be measured", ""]
    lines += [f"- {name}: `{error}`" for name, error in failures.items()] or ["- none"]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, suffix: str, figures: list[Figure], info: dict, settings: dict,
                  failures: dict[str, str]) -> list[Path]:
    """RESULTS{suffix}.md and results{suffix}.json in `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"RESULTS{suffix}.md"
    md.write_text(results_markdown(figures, info, settings, failures))
    js = out / f"results{suffix}.json"
    payload = {"machine": info, "settings": settings, "figures": [f.as_dict() for f in figures],
               "failures": failures}
    js.write_text(json.dumps(payload, indent=2) + "\n")
    return [md, js]


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    loadavg = Path("/proc/loadavg")
    return " ".join(loadavg.read_text().split()[:3]) if loadavg.exists() else "n/a"


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def command_line() -> str:
    return "python -m benchmarks.benchmark " + " ".join(sys.argv[1:])


# ----- the scaling plot -------------------------------------------------------------------------
def scaling_plot(panels: list[tuple[str, str, list[tuple[float, Stats]]]], path: Path) -> Path:
    """Side-by-side panels, each (title, x label, [(x, seconds)]), medians joined by a line and
    min–max bars; saved as PNG."""
    width, height = PLOT_PANEL
    image = Image.new("RGB", (width * len(panels), height), "white")
    draw = ImageDraw.Draw(image)
    for i, (title, xlabel, points) in enumerate(panels):
        draw_panel(draw, (i * width, 0, (i + 1) * width, height), title, xlabel, points)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def nice_ticks(largest: float, count: int = 5) -> list[float]:
    """Round tick values from 0 past `largest`, spaced 1, 2, 2.5 or 5 times a power of ten."""
    raw = largest / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return [step * k for k in range(math.ceil(largest / step) + 1)]


def draw_panel(draw: ImageDraw.ImageDraw, box: tuple, title: str, xlabel: str,
               points: list[tuple[float, Stats]]) -> None:
    """One panel: axes from zero with round ticks, the medians joined, and min–max bars."""
    left, top, right, bottom = box[0] + PLOT_MARGIN + 8, box[1] + 48, box[2] - 28, box[3] - PLOT_MARGIN
    x_ticks = nice_ticks(max(x for x, _ in points))
    y_ticks = nice_ticks(max(s.high for _, s in points))
    font = ImageFont.load_default(size=12)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (right - left) * x / x_ticks[-1], bottom - (bottom - top) * y / y_ticks[-1]

    draw.text((box[0] + 8, box[1] + 6), title, fill="black", font=ImageFont.load_default(size=15))
    draw.text((box[0] + 8, box[1] + 28), "seconds per image", fill="black", font=font)
    for y in y_ticks:
        draw.line([(left, at(0, y)[1]), (right, at(0, y)[1])], fill=(230, 230, 230))
        draw.text((box[0] + 8, at(0, y)[1] - 7), f"{y:g}", fill="gray", font=font)
    for x in x_ticks:
        draw.text((at(x, 0)[0] - 3 * len(f"{x:g}"), bottom + 4), f"{x:g}", fill="gray", font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
    draw.text(((left + right) / 2 - 3 * len(xlabel), bottom + 22), xlabel, fill="black", font=font)
    draw.line([at(x, s.median) for x, s in points], fill=(40, 90, 200), width=2)
    for x, s in points:
        (px, py), (_, lo), (_, hi) = at(x, s.median), at(x, s.low), at(x, s.high)
        draw.line([(px, lo), (px, hi)], fill=(200, 60, 40), width=2)
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=(40, 90, 200))
