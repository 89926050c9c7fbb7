"""Section 11 of the benchmark: what the explainer's attention recording costs.

Recording attention (studio.attention) runs softmax(QK^T) a second time beside each cross-
attention layer, for the conditional half, and keeps one map per prompt token per step. Off, no
processor is installed (tests/test_attention.py checks the UNet's processors are its own), so
the cost off is that of a run before the feature: nothing. Timings interleave on and off.
"""
from __future__ import annotations

from benchmarks import plan as p
from benchmarks.generation import studio_request, studio_run
from benchmarks.measure import Stats, interleave, ratio
from benchmarks.report import Figure

MAX_TOKENS = 75  # a CLIP window (77) without its start and end tokens: the most a prompt keeps
# Latent sides elsewhere: SD 1.5 at 512x512 and SDXL at 1024x1024 (maps are float16, per picture)
LATENT_SIDES = {"SD 1.5, 512x512": 64, "SDXL, 1024x1024": 128}


def attention_cost(manager, plan: p.Plan) -> list[Figure]:
    runs = {"recording": studio_run(manager, studio_request(manager, record_attention=True)),
            "off": studio_run(manager, studio_request(manager))}
    times = interleave(runs, 2 * plan.repeats)
    figures = [Figure("11", "recording attention / off", "x",
                      ratio(Stats.of(times["recording"]["seconds"]), Stats.of(times["off"]["seconds"])),
                      note=f"{p.STEPS} steps, default sampler, one picture; off installs no processor (0% by construction)")]
    trajectory = manager.generate(studio_request(manager, record_attention=True)).trajectory
    first = trajectory.steps[0].attention
    tokens, side = first.shape[1], first.shape[-1]
    figures.append(Figure("11", "attention kept per step, bundled model", "KiB",
                          Stats.of([first.numel() * first.element_size() / 1024]),
                          note=f"{tokens} prompt tokens x {side}x{side} latent, float16, one picture"))
    for model, latent in LATENT_SIDES.items():
        for count in (tokens, MAX_TOKENS):
            figures.append(Figure("11", f"attention kept per step, {model}, {count} tokens (computed)", "KiB",
                                  Stats.of([count * latent * latent * 2 / 1024])))
    return figures
