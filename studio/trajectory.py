"""The per-step record of a run: for every denoising step, x_t, the predicted clean x0, t and sigma.

`TrajectoryRecorder` sits behind diffusers' `callback_on_step_end` and wraps the run's own
(fresh) scheduler's `step` to see what the callback is not given: the noise prediction and the
scheduler's x0. x0 comes from the scheduler where it gives one (`pred_original_sample`, LCM's
`denoised`, DPM-Solver/UniPC `model_outputs[-1]`), else from the closed form for epsilon or v
prediction. Latents are stored in the variance-preserving ("alpha") scale whatever the scheduler
uses internally, as float16 on the CPU, so 150 SDXL steps stay in tens of MB; pictures are decoded
on demand by studio.previews. Heun-type schedulers call the UNet twice a step but leave one entry.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch

from studio.resume import ResumeState, capture, reference

STORE_DTYPE = torch.float16


@dataclasses.dataclass
class Step:
    index: int            # 0-based among the steps that ran
    timestep: float
    sigma: float          # sqrt((1 - alpha_bar) / alpha_bar) at this timestep
    latents: torch.Tensor  # x_t entering the step, (batch, c, h, w), alpha scale
    x0: torch.Tensor       # predicted clean latents at this step, (batch, c, h, w)
    # x0 from the unconditional and the conditional prediction alone, where guidance ran (the
    # CFG lens, studio.lens); Heun-type samplers: of the step's first call, at x_t
    x0_uncond: torch.Tensor | None = None
    x0_cond: torch.Tensor | None = None
    resume: ResumeState | None = None  # what carrying on after this step needs (studio.resume)
    attention: torch.Tensor | None = None  # (batch, tokens, h, w) per prompt token, if recorded (studio.attention)


@dataclasses.dataclass
class Trajectory:
    steps: list[Step] = dataclasses.field(default_factory=list)
    num_inference_steps: int = 0   # as requested
    start_step: int = 0            # img2img: steps skipped by strength
    final: torch.Tensor | None = None  # latents after the last step
    schedule: list[float] = dataclasses.field(default_factory=list)  # sigma at each of the N steps
    tokens: list[str] = dataclasses.field(default_factory=list)  # the prompt's, where attention was recorded

    def nbytes(self) -> int:
        tensors = [t for s in self.steps for t in (s.latents, s.x0, s.x0_uncond, s.x0_cond, s.attention)
                   if t is not None]
        tensors += [self.final] if self.final is not None else []
        return sum(t.numel() * t.element_size() for t in tensors) + self.resume_nbytes()

    def resume_nbytes(self) -> int:
        return sum(s.resume.nbytes() for s in self.steps if s.resume is not None)


MIN_ALPHA_BAR = 2.0 ** -24  # as diffusers' Euler: zero-terminal-SNR schedules end at alpha_bar 0


def sigma_from_alpha_bar(alpha_bar: float) -> float:
    alpha_bar = max(alpha_bar, MIN_ALPHA_BAR)
    return math.sqrt((1.0 - alpha_bar) / alpha_bar)


def alpha_bar_at(alphas_cumprod: torch.Tensor, timestep: float) -> float:
    """alpha_bar at a possibly fractional timestep, interpolating log-sigma (k-diffusion style)."""
    t = min(max(float(timestep), 0.0), len(alphas_cumprod) - 1.0)
    low, frac = int(math.floor(t)), t - math.floor(t)
    high = min(low + 1, len(alphas_cumprod) - 1)
    log_sigma = [math.log(sigma_from_alpha_bar(float(alphas_cumprod[i]))) for i in (low, high)]
    sigma = math.exp(log_sigma[0] * (1 - frac) + log_sigma[1] * frac)
    return 1.0 / (1.0 + sigma * sigma)


def x0_closed_form(x_t: torch.Tensor, model_output: torch.Tensor, alpha_bar: float,
                   prediction_type: str) -> torch.Tensor:
    """x0 from alpha-scale x_t = sqrt(a) x0 + sqrt(1-a) eps (Ho et al. 2020, eq. 15; v: Salimans & Ho 2022)."""
    alpha_bar = max(alpha_bar, MIN_ALPHA_BAR)
    a, s = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if prediction_type == "v_prediction":
        return a * x_t - s * model_output
    if prediction_type == "sample":
        return model_output
    return (x_t - s * model_output) / a


def schedule_sigmas(scheduler, num_inference_steps: int) -> list[float]:
    """Sigma at each of the N steps a fresh `scheduler` would take (one value per step, also for
    second-order schedulers, whose timestep lists hold two entries per step)."""
    scheduler.set_timesteps(num_inference_steps)
    timesteps = [float(t) for t in scheduler.timesteps[::getattr(scheduler, "order", 1)]]
    distinct = [t for i, t in enumerate(timesteps) if i == 0 or t != timesteps[i - 1]]  # PLMS repeats one
    return [sigma_from_alpha_bar(alpha_bar_at(scheduler.alphas_cumprod, t))
            for t in distinct[:num_inference_steps]]


def uses_sigma_scale(scheduler) -> bool:
    """k-diffusion-style schedulers keep x = x0 + sigma * eps rather than the alpha scale."""
    own = getattr(scheduler, "own_init_noise_sigma", None)  # a resumed one's reads 1 (studio.resume)
    return float(getattr(scheduler, "init_noise_sigma", 1.0) if own is None else own) != 1.0


class TrajectoryRecorder:
    """Records one run. Install with `attach(scheduler)`; pass `callback` to the pipeline."""

    def __init__(self, num_inference_steps: int, start_step: int = 0, on_step=None, should_stop=None,
                 generators=None, steps=(), attention=None):
        self.trajectory = Trajectory(steps=list(steps), num_inference_steps=num_inference_steps,
                                     start_step=start_step, tokens=attention.token_names if attention else [])
        self.on_step = on_step          # on_step(step: Step, recorder) after each finished step
        self.should_stop = should_stop  # should_stop() -> bool, checked after each step
        self.generators = generators    # each image's generator: kept after every step to resume
        self.attention = attention      # a studio.attention.AttentionRecorder, or None
        self._pending: dict | None = None   # a step whose second UNet call is still to come
        self._ready: dict | None = None     # a finished step the next callback will record
        self._scheduler = None
        self._fresh: dict = {}              # the scheduler as set_timesteps left it
        self._unet_output = None            # the last UNet call's output (both halves under CFG)
        self._hook = None

    def attach(self, scheduler, unet=None) -> None:
        """Watch `scheduler` (and `unet`'s outputs, for the CFG lens); `close()` lets go of them."""
        self._scheduler = scheduler
        original, set_timesteps = scheduler.step, scheduler.set_timesteps

        @functools.wraps(set_timesteps)
        def set_and_note(*args, **kwargs):
            set_timesteps(*args, **kwargs)
            self._fresh = reference(scheduler)

        scheduler.set_timesteps = set_and_note
        if unet is not None:
            self._hook = unet.register_forward_hook(self._keep_output)
        if self.attention is not None:
            self.attention.install()

        # wraps() keeps step's signature visible: pipelines pass `generator` and `eta` only to a
        # step that declares them, and ancestral samplers lose determinism without the generator.
        @functools.wraps(original)
        def step(model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
            out = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            self._observe(model_output, timestep, sample, out)
            return out if return_dict else out.to_tuple()

        scheduler.step = step

    def close(self) -> None:
        if self.attention is not None:
            self.attention.remove()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _keep_output(self, module, args, output) -> None:
        self._unet_output = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)

    def _halves(self, sample, pending) -> dict:
        """x0 of the unconditional and the conditional prediction, where the UNet ran both."""
        output, self._unet_output = self._unet_output, None
        if output is None or output.shape[0] != 2 * sample.shape[0]:
            return {}
        kind = self._scheduler.config.prediction_type
        return {name: x0_closed_form(pending["latents"], half, pending["alpha_bar"], kind)
                for name, half in zip(("x0_uncond", "x0_cond"), output.chunk(2))}

    def _observe(self, model_output, timestep, sample, out) -> None:
        scheduler = self._scheduler
        if self._pending is None:  # the first (often only) UNet call of a step
            alpha_bar = alpha_bar_at(scheduler.alphas_cumprod, float(timestep))
            scale = math.sqrt(alpha_bar) if uses_sigma_scale(scheduler) else 1.0  # -> alpha scale
            self._pending = {"timestep": float(timestep), "alpha_bar": alpha_bar,
                             "latents": (sample * scale)}
            self._pending |= self._halves(sample, self._pending)
        self._pending["x0"] = self._x0(model_output, out, self._pending)
        if getattr(scheduler, "state_in_first_order", True):  # a whole step is done
            self._ready, self._pending = self._pending, None

    def _x0(self, model_output, out, pending) -> torch.Tensor:
        for name in ("pred_original_sample", "denoised"):
            value = getattr(out, name, None)
            if value is not None:
                return value
        outputs = getattr(self._scheduler, "model_outputs", None)
        if outputs and outputs[-1] is not None:  # DPM-Solver++ / UniPC convert to x0 themselves
            return outputs[-1]
        return x0_closed_form(pending["latents"], model_output, pending["alpha_bar"],
                              self._scheduler.config.prediction_type)

    def callback(self, pipe, i: int, t, callback_kwargs: dict) -> dict:
        ready, self._ready = self._ready, None
        if ready is None and self._pending is not None and i == pipe.num_timesteps - 1:
            ready, self._pending = self._pending, None  # Heun-type: the last step is first-order only
        steps = self.trajectory.steps
        if ready is not None and steps and steps[-1].timestep == ready["timestep"]:
            # PLMS runs its first timestep twice (a warm-up, then the real step): one entry
            steps[-1].x0 = stored(ready["x0"])
            self._attention()  # the entry keeps the warm-up's map; the repeat's is dropped
            self._keep_state(steps[-1], pipe, i, callback_kwargs)
        elif ready is not None:
            entry = Step(
                index=len(self.trajectory.steps), timestep=ready["timestep"],
                sigma=sigma_from_alpha_bar(ready["alpha_bar"]),
                latents=stored(ready["latents"]), x0=stored(ready["x0"]),
                x0_uncond=stored(ready.get("x0_uncond")), x0_cond=stored(ready.get("x0_cond")),
                attention=self._attention())
            self._keep_state(entry, pipe, i, callback_kwargs)
            self.trajectory.steps.append(entry)
            self.trajectory.final = stored(callback_kwargs["latents"])
            if self.on_step is not None:
                self.on_step(entry, self)
        if self.should_stop is not None and self.should_stop():
            pipe._interrupt = True
        return callback_kwargs

    def _attention(self):
        return None if self.attention is None else self.attention.take()

    def _keep_state(self, entry: Step, pipe, i: int, callback_kwargs: dict) -> None:
        """Keep what resuming after `entry` needs. The pipeline's loop runs the tail of the
        scheduler's timesteps (img2img and resumed runs skip the head), so the next UNet call
        is at this position of the whole list."""
        if self.generators is None:
            return
        position = len(self._scheduler.timesteps) - pipe.num_timesteps + i + 1
        entry.resume = capture(self._scheduler, self._fresh, callback_kwargs["latents"], self.generators, position)


def stored(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().to("cpu", STORE_DTYPE)
