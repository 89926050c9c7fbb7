"""A run saved to disk and opened again: DIR/run.safetensors and DIR/run.json, no pickle.

run.safetensors holds the trajectory's tensors: every step's x_t (`latents`) and predicted x0
(`x0`), stacked as (steps, batch, c, h, w), the latents after the last step (`final`), where
guidance ran the x0 of each half (`x0_uncond`, `x0_cond`, for the CFG lens), and each step's
resumable state (`resume.<step>.*`: x in the sampler's scale, its state, the generators'; see
studio.resume), so that a saved run can be branched at any step, and the per-token
cross-attention maps where they were recorded (`attention`, (steps, batch, tokens, h, w)). run.json holds the rest: the request as run (seed and size resolved), each picture's seed, the
model and its hash, the sampler, the schedule and each step's timestep and sigma, timings, and
the versions that made it, the resumable state's structure, and a branch's lineage. The pictures are picture-<i>.png beside them (with their parameters
text), and an img2img run's starting picture is input.png.

`load` gives back a GenerationResult that the viewer shows exactly as it showed the live run. A
run file is data only (safetensors and JSON), so one from anyone may be opened; it is checked
field by field, and what is wrong is named. This module knows nothing of Gradio.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from studio import __version__, inpainting, metadata, resume
from studio.branching import Lineage
from studio.errors import StudioError
from studio.fields import FIELD, GenerationRequest
from studio.requests import GenerationResult, check_inputs
from studio.trajectory import STORE_DTYPE, Step, Trajectory

TENSORS, DESCRIPTION = "run.safetensors", "run.json"
FORMAT = 2  # 2: each step's resumable state (studio.resume), the CFG halves, a branch's lineage
READS = (1, 2)
HALVES = ("x0_uncond", "x0_cond")
MAX_RUN_STEPS = 1000  # more steps than any request can ask for (150, PLMS one more)


def versions() -> dict:
    import diffusers
    import transformers

    return {"diffusion-studio": __version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "torch": torch.__version__}


def save(result: GenerationResult, folder: Path) -> list[Path]:
    """Write `result` (with its trajectory) into `folder`; returns the files written."""
    trajectory = result.trajectory
    if trajectory is None or not trajectory.steps:
        raise StudioError("This run has no recorded steps to save.")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"latents": torch.stack([s.latents for s in trajectory.steps]).contiguous(),
               "x0": torch.stack([s.x0 for s in trajectory.steps]).contiguous()}
    if trajectory.final is not None:
        tensors["final"] = trajectory.final.contiguous()
    for half in HALVES:  # the CFG lens: where every step ran guidance
        if all(getattr(s, half) is not None for s in trajectory.steps):
            tensors[half] = torch.stack([getattr(s, half) for s in trajectory.steps]).contiguous()
    if all(s.attention is not None for s in trajectory.steps):
        tensors["attention"] = torch.stack([s.attention for s in trajectory.steps]).contiguous()
    kept = resume.to_saved([s.resume for s in trajectory.steps], tensors)
    written = [folder / TENSORS, folder / DESCRIPTION]
    save_file(tensors, str(written[0]), metadata={"format": str(FORMAT)})
    pictures = [metadata.save_png(image, folder / f"picture-{i}.png", result, seed)
                for i, (image, seed) in enumerate(zip(result.images, result.seeds))]
    if result.request.is_img2img:
        written.append(folder / "input.png")
        picture = result.request.image
        (picture if isinstance(picture, Image.Image) else Image.open(picture)).save(written[-1])
    if result.request.is_inpaint:  # the mask at the run's size, as the viewer outlines it
        written.append(folder / "mask.png")
        inpainting.run_mask(result.request).save(written[-1])
    description = describe(result, [p.name for p in pictures]) | {"resume": kept}
    written[1].write_text(json.dumps(description, indent=2) + "\n")
    return written + pictures


def describe(result: GenerationResult, pictures: list[str]) -> dict:
    t = result.trajectory
    lineage = result.lineage and dataclasses.asdict(result.lineage)
    return {"format": FORMAT, "request": result.request.parameters(), "img2img": result.request.is_img2img,
            "lineage": lineage,
            "seeds": result.seeds, "model": result.model, "model_hash": result.model_hash,
            "scheduler_name": result.scheduler_name, "device": result.device, "dtype": result.dtype,
            "timings": result.timings, "warnings": result.warnings, "pictures": pictures, "card": result.card,
            "trajectory": {"num_inference_steps": t.num_inference_steps, "start_step": t.start_step,
                           "schedule": t.schedule, "tokens": t.tokens,
                           "steps": [{"timestep": s.timestep, "sigma": s.sigma} for s in t.steps]},
            "versions": versions()}


def load(folder: Path) -> GenerationResult:
    """The run saved in `folder`, or StudioError naming what is missing or wrong."""
    folder = Path(folder)
    for name in (DESCRIPTION, TENSORS):
        if not (folder / name).is_file():
            raise StudioError(f"run={str(folder)!r} is not a saved run: it has no {name}.")
    try:
        data = json.loads((folder / DESCRIPTION).read_text())
        tensors = load_file(str(folder / TENSORS))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # bad JSON, a damaged tensors file
        raise StudioError(f"run={str(folder)!r} could not be read ({type(exc).__name__}: {exc}).") from None
    try:
        return from_saved(data, tensors, folder)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a field of the wrong kind
        raise StudioError(f"run={str(folder)!r}: {DESCRIPTION} has a value of the wrong kind "
                          f"({type(exc).__name__}: {exc}).") from None


def from_saved(data: dict, tensors: dict, folder: Path) -> GenerationResult:
    if not isinstance(data, dict) or data.get("format") not in READS:
        raise StudioError(f"{DESCRIPTION}: format={data.get('format') if isinstance(data, dict) else data!r} "
                          f"is not a run format this studio reads (it reads {', '.join(map(str, READS))}).")
    request = saved_request(data, folder)
    trajectory = saved_trajectory(data.get("trajectory"), tensors)
    lineage = data.get("lineage")
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or len(seeds) != trajectory.steps[0].latents.shape[0]:
        raise StudioError(f"{DESCRIPTION}: seeds={seeds!r} should give one seed per picture of the batch.")
    for step, kept in zip(trajectory.steps, resume.from_saved(data.get("resume"), tensors, len(trajectory.steps))):
        if kept is not None and (kept.latents.shape != step.latents.shape or len(kept.generators) != len(seeds)):
            raise StudioError(f"{TENSORS}: the kept state of step {step.index + 1} does not fit its latents and seeds.")
        step.resume = kept
    images = [Image.open(folder / name).convert("RGB") for name in data.get("pictures", [])
              if isinstance(name, str) and Path(name).name == name and (folder / name).is_file()]
    return GenerationResult(
        images=images, seeds=[int(s) for s in seeds], request=request, model=str(data.get("model", "")),
        model_hash=str(data.get("model_hash", "")), device=str(data.get("device", "")),
        dtype=str(data.get("dtype", "")), timings=dict(data.get("timings") or {}),
        warnings=[str(w) for w in data.get("warnings") or []], trajectory=trajectory,
        scheduler_name=str(data.get("scheduler_name", "")), card={str(k): str(v) for k, v in (data.get("card") or {}).items()},
        lineage=None if lineage is None else Lineage(int(lineage["at_step"]), dict(lineage["parent"]),
                                                     str(lineage.get("parent_run", ""))))


def saved_request(data: dict, folder: Path) -> GenerationRequest:
    values = data.get("request")
    if not isinstance(values, dict) or set(values) - set(FIELD):
        unknown = sorted(set(values) - set(FIELD)) if isinstance(values, dict) else values
        raise StudioError(f"{DESCRIPTION}: request has fields this studio does not know: {unknown!r}.")
    image = None
    if data.get("img2img"):
        if not (folder / "input.png").is_file():
            raise StudioError(f"{DESCRIPTION}: an img2img run, but its input.png is missing.")
        image = Image.open(folder / "input.png").convert("RGB")
    mask = Image.open(folder / "mask.png").convert("L") if image is not None and (folder / "mask.png").is_file() else None
    return check_inputs(GenerationRequest(**values, image=image, mask_image=mask))


def saved_trajectory(data, tensors: dict) -> Trajectory:
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise StudioError(f"{DESCRIPTION}: trajectory is missing or has no steps.")
    steps, latents, x0 = data["steps"], tensors.get("latents"), tensors.get("x0")
    if latents is None or x0 is None or latents.dim() != 5 or latents.shape != x0.shape \
            or not 1 <= len(steps) == latents.shape[0] <= MAX_RUN_STEPS:
        raise StudioError(f"{TENSORS}: latents and x0 should be (steps, batch, c, h, w), one per step of "
                          f"{DESCRIPTION} ({len(steps)} steps).")
    final = tensors.get("final")
    if final is not None and final.shape != latents.shape[1:]:
        raise StudioError(f"{TENSORS}: final is {tuple(final.shape)}, not a step's {tuple(latents.shape[1:])}.")
    per_step = {h: tensors[h] for h in HALVES if h in tensors and tensors[h].shape == x0.shape}
    tokens = [str(t) for t in data.get("tokens") or []]
    attention = tensors.get("attention")
    if attention is not None and tuple(attention.shape) != (*latents.shape[:2], len(tokens), *latents.shape[3:]):
        raise StudioError(f"{TENSORS}: attention is {tuple(attention.shape)}, not (steps, batch, tokens, h, w) "
                          f"for {len(steps)} steps, {latents.shape[1]} pictures and {len(tokens)} tokens.")
    if attention is not None:
        per_step["attention"] = attention
    return Trajectory(
        steps=[Step(i, float(s["timestep"]), float(s["sigma"]), latents[i].to(STORE_DTYPE), x0[i].to(STORE_DTYPE),
                    **{name: v[i].to(STORE_DTYPE) for name, v in per_step.items()})
               for i, s in enumerate(steps)],
        tokens=tokens,
        num_inference_steps=int(data.get("num_inference_steps", len(steps))),
        start_step=int(data.get("start_step", 0)), schedule=[float(v) for v in data.get("schedule", [])],
        final=None if final is None else final.to(STORE_DTYPE))
