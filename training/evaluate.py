"""Evaluate the bundled model on held-out (colour, shape, background) triples.

    python -m training.evaluate --model models/tiny-shapes

Generates every held-out triple x size x position, for --seeds seeds (16 x 2 x 9 x 2 = 576
images by default), at 20 steps with the model's own scheduler (or --scheduler, a studio sampler
name) and guidance 7.5, and scores them with the pixel classifier. It also measures the VAE's
reconstruction PSNR on held-out pictures, writes `evaluation.json` and a labelled sample grid PNG
next to the model (`evaluation-<sampler>.json` and `samples-<sampler>.png` under another
sampler), and prints the figures as a markdown table with the commonest misses of each
attribute (which held-out scene, read as what). It trains nothing.
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image, ImageDraw, ImageFont

from studio import guidance, models, schedulers
from training import classify, shapes

BARS = {"colour": 0.95, "background": 0.95, "shape": 0.85, "size": 0.85, "position": 0.85}
PSNR_BAR = 30.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/tiny-shapes"))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--guidance-min-sigma", type=float, default=None,
                   help="guidance only down to this noise level (studio.guidance; 0: every step; default: the "
                        "model's own, its studio.json)")
    p.add_argument("--guidance-fade-sigma", type=float, default=None,
                   help="guidance fades from this noise level down to --guidance-min-sigma (default: the model's own)")
    p.add_argument("--scheduler", default=schedulers.DEFAULT,
                   help="a studio sampler name (default: the model's own scheduler)")
    p.add_argument("--grid", type=Path, default=None, help="default: <model>/samples.png")
    return p.parse_args(argv)


def held_out_scenes() -> list[shapes.Scene]:
    """The ideal scene for every held-out triple x size x position (no jitter)."""
    result = []
    for triple, size, position in itertools.product(shapes.HELD_OUT, shapes.SIZES, shapes.POSITIONS):
        fx, fy = shapes.POSITIONS[position]
        result.append(shapes.Scene(*triple, size, position, shapes.SIZES[size],
                                   fx * shapes.RESOLUTION, fy * shapes.RESOLUTION))
    return result


def generate(pipe, prompts: list[str], seeds: list[int], args) -> list[np.ndarray]:
    images, config = [], dict(pipe.scheduler.config)
    for start in range(0, len(prompts), args.batch):
        chunk = slice(start, start + args.batch)
        pipe.scheduler = schedulers.make_scheduler(args.scheduler, config, seeds[chunk])
        generators = [torch.Generator().manual_seed(s) for s in seeds[chunk]]
        with guidance.applied(pipe, args.guidance_min_sigma, args.guidance_scale, len(generators),
                              args.guidance_fade_sigma):
            out = pipe(prompts[chunk], num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                       generator=generators, output_type="np").images
        images += list((out * 255).round().astype(np.uint8))
    return images


@torch.no_grad()
def vae_psnr(vae, count: int = 512, seed: int = 1234) -> float:
    """PSNR (dB, pixels in [0, 1]) of encode -> decode on unseen held-out pictures."""
    scenes = shapes.scenes(seed, count, list(shapes.HELD_OUT))
    x = torch.from_numpy(shapes.render_batch(scenes)).permute(0, 3, 1, 2).float() / 127.5 - 1
    recon = torch.cat([vae.decode(vae.encode(x[i:i + 128]).latent_dist.mean).sample
                       for i in range(0, count, 128)])
    mse = (((recon.clamp(-1, 1) - x) / 2) ** 2).mean().item()
    return 10 * np.log10(1.0 / mse)


def sample_grid(images: list[np.ndarray], captions: list[str], columns: int = 8) -> Image.Image:
    tile, label = 128, 44
    font = ImageFont.load_default(size=10)
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * tile, rows * (tile + label)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, text) in enumerate(zip(images, captions)):
        x, y = (i % columns) * tile, (i // columns) * (tile + label)
        grid.paste(Image.fromarray(image).resize((tile, tile), Image.Resampling.NEAREST), (x, y))
        draw.multiline_text((x + 3, y + tile + 2), "\n".join(caption_lines(text)), fill="black", font=font)
    return grid


def caption_lines(text: str) -> list[str]:
    """A caption in three short lines that fit under a tile: what, where, on what."""
    text = text.removeprefix("a ")
    for cut in (" on a ", " at the ", " in the "):
        text = text.replace(cut, "\n" + cut.strip() + " ")
    return text.split("\n")


def misses(verdicts: list[classify.Verdict], scenes: list[shapes.Scene], most: int = 6) -> dict:
    """{attribute: {"large black square on red -> orange": count}}, the commonest misses first."""
    result = {}
    for attribute in ("colour", "background", "shape"):
        seen = Counter(f"{s.size} {s.colour} {s.shape} on {s.background} -> {getattr(v, attribute)}"
                       for v, s in zip(verdicts, scenes) if getattr(v, attribute) != getattr(s, attribute))
        result[attribute] = dict(seen.most_common(most))
    return result


def markdown(accuracy: dict[str, float], fit: float, psnr: float, count: int) -> str:
    lines = ["| measure | result | bar |", "|---|---|---|"]
    lines += [f"| {k} accuracy | {v:.1%} | >= {BARS[k]:.0%} |" for k, v in accuracy.items()]
    lines.append(f"| shape fit, median (ideal drawings 0.97) | {fit:.2f} | |")
    lines.append(f"| VAE PSNR (held-out) | {psnr:.1f} dB | >= {PSNR_BAR:.0f} dB |")
    return "\n".join(lines) + f"\n\n{count} images from held-out prompts, 20 steps."


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    pipe = StableDiffusionPipeline.from_pretrained(args.model)
    vars(args).update(guidance.resolve(args, models.model_defaults(models.resolve(str(args.model)))))
    pipe.set_progress_bar_config(disable=True)
    scenes = held_out_scenes() * args.seeds
    prompts = [shapes.caption(s) for s in scenes]
    seeds = [i // len(held_out_scenes()) * 1000 + i for i in range(len(scenes))]
    images = generate(pipe, prompts, seeds, args)
    verdicts = [classify.classify(im) for im in images]
    accuracy = classify.score(verdicts, scenes)
    fit = float(np.median([v.shape_fit or 0.0 for v in verdicts]))
    ious = np.array([classify.box_iou(im, s.shape) for im, s in zip(images, scenes)])
    iou = {"box_iou_median": round(float(np.median(ious)), 3), "box_iou_at_least_0.75": round(float((ious >= 0.75).mean()), 4)}
    psnr = vae_psnr(pipe.vae)
    suffix = "" if args.scheduler == schedulers.DEFAULT else "-" + args.scheduler.replace(" ", "-").replace("+", "p")
    picks = random.Random(0).sample(range(len(images)), 32)
    sample_grid([images[i] for i in picks], [prompts[i] for i in picks]).save(
        args.grid or args.model / f"samples{suffix}.png")
    result = {"images": len(images), "steps": args.steps, "guidance_scale": args.guidance_scale,
              "guidance_min_sigma": args.guidance_min_sigma, "guidance_fade_sigma": args.guidance_fade_sigma,
              "scheduler": args.scheduler, "accuracy": accuracy, "shape_fit_median": round(fit, 3), **iou,
              "vae_psnr_db": round(psnr, 2), "misses": misses(verdicts, scenes),
              "passed": bool(all(accuracy[k] >= b for k, b in BARS.items()) and psnr >= PSNR_BAR)}
    (args.model / f"evaluation{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(accuracy, fit, psnr, len(images)))
    for attribute, counts in result["misses"].items():
        print(f"{attribute} misses, commonest:", "; ".join(f"{k} ({n})" for k, n in counts.items()) or "none")
    print(f"box IoU against the prompt's shape: median {iou['box_iou_median']}, "
          f"{iou['box_iou_at_least_0.75']:.1%} of pictures at 0.75 or more")


if __name__ == "__main__":
    main()
