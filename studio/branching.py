"""Branch a run at any step: carry on from step k with a change, running only the steps left.

What may change at a branch: the prompt, the negative prompt, the guidance, the sampler, and the
seed of the noise still to come (BRANCHABLE). Everything else (size, steps, the model, img2img's
picture and strength) is the parent's. A branch at 0 is a fresh run with the changes, and the
same starting noise unless the seed changes. A branch at k >= 1 starts from the parent's kept
state after step k (studio.resume): the same sampler carries on exactly, so with nothing changed
the pixels are the parent's; a new sampler starts afresh at the same sigma, from the same x.

A branch records its lineage in the PNG as extra `Key: value` pairs (A1111's parsers skip keys
they do not know): the step, and the parent's value of each field that changed. `regenerate`
runs the parent from those and branches it again, which gives the same pixels. This module knows
nothing of Gradio.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from studio import metadata, resume, schedulers
from studio.errors import StudioError, bad_argument
from studio.fields import BRANCHABLE, FIELD, GenerationRequest
from studio.requests import GenerationResult, check_inputs, whole_number
from studio.trajectory import alpha_bar_at, uses_sigma_scale

# field (one of studio.fields.BRANCHABLE) -> the infotext key of the parent's value, when a branch changed it
PARENT_KEYS = {"prompt": "Parent prompt", "negative_prompt": "Parent negative prompt",
               "guidance_scale": "Parent CFG scale", "scheduler": "Parent sampler", "seed": "Parent seed"}
AT_STEP = "Branch at step"
IMG2IMG_KEY = FIELD["strength"].infotext  # only an img2img run's PNG has it
NOT_A_BRANCH = f"This picture is not a branch: its parameters have no {AT_STEP!r}."


@dataclasses.dataclass(frozen=True)
class Lineage:
    at_step: int       # the parent's steps the branch shares (0: none)
    parent: dict       # field name -> the parent's value, for each field that changed
    parent_run: str = ""  # the parent's number in its session's history, if it has one

    def infotext(self) -> dict:
        return {AT_STEP: self.at_step, **{PARENT_KEYS[name]: value for name, value in self.parent.items()}}


@dataclasses.dataclass
class Start:
    """What the manager's run takes from the parent to carry on after step k."""
    steps: list            # the parent's first k trajectory steps, shared
    latents: torch.Tensor
    state: resume.ResumeState | None  # None: a new sampler, which starts afresh at `position`
    position: int
    generators: list | None  # the parent's generator states; None: the new seed's generators
    lineage: Lineage

    def prepare(self, scheduler, fresh_generators):
        resume.resume_scheduler(scheduler, self.state.scheduler if self.state else begin(scheduler, self.position),
                                self.position)
        generators = fresh_generators if self.generators is None else resume.restored_generators(self.generators)
        return scheduler, generators


def begin(scheduler, position: int) -> dict:
    """The state of a fresh scheduler that starts at `position`: schedulers that count their
    steps start counting there; the others read the timestep they are given."""
    return {"_begin_index": position} if hasattr(scheduler, "_begin_index") else {}


def changes_of(parent: GenerationRequest, **changes) -> dict:
    """The changed fields, checked by name; None means "as the parent"."""
    unknown = sorted(set(changes) - set(BRANCHABLE))
    if unknown:
        raise StudioError(f"A branch can change only {', '.join(BRANCHABLE)}; not {', '.join(unknown)}.")
    return {k: v for k, v in changes.items() if v is not None and v != getattr(parent, k)}


def branch(manager, parent: GenerationResult, at_step: int, on_step=None, cancel=None,
           parent_run: str = "", **changes) -> GenerationResult:
    """The branch of `parent` after its step `at_step` (0 to the steps it ran minus 1) with
    `changes` (prompt, negative_prompt, guidance_scale, scheduler, seed)."""
    steps = parent.trajectory.steps if parent.trajectory is not None else []
    whole_number("at_step", at_step, 0, max(len(steps) - 1, 0))
    changed = changes_of(parent.request, **changes)
    request = check_inputs(dataclasses.replace(parent.request, **changed))
    lineage = Lineage(at_step, {k: getattr(parent.request, k) for k in changed}, parent_run)
    if at_step == 0:
        result = manager.generate(request, on_step=on_step, cancel=cancel)
        return dataclasses.replace(result, lineage=lineage)
    manager.check_same_model(parent)
    return manager.generate(request, on_step=on_step, cancel=cancel,
                            start=start_of(manager, parent, at_step, request, lineage))


def start_of(manager, parent: GenerationResult, at_step: int, request: GenerationRequest,
             lineage: Lineage) -> Start:
    kept = parent.trajectory.steps[at_step - 1].resume
    if kept is None:
        raise StudioError(f"at_step={at_step}: this run kept no state to carry on from (it was saved "
                          "before runs kept it); branch it at 0, or run it again.")
    new_seed = "seed" in lineage.parent
    shared = parent.trajectory.steps[:at_step]
    if "prompt" in lineage.parent:  # the parent's attention maps are to the parent's words
        shared = [dataclasses.replace(step, attention=None) for step in shared]
    if request.scheduler == parent.request.scheduler:
        if new_seed:  # DPM++ SDE's tree of noise to come is seeded by the new seed
            kept = dataclasses.replace(kept, scheduler={k: v for k, v in kept.scheduler.items()
                                                        if k != "noise_sampler_seed"})
        return Start(shared, kept.latents, kept, kept.position, None if new_seed else kept.generators, lineage)
    # A new sampler: from the same x at the same sigma, in the new sampler's own scale
    config = manager.loaded.scheduler_config
    old, new = (schedulers.make_scheduler(name, config) for name in (parent.request.scheduler, request.scheduler))
    for s in (old, new):
        s.set_timesteps(request.num_inference_steps)
    next_t = float(old.timesteps[kept.position])
    # The nearest timestep, its last entry: Heun-type lists hold a step's timestep twice, the
    # previous step's second call there, then this step's first
    position = min(reversed(range(len(new.timesteps))), key=lambda i: abs(float(new.timesteps[i]) - next_t))
    latents = kept.latents * scale_of(old, next_t) / scale_of(new, float(new.timesteps[position]))
    return Start(shared, latents, None, position, None if new_seed else kept.generators, lineage)


def scale_of(scheduler, timestep: float) -> float:
    """x in the scheduler's scale times this is x in the variance-preserving (alpha) scale."""
    return math.sqrt(alpha_bar_at(scheduler.alphas_cumprod, timestep)) if uses_sigma_scale(scheduler) else 1.0


def lineage_from(values: dict[str, str]) -> tuple[int, dict] | None:
    """(at_step, {field name: the parent's text}) from `metadata.parse_parameters` output, or None
    when the picture is not a branch."""
    if AT_STEP not in values:
        return None
    at_step = values[AT_STEP].strip()
    if not at_step.isdigit():
        raise bad_argument(AT_STEP, at_step, "a whole number")
    return int(at_step), {name: values[key] for name, key in PARENT_KEYS.items() if key in values}


def regenerate(manager, values: dict[str, str], parent_run: str = ""):
    """A branch made again from its PNG's parameters (`metadata.parse_parameters` output): the
    parent is run from its recorded values, then branched with the branch's own. `parent_run`:
    the parent's number in a history. Returns (the parent run, the branch)."""
    lineage = lineage_from(values)
    if lineage is None:
        raise StudioError(NOT_A_BRANCH)
    if IMG2IMG_KEY in values:
        raise StudioError("A branch of an img2img run cannot be made again from its PNG: the PNG does not "
                          "hold the run's starting picture. Branch its run folder with `python -m studio branch`.")
    fields, notes = metadata.request_fields(values)
    if notes:
        raise StudioError(notes[0])
    request = GenerationRequest(**{**fields, "preview": "none"})
    at_step, parent_values = lineage
    typed = {name: FIELD[name].kind(value) for name, value in parent_values.items()}
    parent = manager.generate(check_inputs(dataclasses.replace(request, **typed)))
    return parent, branch(manager, parent, at_step, parent_run=parent_run,
                          **{name: getattr(request, name) for name in typed})
