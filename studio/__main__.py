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

from studio import config, fields, metadata
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
    g.add_argument("--out", required=True, type=Path, help="PNG file to write")
    add_field_arguments(g)
    g.add_argument("--batch-count", type=int, default=1, help="runs one after another; seeds continue")
    g.add_argument("--init-image", type=Path, default=None, help="img2img: the starting picture")
    g.add_argument("--mask", type=Path, default=None, help="with --init-image: inpaint, repainting the mask's white part")
    g.add_argument("--trajectory", type=Path, default=None, help="folder for every step's x_t and x0, a GIF and a contact sheet (decoded with --preview's decoder, full VAE if none)")
    config.add_model_arguments(g, config.defaults())
    i = commands.add_parser("inspect", help="open a saved run (the folder --trajectory wrote) and show its steps")
    i.add_argument("run", type=Path, help="the folder holding run.json and run.safetensors")
    i.add_argument("--step", type=int, default=None, help="1-based step: its x_t | x0 (default: every step)")
    i.add_argument("--out", type=Path, default=None, help="PNG to write: the step, or the contact sheet")
    i.add_argument("--decoder", choices=[p for p in config.PREVIEWS if p != "none"], default="full")
    i.add_argument("--cfg", type=float, default=None, metavar="S",
                   help="with --step and --out: x0 at that step re-mixed at guidance S (the CFG lens; no UNet call)")
    i.add_argument("--attention", default=None, metavar="WORD",
                   help="with --out: WORD's attention map (grayscale at the picture's size, brightest where it is "
                        "highest) at --step, or over all steps without it; the run must have recorded attention")
    config.add_model_arguments(i, {**config.defaults(), "model": None})
    r = commands.add_parser("replay", help="write a saved run as one self-contained HTML page to share")
    r.add_argument("run", type=Path, help="the folder --trajectory wrote (run.json and run.safetensors)")
    r.add_argument("--out", required=True, type=Path, help="the HTML file to write")
    r.add_argument("--decoder", choices=[p for p in config.PREVIEWS if p != "none"], default="full")
    config.add_model_arguments(r, {**config.defaults(), "model": None})
    b = commands.add_parser("branch", help="carry on a saved run from one of its steps, with changes")
    b.add_argument("run", type=Path, help="the folder --trajectory wrote (run.json and run.safetensors)")
    b.add_argument("--at-step", type=int, required=True, help="the parent's steps to keep (0 to its steps - 1)")
    for name in fields.BRANCHABLE:  # None: as the parent
        field = fields.FIELD[name]
        b.add_argument(field.flag, dest=name, type=field.kind, default=None, metavar=field.flag[2:].upper().replace("-", "_"),
                       help=f"new {field.label.lower()} (default: the parent's)")
    b.add_argument("--out", required=True, type=Path, help="PNG file to write")
    b.add_argument("--trajectory", type=Path, default=None, help="folder for the branch's steps and run files, as generate writes them")
    config.add_model_arguments(b, {**config.defaults(), "model": None})
    s = commands.add_parser("serve", help="run the generation backend alone on Ray Serve, for `app.py --ray ADDRESS`")
    s.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local Ray instance)")
    s.add_argument("--replicas", type=int, default=1, help="generation replicas (one per GPU)")
    s.add_argument("--replica-threads", type=int, default=1, help="on CPUs: CPUs and torch threads per replica")
    config.add_model_arguments(s, config.defaults())
    return parser


def add_field_arguments(parser: argparse.ArgumentParser) -> None:
    """A flag for each request field that has one (studio.fields), under the field's name."""
    for field in fields.FIELDS:
        if field.flag is None:
            continue
        options = {"choices": field.choices} if field.choices and field.name != "scheduler" else {}
        hint = "; ".join(field.choices) if field.name == "scheduler" else field.hint
        if field.kind is bool:
            parser.add_argument(field.flag, dest=field.name, action="store_true", help=hint or None)
            continue
        if field.name == "loras":  # --lora NAME:W, once per LoRA
            parser.add_argument(field.flag, dest=field.name, action="append", default=[], metavar="NAME:WEIGHT",
                                help="a LoRA from --lora-dir and its weight (default 1); repeat for more")
            continue
        parser.add_argument(field.flag, dest=field.name, type=field.kind, default=field.default,
                            required=field.name == "prompt", help=hint or None,
                            metavar=field.flag[2:].upper().replace("-", "_"), **options)


def request_from(args: argparse.Namespace) -> GenerationRequest:
    named = {f.name: getattr(args, f.name) for f in fields.FIELDS if f.flag is not None}
    named["loras"] = ", ".join(named["loras"])
    return GenerationRequest(**named, image=args.init_image, mask_image=args.mask)


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
                               cpu_offload=args.cpu_offload, trust_pickle=args.trust_pickle, lora_dir=args.lora_dir,
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
            decoder = "full" if args.preview == "none" else args.preview
            save_trajectory(manager, result, args.trajectory if len(plan) == 1 else args.trajectory / f"batch-{k}",
                            decoder)
        print(f"{result.timings['steps']} steps in {result.timings['total']:.2f} s")


def save_trajectory(manager, result, folder: Path, decoder: str) -> None:
    from studio import export, runs

    written = export.write_trajectory(manager, result, folder, decoder) + runs.save(result, folder)
    print(f"trajectory: {len(written)} files in {folder} (the run: {folder / runs.DESCRIPTION})")


def inspect(args: argparse.Namespace) -> None:
    """Print a saved run's summary; with --out, write its contact sheet, or step --step's x_t | x0,
    decoded as the viewer decodes them (by the run's own model unless --model names another)."""
    from studio import attention, export, runs

    result = runs.load(args.run)
    r, steps = result.request, result.trajectory.steps
    print(f"{args.run}: {'img2img' if r.is_img2img else 'txt2img'} {r.prompt!r}, seeds {result.seeds}, "
          f"{len(steps)} steps ({result.scheduler_name}), {r.width}x{r.height}, model {result.model} "
          f"[{result.model_hash}]")
    if attention.recorded(result.trajectory):
        print("attention recorded for the words: " + ", ".join(w.text for w in attention.run_words(result.trajectory)))
    if args.step is not None and not 1 <= args.step <= len(steps):
        raise StudioError(f"step={args.step} is not allowed: expected 1 to {len(steps)}.")
    if args.cfg is not None and (args.step is None or args.out is None):
        raise StudioError(f"cfg={args.cfg}: the lens needs --step K and --out FILE.png.")
    if args.attention is not None and (args.out is None or args.cfg is not None):
        raise StudioError(f"attention={args.attention!r} needs --out FILE.png (and no --cfg).")
    if args.out is None:
        return
    if args.attention is not None:
        return attention_map(args, result)
    manager = run_manager(args, result)
    if args.cfg is not None:
        from studio import lens

        step = steps[args.step - 1]
        reason = lens.no_lens_reason(result)
        if reason:
            raise StudioError(f"cfg={args.cfg}: {reason}")
        manager.decode(lens.remix(step, args.cfg, r.guidance_scale)[:1], args.decoder)[0].save(args.out)
        print(f"wrote {args.out}: x0 at step {args.step} re-mixed at guidance {args.cfg:g} (the run's: {r.guidance_scale:g})")
        return
    pairs = export.step_pictures(manager, result.trajectory, args.decoder)
    if args.step is None:
        export.contact_sheet(pairs, steps).save(args.out)
    else:
        noisy, clean = pairs[args.step - 1]
        export.side_by_side(noisy, clean, export.caption(steps[args.step - 1])).save(args.out)
    print(f"wrote {args.out}")


def attention_map(args: argparse.Namespace, result) -> None:
    """Write the word's map for the first picture: no model is needed, the run file holds it."""
    from studio import attention

    found = attention.find_word(result.trajectory, args.attention)
    maps = attention.maps_at(result.trajectory, None if args.step is None else args.step - 1)
    attention.grayscale(attention.heat(maps, found, (result.request.width, result.request.height))).save(args.out)
    where = "over all steps" if args.step is None else f"at step {args.step}"
    print(f"wrote {args.out}: the attention of {args.attention!r} {where}")


def run_manager(args: argparse.Namespace, result):
    """A manager with the saved run's own model loaded (or --model's, which must be the same)."""
    from studio.manager import PipelineManager

    manager = PipelineManager(config.Settings(model=args.model or result.model, device=args.device,
                                              dtype=args.dtype, tiny_vae=args.tiny_vae, cache_dir=args.cache_dir,
                                              lora_dir=args.lora_dir, trust_pickle=args.trust_pickle))
    manager.load()
    manager.check_same_model(result)
    return manager


def branch(args: argparse.Namespace) -> None:
    """Carry the saved run on from --at-step with the changes given; write the PNG (and, with
    --trajectory, the branch's steps and run files); print the steps it ran."""
    from studio import branching, runs

    parent = runs.load(args.run)
    changes = {name: getattr(args, name) for name in fields.BRANCHABLE}
    manager = run_manager(args, parent)
    with tqdm(total=len(parent.trajectory.steps), initial=args.at_step, desc="branch", unit="step") as bar:
        result = branching.branch(manager, parent, args.at_step, on_step=lambda n, total, _: bar.update(n - bar.n),
                                  parent_run=str(args.run), **changes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for path, image, seed in zip(output_paths(args.out, len(result.images)), result.images, result.seeds):
        metadata.save_png(image, path, result, seed)
        print(f"{path}  seed={seed}")
    if args.trajectory is not None:
        save_trajectory(manager, result, args.trajectory, "full")
    ran = result.timings["steps"]
    first = len(result.trajectory.steps) - ran + 1
    print(f"ran steps {first} to {len(result.trajectory.steps)} ({ran} steps; steps 1 to {first - 1} are the parent's) "
          f"in {result.timings['total']:.2f} s")


def replay(args: argparse.Namespace) -> None:
    """Write the saved run's replay page: its frames decoded by the run's own model."""
    from studio import replay as replay_page, runs

    result = runs.load(args.run)
    path = replay_page.write(run_manager(args, result), result, args.out, args.decoder)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {len(result.trajectory.steps)} steps; "
          "open it in any browser, offline)")


def serve(args: argparse.Namespace) -> None:
    from studio.scale import deployment

    settings = config.Settings(**{k: v for k, v in vars(args).items() if k in config.Settings.__dataclass_fields__})
    deployment.serve_forever(settings, args.address, args.replicas, args.replica_threads)


COMMANDS = {"generate": generate, "inspect": inspect, "branch": branch, "replay": replay, "serve": serve}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except StudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
