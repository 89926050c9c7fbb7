"""What the benchmark runs: the one request every section starts from, and how many repeats,
clients and subprocesses each section gets in a full or a --quick run.

The one home of the benchmark's defaults and goals. This module runs nothing.
"""
from __future__ import annotations

import dataclasses

PROMPT = "a small red circle at the top left on a blue background"
NEGATIVE_PROMPT = ""
SEED = 1234
STEPS = 20
FEW_STEPS = 2                  # the round trip's second step count, to split off the per-step cost
GUIDANCE = 7.5

# Goals (upper bounds unless said otherwise)
GOAL_STUDIO_VS_DIFFUSERS = 1.03
GOAL_FAST_PREVIEW = 1.05
GOAL_COMPUTE_FLOOR = 1.10
GOAL_ROUND_TRIP = 1.25
GOAL_MEMORY = 1.10
GOAL_KEPT_STATE = 1.03        # keeping every step's resumable state and CFG halves, as a ratio
GOAL_SCRUB_MS = 16            # the viewer's slider: input to the new frame painted, in Chromium
GOAL_ONE_IMAGE_SECONDS = 0.5   # the headline: one 20-step image on the bundled model, on a CPU


@dataclasses.dataclass(frozen=True)
class Plan:
    repeats: int                       # interleaved repeats of the in-process timings
    cold_repeats: int                  # subprocess cold starts of each kind
    cold_warmup: int                   # untimed starts first (they fill the page cache)
    memory_runs: int                   # fresh processes for the memory figures
    clients: tuple[int, ...]           # concurrent gradio_client clients for throughput
    requests_per_client: int
    scaling_repeats: int
    scaling_steps: tuple[int, ...] = (10, 20, 50)
    scaling_sizes: tuple[float, ...] = (1.0, 1.5, 2.0)   # times the model's native side
    trajectory_steps: tuple[int, ...] = (20, 50, 150)
    preview_every: tuple[int, ...] = (1, 5)

    @classmethod
    def full(cls, repeats: int) -> "Plan":
        return cls(repeats=repeats, cold_repeats=min(repeats, 3), cold_warmup=1, memory_runs=min(repeats, 3),
                   clients=(1, 2, 4, 8), requests_per_client=2,
                   scaling_repeats=repeats)

    @classmethod
    def quick(cls, repeats: int) -> "Plan":
        """For CI: every section, fewer samples (the whole run stays under about two minutes)."""
        return cls(repeats=min(repeats, 3), cold_repeats=1, cold_warmup=0, memory_runs=1, clients=(1, 4),
                   requests_per_client=2, scaling_repeats=1, trajectory_steps=(20, 50))


def request_arguments(size: int, steps: int = STEPS) -> dict:
    """The txt2img arguments shared by the studio request and the raw diffusers call."""
    return {"prompt": PROMPT, "negative_prompt": NEGATIVE_PROMPT, "num_inference_steps": steps,
            "guidance_scale": GUIDANCE, "width": size, "height": size}


def gradio_arguments(size: int, steps: int = STEPS, preview: str = "none") -> dict:
    """The /txt2img API's inputs, by field name."""
    return dict(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE,
                width=size, height=size, seed=SEED, preview=preview)


def scaled_side(native: int, factor: float) -> int:
    """`native * factor` rounded to a multiple of 8 (what the pipelines accept)."""
    return max(8, int(round(native * factor / 8)) * 8)
