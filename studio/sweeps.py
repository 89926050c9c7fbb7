"""X/Y plots: a sweep over one or two parameters, run cell by cell, drawn as one labelled grid.

An axis is a kind (a GenerationRequest field, "prompt_sr" or "nothing") and the values typed for
it in AUTOMATIC1111's syntax (see VALUE_SYNTAX). `plan_sweep` builds every cell's request from
the base request and checks them all with `check_inputs` before anything runs, so a bad value is
one error naming the axis, the parameter and the value. `run_sweep` runs the cells one by one
through the PipelineManager (Stop acts between and inside cells), writes each single image with
its own metadata, and `draw_grid` draws the labelled grid. This module knows nothing of Gradio and
does not load models.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import random
import re
import threading

from PIL import Image, PngImagePlugin

from studio import grids, metadata, schedulers
from studio.errors import GenerationCancelled, StudioError, bad_argument
from studio.fields import AXES, FIELD, MAX_SEED
from studio.requests import GenerationRequest, check_inputs

MAX_CELLS = 64
NOTHING = "nothing"
PROMPT_SR = "prompt_sr"
# kind -> the name people know (the grid's labels, the UI's dropdown, the grid's metadata); the
# fields that can be swept are the table's (studio.fields, `axis`)
KINDS = {NOTHING: "Nothing", **AXES, PROMPT_SR: "Prompt S/R"}
NUMERIC = {name: FIELD[name].kind for name in AXES if FIELD[name].kind in (int, float)}
RANGE_SYNTAX = "a range like 1-5 (step 1), 10-30 (+10) (a step) or 1-9 [5] (5 evenly spaced values)"
VALUE_SYNTAX = f"comma-separated values (quote a value that holds a comma); numbers also as {RANGE_SYNTAX}"
NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
RANGE = re.compile(rf"^({NUMBER})\s*-\s*({NUMBER})\s*(?:\(\s*({NUMBER})\s*\)|\[\s*(\d+)\s*\])?$")



@dataclasses.dataclass(frozen=True)
class Axis:
    name: str             # "X" or "Y"
    kind: str             # a key of KINDS
    values: tuple         # parsed; for prompt S/R the first is the search text
    text: str = ""        # the values as typed, for the grid's metadata

    @property
    def label(self) -> str:
        return KINDS[self.kind]

    @property
    def labelled(self) -> bool:
        """Whether the grid has a row or column of labels for it ("nothing" has none)."""
        return self.kind != NOTHING

    def describe(self, value) -> str:
        """A cell's label on this axis: "CFG scale: 7.5"; prompt S/R shows the text itself."""
        if self.kind == NOTHING:
            return ""
        if self.kind == PROMPT_SR:
            return str(value)
        return f"{self.label}: {value:g}" if isinstance(value, float) else f"{self.label}: {value}"

    def apply(self, request: GenerationRequest, value) -> GenerationRequest:
        """`request` with this axis set to `value` (prompt S/R replaces in prompt and negative)."""
        if self.kind == NOTHING:
            return request
        if self.kind == PROMPT_SR:
            search = self.values[0]
            return dataclasses.replace(request, prompt=request.prompt.replace(search, value),
                                       negative_prompt=request.negative_prompt.replace(search, value))
        return dataclasses.replace(request, **{self.kind: value})


def axis_error(axis: str, kind: str, value, expected: str) -> StudioError:
    """`X axis: guidance_scale='abc' is not allowed: expected a number ...`."""
    return StudioError(f"{axis} axis: {bad_argument(kind, value, expected)}")


def split_values(text: str) -> list[str]:
    """'a, "b, c", d' -> ['a', 'b, c', 'd']; empty items are dropped."""
    rows = csv.reader([text], skipinitialspace=True)
    return [item.strip() for row in rows for item in row if item.strip()]


def expand_range(axis: str, kind: str, item: str) -> list | None:
    """The numbers an item like '10-30 (+10)' or '1-9 [5]' stands for; None if not a range."""
    match = RANGE.match(item)
    if match is None:
        return None
    cast = NUMERIC[kind]
    expected = "a range of whole numbers" if cast is int else "a range of numbers"
    try:
        start, end = cast(match[1]), cast(match[2])
        step = cast(match[3]) if match[3] else None
    except ValueError:
        raise axis_error(axis, kind, item, expected) from None
    if match[4] is not None:  # [count]: evenly spaced, ends included
        count = int(match[4])
        if not 1 <= count <= MAX_CELLS:
            raise axis_error(axis, kind, item, f"a count in [ ] from 1 to {MAX_CELLS}")
        spaced = [start + (end - start) * i / max(count - 1, 1) for i in range(count)]
        return [int(round(v)) if cast is int else round(v, 6) for v in spaced]
    direction = 1 if end >= start else -1
    step = direction if step is None else step
    if step == 0 or (step > 0) != (direction > 0) and start != end:
        raise axis_error(axis, kind, item, f"a step in ( ) that goes from {start} towards {end}")
    try:
        count = math.floor((end - start) / step + 1e-9) + 1
    except (OverflowError, ValueError):  # a 1000-digit end: no float holds it
        count = math.inf
    if count > MAX_CELLS:
        raise axis_error(axis, kind, item, f"a range of at most {MAX_CELLS} values (it gives {count})")
    return [start + i * step if cast is int else round(start + i * step, 6) for i in range(count)]


def parse_value(axis: str, kind: str, item: str) -> list:
    """One typed item -> its values: a number, a range of numbers, a sampler name or a text."""
    if kind in NUMERIC:
        expanded = expand_range(axis, kind, item)
        if expanded is not None:
            return expanded
        cast = NUMERIC[kind]
        try:
            return [cast(item)]
        except ValueError:
            what = "a whole number" if cast is int else "a number"
            raise axis_error(axis, kind, item, f"{what}, or {RANGE_SYNTAX}") from None
    if kind == "scheduler":
        by_lower = {name.lower(): name for name in schedulers.NAMES}
        if item.lower() not in by_lower:
            raise axis_error(axis, kind, item, "one of " + ", ".join(schedulers.NAMES))
        return [by_lower[item.lower()]]
    return [item]


MAX_AXIS_CHARS = 4000  # 64 prompt S/R values of 60 characters fit; a 128 KiB value list does not


def parse_axis(axis: str, kind: str, text: str | None) -> Axis:
    """An axis from its kind and typed values; "nothing" ignores the values (one row or column)."""
    if kind not in KINDS:
        raise bad_argument(f"{axis} axis type", kind, "one of " + ", ".join(KINDS))
    if kind == NOTHING:
        return Axis(axis, kind, (None,), "")
    if isinstance(text, str) and len(text) > MAX_AXIS_CHARS:
        raise axis_error(axis, kind, text[:40] + "...", f"at most {MAX_AXIS_CHARS} characters (got {len(text):,})")
    if not isinstance(text, str) or not split_values(text):
        raise axis_error(axis, kind, text, VALUE_SYNTAX)
    values = [value for item in split_values(text) for value in parse_value(axis, kind, item)]
    if len(values) > MAX_CELLS:
        raise axis_error(axis, kind, text, f"at most {MAX_CELLS} values (it gives {len(values)})")
    return Axis(axis, kind, tuple(values), text)


@dataclasses.dataclass
class SweepPlan:
    base: GenerationRequest       # seed resolved: every cell shares it unless seed is an axis
    x: Axis
    y: Axis
    requests: list[GenerationRequest]  # row by row: y outer, x inner; each checked

    @property
    def columns(self) -> int:
        return len(self.x.values)

    @property
    def rows(self) -> int:
        return len(self.y.values)

    def cell_label(self, index: int) -> str:
        row, column = divmod(index, self.columns)
        parts = [self.x.describe(self.x.values[column]), self.y.describe(self.y.values[row])]
        return " · ".join(p for p in parts if p) or "the base settings"


def check_axis_fits(base: GenerationRequest, axis: Axis) -> None:
    if axis.kind == "strength" and not base.is_img2img:
        raise StudioError(f"{axis.name} axis (Denoising strength) needs a starting picture: strength "
                          "acts only in image to image.")
    if axis.kind == PROMPT_SR:
        search = axis.values[0]
        if search not in base.prompt and search not in base.negative_prompt:
            raise StudioError(f"{axis.name} axis (Prompt S/R): the search text {search!r} (the first "
                              f"value) is in neither the prompt nor the negative prompt.")


def check_cell(base: GenerationRequest, x: Axis, x_value, y: Axis, y_value) -> GenerationRequest:
    """The cell's request, checked; an error names the axis and value that make it bad."""
    try:
        return check_inputs(y.apply(x.apply(base, x_value), y_value))
    except StudioError as combined:
        for axis, value in ((x, x_value), (y, y_value)):
            try:
                check_inputs(axis.apply(base, value))
            except StudioError as alone:
                raise StudioError(f"{axis.name} axis ({axis.label}) value {value!r}: {alone}") from None
        raise StudioError(f"{x.name} axis ({x.label}) value {x_value!r} with {y.name} axis "
                          f"({y.label}) value {y_value!r}: {combined}") from None


def plan_sweep(base: GenerationRequest, x: Axis, y: Axis) -> SweepPlan:
    """Every cell's request, checked before any runs; the base's random seed is drawn once."""
    # 1. The grid's size and the base on its own
    cells = len(x.values) * len(y.values)
    if cells > MAX_CELLS:
        raise StudioError(f"The plot has {len(x.values)} x {len(y.values)} = {cells} cells; at most "
                          f"{MAX_CELLS} are allowed. Use fewer values.")
    try:
        base = check_inputs(base)
    except StudioError as exc:
        raise StudioError(f"Base settings: {exc}") from None
    # 2. One seed for all cells (as A1111 does), so they differ only where the axes differ
    if base.seed == -1:
        base = dataclasses.replace(base, seed=random.randrange(MAX_SEED + 1))
    # 3. Each axis makes sense for this base, then every cell passes check_inputs
    if x.kind == y.kind and x.kind not in (NOTHING, PROMPT_SR):
        raise StudioError(f"The X and Y axes both set {x.label} ({x.kind}): pick two different parameters.")
    for axis in (x, y):
        check_axis_fits(base, axis)
    requests = [check_cell(base, x, xv, y, yv) for yv in y.values for xv in x.values]
    return SweepPlan(base, x, y, requests)


@dataclasses.dataclass
class SweepResult:
    plan: SweepPlan
    results: list                 # GenerationResult per cell that ran, in plan order
    grid: Image.Image
    parameters: str               # the grid's PNG "parameters" text
    files: list[list[str]]        # each result's PNG paths as written (empty without a writer)
    grid_path: str | None = None
    cancelled: bool = False

    @property
    def paths(self) -> list[str]:
        """Every single image's path, cell by cell."""
        return [path for paths in self.files for path in paths]


def run_sweep(manager, plan: SweepPlan, writer=None, on_progress=None,
              cancel: threading.Event | None = None) -> SweepResult:
    """Run every cell through `manager.generate`; `on_progress(cell, cells, step, steps)` reports.

    Setting `cancel` stops the running cell at its next step and runs no more; the grid then
    shows the cells that finished."""
    cancel = cancel or threading.Event()
    results, files, cancelled = [], [], False
    for index, request in enumerate(plan.requests):
        report = None
        if on_progress is not None:
            on_progress(index, len(plan.requests), 0, request.steps_to_run())

            def report(step, total, _picture, index=index):
                on_progress(index, len(plan.requests), step, total)
        if cancel.is_set():
            cancelled = True
            break
        try:
            result = manager.generate(request, on_step=report, cancel=cancel)
        except GenerationCancelled:
            cancelled = True
            break
        results.append(result)
        if writer is not None:
            files.append(writer.write(result))
    if not results:
        raise GenerationCancelled(f"Stopped before the first of {len(plan.requests)} cells finished.")
    grid = grids.draw_grid(plan, [r.images[0] for r in results])
    sweep = SweepResult(plan, results, grid, grid_parameters(plan, results[0]), files, cancelled=cancelled)
    if writer is not None:
        sweep.grid_path = save_grid(sweep, writer)
    return sweep


def grid_parameters(plan: SweepPlan, first) -> str:
    """The base's parameters text plus A1111's X/Y fields ("X Type: CFG scale, X Values: ...")."""
    base = dataclasses.replace(plan.base, width=first.request.width, height=first.request.height)
    swept = {plan.x.kind, plan.y.kind}
    shown = dataclasses.replace(first, request=base,
                                scheduler_name="" if "scheduler" in swept else first.scheduler_name)
    fields = {}
    for axis in (plan.x, plan.y):
        if axis.kind != NOTHING:
            fields[f"{axis.name} Type"] = axis.label
            fields[f"{axis.name} Values"] = axis.text
    extra = ", ".join(f"{k}: {metadata.quote(v)}" for k, v in fields.items())
    text = metadata.format_parameters(shown, plan.base.seed)
    return f"{text}, {extra}" if extra else text


def save_grid(sweep: SweepResult, writer) -> str:
    """The grid as NNNNN-xy-grid.png next to the singles, with its parameters text."""
    path = writer.next_paths(["xy-grid"])[0]
    info = PngImagePlugin.PngInfo()
    info.add_text(metadata.KEY, sweep.parameters)
    sweep.grid.save(path, pnginfo=info)
    return str(path)
