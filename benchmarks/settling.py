"""When did the picture settle: the measurement behind studio.lens.SETTLED and the viewer's sentence.

For held-out prompts of the bundled model (never in training), each run at 20 steps: for each
threshold, the step k after which x0 moved by less than it (studio.lens.settled_at), and whether
the picture x0 predicted at step k already shows what the prompt asked for (colour, background,
shape, size and position, read by training/classify.py), against the finished picture.

    python -m benchmarks.settling [--prompts 32] [--out benchmarks/settling.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.2)
ATTRIBUTES = ("colour", "background", "shape", "size", "position")


def follows(picture, scene) -> bool:
    from training import classify

    seen = classify.classify(np.asarray(picture.convert("RGB")))
    return all(getattr(seen, a) == getattr(scene, a) for a in ATTRIBUTES)


def measure(manager, scenes, steps: int = 20, scheduler: str = "Default") -> dict:
    from studio import lens
    from studio.requests import GenerationRequest
    from training import shapes

    full, at = 0, {t: {"follows": 0, "steps": []} for t in THRESHOLDS}
    for i, scene in enumerate(scenes):
        result = manager.generate(GenerationRequest(prompt=shapes.caption(scene), seed=i, num_inference_steps=steps,
                                                    scheduler=scheduler, preview="none"))
        full += follows(result.images[0], scene)
        moves = lens.changes(result.trajectory)
        for threshold, tally in at.items():
            k = lens.settled_at(moves, threshold) or steps
            x0 = result.trajectory.steps[k - 1].x0[:1]
            tally["steps"].append(k)
            tally["follows"] += follows(manager.decode(x0, "full")[0], scene)
    return {"prompts": len(scenes), "steps": steps, "scheduler": scheduler, "full run follows": full,
            "by threshold": {str(t): {"follows": v["follows"], "median k": statistics.median(v["steps"]),
                                      "mean k": round(statistics.mean(v["steps"]), 1)} for t, v in at.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.settling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "settling.json")
    args = parser.parse_args(argv)
    from studio.config import DEFAULT_MODEL, Settings
    from studio.manager import PipelineManager
    from training import evaluate

    manager = PipelineManager(Settings(model=DEFAULT_MODEL))
    manager.load()
    scenes = evaluate.held_out_scenes()
    scenes = scenes[::max(len(scenes) // args.prompts, 1)][:args.prompts]
    results = {name: measure(manager, scenes, scheduler=name) for name in ("Default", "Euler a")}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
