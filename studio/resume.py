"""What a run keeps after each step so that it can carry on from there, exactly.

After every step a run can keep a `ResumeState`: x entering the next step (in the scheduler's own
scale and dtype, not the trajectory's rounded copy), the scheduler's state (its step index and
multistep history: every attribute that stepping changed since `set_timesteps`), and each image's
CPU generator state, which the ancestral and SDE samplers draw their noise from. DPM++ SDE's
Brownian tree is not kept: it is rebuilt from its seed and the sigma range, and a tree gives the
same increment for the same interval whichever it was asked first.

`resume_scheduler` turns a fresh scheduler into one that, when the pipeline sets its timesteps,
takes the kept state and hands the pipeline only the timesteps still to come, while the scheduler
itself keeps the whole list (DPM-Solver and UniPC read its length). The pipeline then runs only
the remaining steps: one UNet call per step (two for Heun-type samplers) and none for the steps
before. This module knows nothing of Gradio.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from studio.errors import StudioError

# The config (kept apart by diffusers), DPM++ SDE's Brownian tree (rebuilt from its seed) and the
# callables the studio and the recorder wrap around `step` (made again for each run).
NOT_STATE = {"_internal_dict", "noise_sampler", "config"}


@dataclasses.dataclass
class ResumeState:
    position: int            # index into the scheduler's timesteps of the next UNet call
    latents: torch.Tensor    # x entering the next step: the scheduler's own scale and dtype
    scheduler: dict          # attribute -> value, as stepping left them
    generators: list         # each image's CPU generator state (uint8 tensors)

    def nbytes(self) -> int:
        tensors = [self.latents, *self.generators, *tensors_in(list(self.scheduler.values()))]
        return sum(t.numel() * t.element_size() for t in tensors)


def tensors_in(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_in(v)]
    return []


def copied(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple)):
        return [copied(v) for v in value]
    return value


def is_state(name: str, value) -> bool:
    return name not in NOT_STATE and not name.startswith("__") and not callable(value)


def reference(scheduler) -> dict:
    """The scheduler's attributes as `set_timesteps` left them: what need not be kept."""
    return dict(vars(scheduler))


def capture(scheduler, fresh: dict, latents: torch.Tensor, generators, position: int) -> ResumeState:
    """The state to resume from after the step just finished. Attributes still holding the very
    object `set_timesteps` left there (the sigmas, the timesteps) are not kept; scalars and lists
    (DPM-Solver fills its `model_outputs` in place) always are."""
    state = {name: copied(value) for name, value in vars(scheduler).items()
             if is_state(name, value) and (fresh.get(name, object()) is not value
                                           or not isinstance(value, (torch.Tensor, np.ndarray)))}
    return ResumeState(position=position, latents=latents.detach().clone(), scheduler=state,
                       generators=[g.get_state() for g in generators])


def resume_scheduler(scheduler, state: dict, position: int) -> None:
    """Make `scheduler` (fresh, from studio.schedulers) carry on at `position` of its timesteps
    with `state` restored, when the pipeline next sets its timesteps. Its initial noise sigma
    reads 1, so the pipeline takes the latents it is given as they are."""
    cls = type(scheduler)

    class Resumed(cls):
        init_noise_sigma = 1.0

        @property
        def own_init_noise_sigma(self) -> float:  # what tells a sigma-scale sampler (studio.trajectory)
            own = getattr(cls, "init_noise_sigma", None)
            return own.__get__(self) if isinstance(own, property) else vars(self).get("init_noise_sigma", 1.0)

        def set_timesteps(self, *args, **kwargs):
            super().set_timesteps(*args, **kwargs)
            if not 0 <= position < len(self.timesteps):
                raise StudioError(f"position={position} is past the {len(self.timesteps)} timesteps of this run.")
            unsafe = sorted(name for name in state if not settable(self, name))  # from a run file
            if unsafe:
                raise StudioError(f"The kept scheduler state names attributes a {cls.__name__} keeps no data in: {unsafe}.")
            for name, value in state.items():
                setattr(self, name, copied(value))
            self._full_timesteps, self.timesteps = self.timesteps, self.timesteps[position:]

        def scale_model_input(self, sample, *args, **kwargs):
            full = vars(self).pop("_full_timesteps", None)
            if full is not None:  # the pipeline holds the remaining ones; the scheduler reads all
                self.timesteps = full
            return super().scale_model_input(sample, *args, **kwargs)

    Resumed.__name__, Resumed.__qualname__ = cls.__name__, cls.__qualname__
    scheduler.__class__ = Resumed


def settable(scheduler, name: str) -> bool:
    """Whether a kept state may set `name`: data attributes only, never a method, a property
    or the config."""
    on_class = getattr(type(scheduler), name, None)
    return (name.isidentifier() and not name.startswith("__") and name not in NOT_STATE
            and not callable(on_class) and not isinstance(on_class, property))


def restored_generators(states: list) -> list[torch.Generator]:
    generators = []
    for state in states:
        g = torch.Generator("cpu")
        g.set_state(state)
        generators.append(g)
    return generators


# ----- in a run file: JSON for the structure, safetensors for the tensors ----------------------
def encode(value, key: str, tensors: dict):
    """`value` as JSON, its tensors put in `tensors` under keys starting with `key`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        return {"$tensor": key, "numpy": True}
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
        return {"$tensor": key}
    if isinstance(value, (list, tuple)):
        return [encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    raise StudioError(f"{key}: a {type(value).__name__} cannot be kept in a run file.")


def decode(value, tensors: dict):
    if isinstance(value, list):
        return [decode(v, tensors) for v in value]
    if isinstance(value, dict):
        key = value.get("$tensor")
        if not isinstance(key, str) or key not in tensors:
            raise StudioError(f"a kept scheduler value names tensor {key!r}, which the run file lacks.")
        return tensors[key].numpy() if value.get("numpy") else tensors[key]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise StudioError(f"a kept scheduler value {value!r} is not data.")


def to_saved(states: list, tensors: dict) -> list:
    """JSON for each step's ResumeState (None where a step kept none)."""
    saved = []
    for i, s in enumerate(states):
        if s is None:
            saved.append(None)
            continue
        prefix = f"resume.{i}"
        saved.append({"position": s.position, "latents": encode(s.latents, f"{prefix}.latents", tensors),
                      "generators": encode(s.generators, f"{prefix}.generators", tensors),
                      "scheduler": {k: encode(v, f"{prefix}.scheduler.{k}", tensors) for k, v in s.scheduler.items()}})
    return saved


def from_saved(saved, tensors: dict, steps: int) -> list:
    if saved is None:
        return [None] * steps
    if not isinstance(saved, list) or len(saved) != steps:
        raise StudioError(f"resume should hold one entry per step ({steps}).")
    states = []
    for entry in saved:
        if entry is None:
            states.append(None)
            continue
        latents, generators = decode(entry["latents"], tensors), decode(entry["generators"], tensors)
        scheduler = {str(k): decode(v, tensors) for k, v in dict(entry["scheduler"]).items()}
        state_size = torch.Generator("cpu").get_state().shape
        if not isinstance(latents, torch.Tensor) or not all(
                isinstance(g, torch.Tensor) and g.dtype == torch.uint8 and g.shape == state_size for g in generators):
            raise StudioError(f"resume: latents should be a tensor and generators uint8 tensors of {tuple(state_size)}.")
        states.append(ResumeState(int(entry["position"]), latents, scheduler, list(generators)))
    return states
