"""Command line: `python -m studio generate --prompt P --out FILE.png [options]`.

Loads the model (the bundled one by default), runs one request through the same PipelineManager
the web UI uses, shows a tqdm progress bar, writes the PNG(s) with their parameters embedded and
prints each image's seed. With several images, FILE.png becomes FILE-0.png, FILE-1.png, ...
User errors print one line and exit with status 2; this module holds no generation logic.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from studio import config, metadata, schedulers
from studio.errors import StudioError
from studio.requests import GenerationRequest, batches


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (and exit status 2), not the whole usage."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    # Nothing here imports torch or diffusers: --help and bad arguments answer at once.
    parser = OneLineParser(prog="python -m studio", description="Diffusion Studio from the command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    g = commands.add_parser("generate", help="make images from a prompt (and optionally an image)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--out", required=True, type=Path, help="PNG file to write")
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--steps", type=int, default=20, dest="num_inference_steps")
    g.add_argument("--guidance-scale", type=float, default=7.5)
    g.add_argument("--width", type=int, default=None, help="default: the model's native size")
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--seed", type=int, default=-1, help="-1 for random")
    g.add_argument("--scheduler", default=schedulers.DEFAULT, help="; ".join(schedulers.NAMES))
    g.add_argument("--batch", type=int, default=1, dest="num_images_per_prompt", help="pictures per run")
    g.add_argument("--batch-count", type=int, default=1, help="runs one after another; seeds continue")
    g.add_argument("--clip-skip", type=int, default=None)
    g.add_argument("--init-image", type=Path, default=None, help="img2img: the starting picture")
    g.add_argument("--strength", type=float, default=0.75, help="img2img: how much to change it")
    g.add_argument("--preview", choices=config.PREVIEWS, default="none", help="decoder for step previews")
    g.add_argument("--trajectory", type=Path, default=None, help="folder for every step's x_t and x0, a GIF and a contact sheet (decoded with --preview's decoder, full VAE if none)")
    config.add_model_arguments(g, config.defaults())
    return parser


def request_from(args: argparse.Namespace) -> GenerationRequest:
    return GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt,
        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
        width=args.width, height=args.height, seed=args.seed,
        num_images_per_prompt=args.num_images_per_prompt, scheduler=args.scheduler,
        clip_skip=args.clip_skip, image=args.init_image, strength=args.strength,
        preview=args.preview)


def output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}") for i in range(count)]


def generate(args: argparse.Namespace) -> None:
    from studio.manager import PipelineManager

    settings = config.Settings(model=args.model, model_config=args.model_config, tiny_vae=args.tiny_vae,
                               device=args.device,
                               dtype=args.dtype, attention_slicing=args.attention_slicing,
                               vae_slicing=args.vae_slicing, vae_tiling=args.vae_tiling,
                               cpu_offload=args.cpu_offload, trust_pickle=args.trust_pickle,
                               size_factor=args.size_factor, cache_dir=args.cache_dir)
    plan = batches(request_from(args), args.batch_count)  # a bad --batch-count fails before loading
    manager = PipelineManager(settings)
    manager.load()
    paths = output_paths(args.out, len(plan) * plan[0].num_images_per_prompt)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for k, request in enumerate(plan):
        label = f"batch {k + 1}/{len(plan)}" if len(plan) > 1 else "denoising"
        with tqdm(total=request.num_inference_steps, desc=label, unit="step") as bar:
            def on_step(step: int, total: int, previews) -> None:
                bar.total = total
                bar.update(step - bar.n)

            result = manager.generate(request, on_step=on_step)
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for image, seed in zip(result.images, result.seeds):
            path = paths.pop(0)
            metadata.save_png(image, path, result, seed)
            print(f"{path}  seed={seed}")
        if args.trajectory is not None:
            from studio import export

            decoder = "full" if args.preview == "none" else args.preview
            folder = args.trajectory if len(plan) == 1 else args.trajectory / f"batch-{k}"
            written = export.write_trajectory(manager, result, folder, decoder)
            print(f"trajectory: {len(written)} files in {folder}")
        print(f"{result.timings['steps']} steps in {result.timings['total']:.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        generate(args)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
