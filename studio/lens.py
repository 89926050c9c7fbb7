"""What guidance did at a step (the CFG lens), and when the picture settled.

With guidance, every step's UNet call predicts twice, without the prompt (unconditional) and with
it (conditional), and the sampler gets u + s (c - u). The recorder keeps the x0 each half
predicts (studio.trajectory), so at any step the lens shows x0 unconditional, x0 conditional and
the guided x0, where they differ, and x0 at any other scale with no UNet call: x0 is linear in
the prediction, so x0(S) = x0_u + S (x0_c - x0_u). It is computed from the step's recorded guided
x0 as x0 + (S - s)(x0_c - x0_u), which at the run's own scale is that x0 exactly (for Heun-type
samplers, whose x0 comes from the step's second call, the halves are those of its first call).

`changes` measures how much x0 moved at each step; `settled_at` is the step after which it no
longer moved by more than SETTLED of the picture's own size (the threshold and the measurement
behind it are in benchmarks/settling.py and the README). This module knows nothing of Gradio.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from studio import guidance

# A step "changes the picture" while x0 moves by more than this share of its RMS size. Measured
# on the bundled model (benchmarks/settling.py, 32 held-out prompts, 20 steps): x0 at the step
# where the moves fell below 5% for good (median step 15) showed what the prompt asked for in 27
# prompts, the finished picture in 28; at 10% (median step 7) in 26; at 20% (step 5.5) in 19.
# Under Euler a the injected noise keeps x0 moving by more than 5% to the end (median step 20).
SETTLED = 0.05


def no_lens_reason(result) -> str | None:
    """Why a run has no lens (None when it has one)."""
    steps = result.trajectory.steps if result.trajectory is not None else []
    if steps and all(s.x0_cond is not None for s in steps):
        return None
    if result.request.guidance_scale <= 1:
        return (f"Guidance was {result.request.guidance_scale:g}, so there was no unconditional pass: the model "
                "predicted once per step, with the prompt only, and there is nothing to compare.")
    return ("This run has no unconditional pass to compare: the model has no text (unconditional), "
            "guidance is built into it (few-step and LCM models), or the run was saved before runs kept it.")


def unguided_note(result, step) -> str | None:
    """What the lens shows at `step` if guidance had ended or was fading there (studio.guidance)."""
    r = result.request
    if not r.guidance_min_sigma:
        return None
    share = guidance.weight(step.sigma, r.guidance_min_sigma, r.guidance_fade_sigma)
    if share >= 1:
        return None
    if share > 0:
        return (f"Step {step.index + 1}: guidance was fading (sigma {step.sigma:.2f}, between the run's "
                f"guidance_min_sigma {r.guidance_min_sigma:g} and guidance_fade_sigma {r.guidance_fade_sigma:g}): "
                f"the step kept {share:.0%} of it, so the unconditional x0 shown is the faded one the step used, "
                f"{share:.0%} of the way from the conditional x0 to the model's unconditional one.")
    return (f"Step {step.index + 1}: guidance had ended. The noise (sigma {step.sigma:.2f}) was below the run's "
            f"guidance_min_sigma {r.guidance_min_sigma:g}, so the model predicted once, with the prompt alone: "
            "the unconditional, conditional and guided x0 are one picture, at any scale.")


def remix(step, scale: float, guidance: float) -> torch.Tensor:
    """x0 at `step` re-mixed at guidance `scale`, from a run made at `guidance` (float32)."""
    x0, u, c = (getattr(step, name).float() for name in ("x0", "x0_uncond", "x0_cond"))
    if scale == guidance:
        return x0
    return x0 + (scale - guidance) * (c - u)


def difference_map(unconditional: Image.Image, conditional: Image.Image) -> Image.Image:
    """Where the two pictures differ: black where they agree, brighter (to yellow) the more."""
    a = np.asarray(unconditional.convert("RGB"), dtype=np.float32)
    b = np.asarray(conditional.convert("RGB"), dtype=np.float32)
    d = np.abs(a - b).max(axis=2)
    d = d / max(float(d.max()), 1.0)
    heat = np.stack([np.clip(d * 2, 0, 1), np.clip(d * 2 - 0.6, 0, 1), np.clip(d * 3 - 2.4, 0, 1) * 0.6], axis=2)
    return Image.fromarray((heat * 255).round().astype(np.uint8))


def changes(trajectory) -> list[float]:
    """For each step from the second: how far x0 moved from the step before, as a share of the
    last x0's RMS size (all pictures of the batch together)."""
    steps = trajectory.steps
    if len(steps) < 2:
        return []
    size = float(steps[-1].x0.float().pow(2).mean().sqrt()) or 1.0
    return [float((b.x0.float() - a.x0.float()).pow(2).mean().sqrt()) / size for a, b in zip(steps, steps[1:])]


def settled_at(moves: list[float], threshold: float = SETTLED) -> int | None:
    """The 1-based step after which x0 never moved by more than `threshold`, or None if it moved
    at the last step too. `moves[i]` is the move into step i + 2."""
    for k in range(len(moves), 0, -1):
        if moves[k - 1] > threshold:
            return k + 1 if k < len(moves) else None
    return 1


def settled_sentence(trajectory) -> str:
    moves = changes(trajectory)
    if not moves:
        return "One step ran: there is nothing to compare."
    k, ran = settled_at(moves), len(trajectory.steps)
    if k is None:
        return (f"The picture was still changing at the last step ({moves[-1]:.1%} of its size): "
                "more steps may still change it.")
    return (f"The picture stopped changing after step {k} of the {ran} that ran: every later step moved "
            f"the predicted x0 by less than {SETTLED:.0%}.")
