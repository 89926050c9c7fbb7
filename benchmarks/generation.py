"""In-process sections of the benchmark: the studio's generate() against raw diffusers, preview
cost, the compute floor, trajectory size and scaling with steps and resolution.

Each section function takes a loaded PipelineManager and a Plan and returns Figures (and, for
scaling, the points of the plot). Timings interleave the variants within each repeat. This
module launches no server and no subprocess (see benchmarks/serving.py).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import plan as p
from benchmarks.measure import ForwardTimer, GcTimer, Stats, compute_modules, interleave, ratio
from benchmarks.report import Figure
from studio.config import DEFAULT_MODEL
from studio.requests import GenerationRequest


def studio_request(manager, size: int | None = None, steps: int = p.STEPS, **extra) -> GenerationRequest:
    """The benchmark's txt2img request (native size unless told), with the fixed seed."""
    size = size or manager.loaded.native_size
    return GenerationRequest(**p.request_arguments(size, steps), seed=p.SEED, **extra)


def studio_run(manager, request: GenerationRequest):
    """A run that times `manager.generate(request)` and notes the first preview's arrival."""
    def run() -> dict:
        first = {}
        started = time.perf_counter()

        def on_step(step, total, pictures) -> None:
            if pictures is not None and "first_preview" not in first:
                first["first_preview"] = time.perf_counter() - started
            first.setdefault("first_step", time.perf_counter() - started)

        manager.generate(request, on_step=on_step)
        return {"seconds": time.perf_counter() - started, **first}
    return run


def load_raw_pipeline(manager):
    """The same model as plain diffusers would load it, same dtype and device."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(manager.settings.model, dtype=manager.dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(manager.device)


def raw_call(pipe, size: int, steps: int = p.STEPS):
    """The direct diffusers call the studio must match: same arguments, CPU generator list."""
    return pipe(**p.request_arguments(size, steps), generator=[torch.Generator().manual_seed(p.SEED)]).images[0]


def raw_run(pipe, size: int):
    """A run that times the direct diffusers call."""
    def run() -> dict:
        started = time.perf_counter()
        raw_call(pipe, size)
        return {"seconds": time.perf_counter() - started}
    return run


# ----- 1 and 9: the studio against raw diffusers, and the headline -------------------------------
def studio_vs_diffusers(manager, raw, plan: p.Plan) -> list[Figure]:
    """Section 1 (and 9): manager.generate vs StableDiffusionPipeline(...), interleaved."""
    size = manager.loaded.native_size
    # guidance at every step, as the plain pipeline call runs it: a model's own guidance interval
    # (studio.guidance, from its studio.json) would change the pixels and skip the unconditional
    # pass at low noise, so the two would no longer do the same work
    request = studio_request(manager, guidance_min_sigma=0.0)
    studio_image = manager.generate(request).images[0]
    raw_image = raw_call(raw, size)
    difference = int(np.abs(np.asarray(studio_image, np.int16) - np.asarray(raw_image, np.int16)).max())
    samples = interleave({"studio": studio_run(manager, request),
                          "diffusers": raw_run(raw, size)}, plan.repeats)
    studio, diffusers = (Stats.of(samples[k]["seconds"]) for k in ("studio", "diffusers"))
    note = f"{p.STEPS} steps, {size}x{size}, default scheduler, seed {p.SEED}"
    return [
        Figure("1", "studio generate(), one image", "s", studio, note=note),
        Figure("1", "raw diffusers pipeline call, one image", "s", diffusers, note=note),
        Figure("1", "studio / diffusers", "x", ratio(studio, diffusers), at_most=p.GOAL_STUDIO_VS_DIFFUSERS),
        Figure("1", "images identical to diffusers'", "bool", Stats.of([float(difference == 0)]),
               at_least=1, note=f"max pixel difference {difference}"),
        Figure("9", "headline: one 20-step image via the manager", "s", studio,
               at_most=p.GOAL_ONE_IMAGE_SECONDS if headline_has_goal(manager) else None,
               note=f"{size}x{size}, CFG {p.GUIDANCE}"),
    ]


def headline_has_goal(manager) -> bool:
    """The 0.5 s goal is for the bundled model on a CPU."""
    return manager.device == "cpu" and Path(manager.settings.model).resolve() == Path(DEFAULT_MODEL).resolve()


# ----- 2: preview cost ------------------------------------------------------------------------
def preview_variants(manager, plan: p.Plan) -> dict:
    """none, then each decoder (tiny only with --tiny-vae) every step and every k steps."""
    decoders = ["fast", "full"] + (["tiny"] if manager.settings.tiny_vae else [])
    runs = {"none": studio_run(manager, studio_request(manager))}
    for every in plan.preview_every:
        for decoder in decoders:
            request = studio_request(manager, preview=decoder, preview_every=every)
            runs[f"{decoder}/{every}"] = studio_run(manager, request)
    return runs


class DecodeTimer:
    """Sums the wall time of `manager.previews.decode` (the whole of a preview's own work: the
    decoder and the conversion to pictures) while it is installed."""

    def __init__(self, manager):
        self.previews, self.seconds = manager.previews, 0.0

    def __enter__(self) -> "DecodeTimer":
        decode = self.previews.decode

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return decode(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
        self.previews.decode = timed
        return self

    def __exit__(self, *exc) -> None:
        del self.previews.decode  # back to the class's method


def with_decode_time(manager, run):
    """A run that also reports the seconds its previews spent decoding."""
    def measured() -> dict:
        with DecodeTimer(manager) as timer:
            result = run()
        return {**result, "decode_seconds": timer.seconds}
    return measured


def preview_cost(manager, plan: p.Plan) -> list[Figure]:
    """Section 2: each decoder's cost as a ratio to no preview, and the time to the first one.

    The ratio of run times is the goal's figure, but on a small model a preview costs a few
    milliseconds against run-to-run noise of +-20%, so each run's own decode time is summed too:
    1 + decode / no-preview run is the same cost, counted instead of subtracted."""
    runs = {name: with_decode_time(manager, run) for name, run in preview_variants(manager, plan).items()}
    samples = interleave(runs, 2 * plan.repeats)  # twice the repeats: the ratios sit within noise
    none = Stats.of(samples["none"]["seconds"])
    figures = [Figure("2", "no preview", "s", none),
               Figure("2", "first step callback, no preview (from the start of generate)", "s",
                      Stats.of(samples["none"]["first_step"]))]
    for name, values in samples.items():
        if name == "none":
            continue
        decoder, every = name.split("/")
        when = "every step" if every == "1" else f"every {every} steps"
        goal = p.GOAL_FAST_PREVIEW if (decoder, every) == ("fast", "1") else None
        figures.append(Figure("2", f"{decoder} preview {when} / none", "x",
                              ratio(Stats.of(values["seconds"]), none), at_most=goal))
        decode = Stats.of(values["decode_seconds"])
        figures.append(Figure("2", f"{decoder} preview {when}: decoding, summed over the run", "s", decode,
                              note=f"1 + this / no preview = {1 + decode.median / none.median:.3f}x"))
        figures.append(Figure("2", f"time to first {decoder} preview ({when})", "s",
                              Stats.of(values["first_preview"])))
    return figures


# ----- 3: compute floor -----------------------------------------------------------------------
def timed_with_floor(timer: ForwardTimer, collector: GcTimer, run):
    """Wrap a run so it also returns the summed forward time of the hooked modules and the time
    spent in garbage collection."""
    def measured() -> dict:
        timer.reset()
        collector.reset()
        values = run()
        return {**values, "compute": timer.total(), **timer.totals, "gc": collector.seconds,
                "full_gc": collector.full_collections}
    return measured


def compute_floor(manager, raw, plan: p.Plan) -> list[Figure]:
    """Section 3: the studio's whole generate() time against the UNet + text encoder + VAE
    forward time inside it (the same, for reference, for the raw diffusers call)."""
    studio_timer = ForwardTimer(compute_modules(manager.loaded.txt2img), manager.device)
    raw_timer = ForwardTimer(compute_modules(raw), manager.device)
    collector = GcTimer()
    try:
        samples = interleave({
            "studio": timed_with_floor(studio_timer, collector, studio_run(manager, studio_request(manager))),
            "diffusers": timed_with_floor(raw_timer, collector, raw_run(raw, manager.loaded.native_size))},
            plan.repeats)
    finally:
        studio_timer.remove()
        raw_timer.remove()
        collector.remove()
    return floor_figures(samples, list(studio_timer.totals))


def floor_figures(samples: dict, modules: list[str]) -> list[Figure]:
    """Section 3's figures from the interleaved samples of both runs."""
    studio, diffusers = samples["studio"], samples["diffusers"]
    figures = [Figure("3", "compute floor (UNet + text encoder + VAE forward)", "s", Stats.of(studio["compute"]))]
    figures += [Figure("3", f"  of which {name}", "s", Stats.of(studio[name])) for name in modules]
    figures += [
        Figure("3", "studio generate() / compute floor", "x",
               ratio(Stats.of(studio["seconds"]), Stats.of(studio["compute"])), at_most=p.GOAL_COMPUTE_FLOOR),
        Figure("3", "raw diffusers call / its compute floor", "x",
               ratio(Stats.of(diffusers["seconds"]), Stats.of(diffusers["compute"])),
               note="for reference: the pipeline's own overhead"),
        Figure("3", "time in garbage collection, studio generate()", "s", Stats.of(studio["gc"]),
               note=f"full collections per call: {max(studio['full_gc']):.0f}"),
        Figure("3", "time in garbage collection, raw diffusers call", "s", Stats.of(diffusers["gc"]),
               note=f"full collections per call: {max(diffusers['full_gc']):.0f}"),
    ]
    return figures


# ----- 6 (part): trajectory size --------------------------------------------------------------
def trajectory_sizes(manager, plan: p.Plan) -> list[Figure]:
    """Section 6: trajectory.nbytes() of one image's run at each step count."""
    figures = []
    for steps in plan.trajectory_steps:
        trajectory = manager.generate(studio_request(manager, steps=steps)).trajectory
        size = trajectory.nbytes() / 1024
        figures.append(Figure("6", f"trajectory.nbytes(), {steps} steps", "KiB", Stats.of([size]),
                              note=f"{len(trajectory.steps)} steps recorded (x_t and x0, float16; the CFG halves "
                                   "and resumable state, section 10)"))
    return figures


# ----- 10: what branching and the CFG lens keep -------------------------------------------------
# Latent elements per picture and bytes per element on a GPU (float16): SD 1.5 at 512x512 and
# SDXL at 1024x1024 have 4x64x64 and 4x128x128 latents.
LATENTS_ELSEWHERE = {"SD 1.5, 512x512": 4 * 64 * 64, "SDXL, 1024x1024": 4 * 128 * 128}


def kept_state(manager, plan: p.Plan) -> list[Figure]:
    """Section 10: generate() keeping each step's resumable state and CFG halves against not
    keeping them (interleaved); the bytes kept per step, measured here for each sampler and
    computed for SD 1.5 and SDXL from the same counts of latent-sized tensors."""
    def keeping(on: bool):
        run = studio_run(manager, studio_request(manager))

        def timed() -> dict:
            manager.keep_steps_state = on
            try:
                return run()
            finally:
                manager.keep_steps_state = True
        return timed

    times = interleave({"kept": keeping(True), "not kept": keeping(False)}, 2 * plan.repeats)
    figures = [Figure("10", "keeping resumable state + CFG halves / not", "x",
                      ratio(Stats.of(times["kept"]["seconds"]), Stats.of(times["not kept"]["seconds"])),
                      at_most=p.GOAL_KEPT_STATE, note="20 steps, default sampler, one picture")]
    for name in ("Default", "Euler a", "DPM++ 2M", "UniPC", "PLMS"):
        steps = manager.generate(studio_request(manager, scheduler=name)).trajectory.steps
        first = steps[0]
        latent = first.resume.latents
        per_step = sum(s.resume.nbytes() for s in steps) / len(steps)
        halves = sum(t.numel() * t.element_size() for t in (first.x0_uncond, first.x0_cond))
        generators = sum(g.numel() for g in first.resume.generators)
        tensors = (per_step - generators) / (latent.numel() * latent.element_size())  # latent-sized, in its dtype
        figures.append(Figure("10", f"kept per step, {name}", "KiB", Stats.of([(per_step + halves) / 1024]),
                              note=f"{tensors:.1f} latent-sized tensors + {generators} B generator state + CFG halves"))
        for model, elements in LATENTS_ELSEWHERE.items():
            computed = tensors * elements * 2 + generators + 2 * elements * 2
            figures.append(Figure("10", f"kept per step, {name}, {model} (computed, float16)", "KiB",
                                  Stats.of([computed / 1024])))
    return figures


# ----- 8: scaling -----------------------------------------------------------------------------
def scaling(manager, plan: p.Plan) -> tuple[list[Figure], list]:
    """Section 8: seconds per image against steps (native size) and against the side (20 steps).
    Returns the figures and the plot's panels."""
    native = manager.loaded.native_size
    sides = [p.scaled_side(native, f) for f in plan.scaling_sizes]
    keys = dict.fromkeys([(s, native) for s in plan.scaling_steps] + [(p.STEPS, side) for side in sides])
    runs = {key: studio_run(manager, studio_request(manager, size=key[1], steps=key[0])) for key in keys}
    stats = {key: Stats.of(values["seconds"]) for key, values in interleave(runs, plan.scaling_repeats).items()}
    by_steps = [(s, stats[(s, native)]) for s in plan.scaling_steps]
    by_side = [(side, stats[(p.STEPS, side)]) for side in sides]
    figures = [Figure("8", f"{steps} steps at {side}x{side}", "s", stats[(steps, side)]) for steps, side in keys]
    figures += slope_figures(by_steps, by_side)
    panels = [("time vs steps", f"steps ({native}x{native})", by_steps),
              ("time vs pixels", f"pixels per image ({p.STEPS} steps)", [(s * s, st) for s, st in by_side])]
    return figures, panels


def slope_figures(by_steps: list, by_side: list) -> list[Figure]:
    """Least-squares lines through the medians: cost per step, fixed cost, cost per kilopixel."""
    per_step, fixed = np.polyfit([s for s, _ in by_steps], [st.median for _, st in by_steps], 1)
    figures = [Figure("8", "fit: seconds per step", "s", Stats.of([per_step])),
               Figure("8", "fit: fixed seconds per image (prompt encoding, decode, overhead)", "s",
                      Stats.of([fixed]))]
    if len(by_side) > 1:
        per_pixel, _ = np.polyfit([s * s / 1000 for s, _ in by_side], [st.median for _, st in by_side], 1)
        figures.append(Figure("8", "fit: seconds per 1000 pixels (20 steps)", "s", Stats.of([per_pixel])))
    return figures
