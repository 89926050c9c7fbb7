"""Does a model have the behaviour the studio's controls need? The figures behind the model card.

Each measure is one the studio's tests assert on the bundled model (tests/test_bundled_model.py
takes its prompts and pictures from here); this prints the whole curve rather than one point:

- img2img from a red circle towards "a large blue square ...": what each strength keeps;
- the negative prompt "red": the red share of 24 pictures of "a large circle", without and with;
- guidance: attributes right in 32 held-out scenes at guidance 1, 3 and 7.5;
- prompts that name no place ("a small green triangle on a white background"), the 16 held-out
  triples x 2 sizes x 3 seeds: how many are read right, and how many show two or more shapes
  (the held-out evaluation names a place in every prompt, and v9j drew several shapes without);
- every sampler but LCM at 8, 20 and 50 steps: of the 16 held-out triples, how many have the
  prompt's colours, and how many its shape as well.

    python -m training.behaviour [--model models/tiny-shapes] [--skip-samplers]
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from studio import guidance, schedulers
from studio.config import DEFAULT_MODEL, Settings
from studio.manager import PipelineManager
from studio.requests import GenerationRequest
from training import classify, evaluate, shapes

BLUE_SQUARE = "a large blue square in the center on a white background"
STRENGTHS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
ATTRIBUTES = ("colour", "background", "shape", "size", "position")
# One prompt per held-out (colour, shape, background) triple, small and large in turn: never in training.
SAMPLER_PROMPTS = [(f"a {('large', 'small')[i % 2]} {colour} {shape} on a {background} background",
                    colour, shape, background) for i, (colour, shape, background) in enumerate(shapes.HELD_OUT)]
SAMPLER_STEPS = (8, 20, 50)
MIN_PART = 6  # pixels (of 64x64) a patch of the shape's colour needs to count as a shape of its own


def verdict(image: Image.Image) -> classify.Verdict:
    return classify.classify(np.asarray(image.convert("RGB")))


def red_circle() -> Image.Image:
    return shapes.render(shapes.Scene("red", "circle", "white", "large", "center", 14, 32, 32))


def share_of(images, colour: str) -> float:
    """Fraction of all pixels whose nearest palette colour is `colour`."""
    pixels = np.concatenate([np.asarray(im, np.float32).reshape(-1, 3) for im in images])
    nearest = np.argmin(((pixels[:, None, :] - classify.PALETTE[None]) ** 2).sum(-1), axis=1)
    return float((nearest == classify.NAMES.index(colour)).mean())


def img2img(manager, strength: float, seed: int, guidance_scale: float = 7.5) -> classify.Verdict:
    return verdict(manager.generate(GenerationRequest(prompt=BLUE_SQUARE, image=red_circle(), strength=strength,
                                                      seed=seed, guidance_scale=guidance_scale)).images[0])


def parts(image: Image.Image) -> int:
    """How many separate patches of the shape's colour, of MIN_PART pixels or more, a picture shows."""
    _, foreground, cover = classify.read_colours(np.asarray(image.convert("RGB")))
    if foreground is None:
        return 0
    labels, count = ndimage.label(cover > 0.5)
    return int((np.bincount(labels.ravel())[1:] >= MIN_PART).sum()) if count else 0


def without_place(manager, seeds: int = 3) -> tuple[int, int, int]:
    """(read right, showing two or more shapes, pictures) for the held-out triples with no place word."""
    right = several = total = 0
    for colour, shape, background in shapes.HELD_OUT:
        for size in shapes.SIZES:
            for seed in range(seeds):
                image = manager.generate(GenerationRequest(
                    prompt=f"a {size} {colour} {shape} on a {background} background", seed=seed)).images[0]
                seen = verdict(image)
                right += (seen.colour, seen.shape, seen.background) == (colour, shape, background)
                several += parts(image) > 1
                total += 1
    return right, several, total


def negative_red(manager, negative_prompt: str) -> float:
    images = [image for seed in (10, 20, 30) for image in manager.generate(GenerationRequest(
        prompt="a large circle", negative_prompt=negative_prompt, num_images_per_prompt=8, seed=seed)).images]
    return share_of(images, "red")


def guidance_hits(manager, guidance_scale: float) -> int:
    """Attributes right over every 9th held-out scene (32 prompts, five attributes each)."""
    hits = 0
    for i, scene in enumerate(evaluate.held_out_scenes()[::9]):
        seen = verdict(manager.generate(GenerationRequest(prompt=shapes.caption(scene), seed=i,
                                                          guidance_scale=guidance_scale)).images[0])
        hits += sum(getattr(seen, a) == getattr(scene, a) for a in ATTRIBUTES)
    return hits


def sampler_verdicts(manager, name: str, steps: int) -> list[classify.Verdict]:
    """The 16 SAMPLER_PROMPTS under scheduler `name`, seeds 0-15, guidance 7.5, in one batch."""
    pipe = manager.loaded.txt2img
    seeds = list(range(len(SAMPLER_PROMPTS)))
    pipe.scheduler = schedulers.make_scheduler(name, manager.loaded.scheduler_config, seeds)
    # the model's own guidance interval, as the manager runs it (studio.guidance)
    own = manager.loaded.defaults
    with guidance.applied(pipe, own.get("guidance_min_sigma"), 7.5, len(seeds), own.get("guidance_fade_sigma")):
        images = pipe([p for p, *_ in SAMPLER_PROMPTS], num_inference_steps=steps, guidance_scale=7.5,
                      generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pil").images
    return [verdict(image) for image in images]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path(DEFAULT_MODEL))
    p.add_argument("--skip-samplers", action="store_true")
    args = p.parse_args(argv)
    manager = PipelineManager(Settings(model=str(args.model)))
    manager.load()

    print("img2img from a red circle, prompt", repr(BLUE_SQUARE), "(seeds 0-3):")
    for scale in (1.0, 7.5):
        for strength in STRENGTHS:
            seen = Counter(f"{v.colour} {v.shape}" for v in (img2img(manager, strength, s, scale) for s in range(4)))
            print(f"  guidance {scale}, strength {strength}: {dict(seen)}")
    print(f"negative prompt 'red' on 'a large circle': red share {negative_red(manager, ''):.3f} -> "
          f"{negative_red(manager, 'red'):.3f}")
    print("guidance, attributes right of 160:", {g: guidance_hits(manager, g) for g in (1.0, 3.0, 7.5)})
    right, several, total = without_place(manager)
    print(f"no place named: {right} of {total} read right, {several} show two or more shapes")
    if args.skip_samplers:
        return
    print("samplers, of 16 held-out triples: colours right / colours and shape right")
    for name in (n for n in schedulers.NAMES if n != "LCM"):
        cells = []
        for steps in SAMPLER_STEPS:
            verdicts = sampler_verdicts(manager, name, steps)
            colours = [(v.colour, v.background) == (c, b) for v, (_, c, _, b) in zip(verdicts, SAMPLER_PROMPTS)]
            shaped = [ok and v.shape == s for ok, v, (_, _, s, _) in zip(colours, verdicts, SAMPLER_PROMPTS)]
            cells.append(f"{steps}: {sum(colours)}/{sum(shaped)}")
        print(f"  {name:<22} " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
