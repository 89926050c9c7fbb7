"""Does a model's cross-attention sit where its words were drawn? Figures for the attention maps.

For each held-out scene the model draws the caption with attention recorded (studio.attention),
and each word's map is read against the shape the picture shows (classify.read_colours: the
pixels nearer the shape's colour than the background's). A word's mass ratio is the share of its
map's mass inside the drawn shape divided by the shape's share of the picture: 1 is no
preference, 2 means twice as dense on the shape as on average, below 1 means it avoids the shape.

    python -m training.localise [--model models/tiny-shapes] [--prompts 48] [--steps 20]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from studio import attention
from studio.requests import GenerationRequest
from training import classify, evaluate, shapes

ROLES = ("shape", "colour", "background")  # the scene's words: its shape, the shape's colour, the background's


def scenes(count: int) -> list[shapes.Scene]:
    """`count` held-out scenes spread over every triple, size and position."""
    every = evaluate.held_out_scenes()
    return every[::max(1, len(every) // count)][:count]


def mass_ratio(heat: np.ndarray, inside: np.ndarray) -> float:
    """(mass inside / all mass) / (area inside / all area)."""
    return float(heat[inside].sum() / max(heat.sum(), 1e-12) / max(inside.mean(), 1e-12))


def measure(manager, count: int = 48, steps: int = 20, at=(None,)) -> dict:
    """{step: {role: [mass ratio per scene]}}, for the map at each 0-based step of `at`, None
    meaning the mean over all steps. A picture that shows no shape is left out (`summary` counts
    the pictures read)."""
    ratios = {step: {role: [] for role in ROLES} for step in at}
    for seed, scene in enumerate(scenes(count)):
        result = manager.generate(GenerationRequest(prompt=shapes.caption(scene), num_inference_steps=steps,
                                                    seed=seed, record_attention=True, preview="none"))
        picture = np.asarray(result.images[0].convert("RGB"))
        _, foreground, cover = classify.read_colours(picture)
        if foreground is None or not (cover > 0.5).any():
            continue
        for step in at:
            maps = attention.maps_at(result.trajectory, step)
            for role in ROLES:
                found = attention.find_word(result.trajectory, getattr(scene, role))
                heat = attention.heat(maps, found, picture.shape[1::-1])
                ratios[step][role].append(mass_ratio(heat, cover > 0.5))
    return ratios


def summary(values: list[float]) -> dict[str, float]:
    values = np.asarray(values)
    return {"read": len(values), "median": float(np.median(values)), "at_least_2x": float((values >= 2).mean()),
            "below_1": float((values < 1).mean())}


def main(argv: list[str] | None = None) -> None:
    from studio.config import Settings
    from studio.manager import PipelineManager

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/tiny-shapes"))
    p.add_argument("--prompts", type=int, default=48)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    manager = PipelineManager(Settings(model=str(args.model)))
    manager.load()
    at = {"all steps": None, "step 1": 0, "step 5": 4, "step 10": 9, f"step {args.steps}": args.steps - 1}
    ratios = measure(manager, args.prompts, args.steps, tuple(at.values()))
    for label, step in at.items():
        for role in ROLES:
            s = summary(ratios[step][role])
            print(f"{label:>9} {role:>10} word: median {s['median']:.2f}x, >=2x {s['at_least_2x']:.0%}, "
                  f"<1x {s['below_1']:.0%} ({s['read']} pictures)")


if __name__ == "__main__":
    main()
