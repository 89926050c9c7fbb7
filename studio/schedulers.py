"""Sampler names people know (AUTOMATIC1111's) and the diffusers schedulers behind them.

The one home of that mapping. `make_scheduler` builds a fresh scheduler from the model's own
scheduler config, so every run starts from clean state and keeps the model's noise schedule and
prediction type (epsilon or v). "Default" is the model's own scheduler, unchanged.
This module does not run schedulers. It imports diffusers only when it builds one, so the names
serve the command line's --help and argument checks without loading diffusers and torch.
"""
from __future__ import annotations

import functools
import inspect
import math

from studio.errors import StudioError

DEFAULT = "Default"

# name -> (diffusers class name, extra config)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}
NAMES = [DEFAULT, *SCHEDULERS]
# AUTOMATIC1111's HTTP API (studio.a1111): the other names its clients send for these samplers,
# and its separate "scheduler" (the sigma schedule): "DPM++ 2M" with "Karras" is "DPM++ 2M Karras".
A1111_ALIASES = {
    "Euler": ("k_euler",), "Euler a": ("k_euler_a", "k_euler_ancestral"), "Heun": ("k_heun",),
    "DDIM": ("ddim",), "DDPM": ("ddpm",), "PLMS": ("plms",), "LMS": ("k_lms",), "DPM2": ("k_dpm_2",),
    "DPM2 a": ("k_dpm_2_a",), "DPM++ 2M": ("k_dpmpp_2m",), "DPM++ 2M Karras": ("k_dpmpp_2m_ka",),
    "DPM++ 2M SDE": ("k_dpmpp_2m_sde",), "DPM++ SDE": ("k_dpmpp_sde",), "UniPC": ("unipc",), "LCM": ("k_lcm",),
}
A1111_SCHEDULES = {"automatic": "Automatic", "karras": "Karras"}  # name -> label; Karras: DPM++ 2M only
HINTS = {
    "LCM": "only for LCM-distilled models (2-8 steps, guidance 1-2)",
    "DPM2 a": "20+ steps, or low guidance: its midpoint step magnifies CFG at few steps",
}
# Samplers whose first step is not a first-order step: Heun and the DPM2s evaluate the model twice
# per step and combine the two, and PLMS averages its first two noise predictions and then
# extrapolates from them. From a zero-terminal-SNR schedule's first sigma (4096, a stand-in for
# infinity) to the next (14 at 8 steps), that combination multiplies the difference between the
# two predictions by about (s0 - s1) / s1 ~ 300: the bundled model then drew noise under Heun and
# PLMS. The step from pure noise is exact at first order (Euler there is DDIM), so on such a
# schedule these samplers take it first-order, as DPM-Solver and UniPC do by design.
SECOND_ORDER_FIRST_STEP = {"Heun", "DPM2", "DPM2 a", "PLMS"}
# PLMS's fourth-order extrapolation over few, long steps amplifies the differences between its x0
# predictions about 6x ((55 + 59 + 37 + 9) / 24); on the bundled model at 8 steps it drew 8 of 16
# held-out prompts right with order 4, 14 with order 3 and 15 with order 2 (16 of 16 at 20 steps).
# Under this many steps it keeps one earlier prediction (order 2), as DPM-Solver lowers its order
# in the final steps under 15 (`lower_order_final`).
PLMS_FULL_ORDER_STEPS = 15


def make_scheduler(name: str, model_config: dict, seeds: list[int] | None = None):
    """A new scheduler called `name`, configured from the model's own scheduler config.

    `seeds`, one per image, seed the noise that DPM++ SDE draws from its Brownian tree; without
    them diffusers seeds that tree from torch's global generator, so the same request would give
    another picture each time.
    """
    if name == DEFAULT:
        cls_name, extra = model_config["_class_name"], {}
    elif name in SCHEDULERS:
        cls_name, extra = SCHEDULERS[name]
    else:
        raise StudioError(f"scheduler={name!r} is not known; choose one of: {', '.join(NAMES)}.")
    import diffusers

    cls = getattr(diffusers, cls_name)
    # DDIM/DDPM/LCM default to clipping x0 to [-1, 1], right for pixels, wrong for latents. A
    # config that never mentions it comes from a scheduler without the option (Euler, PNDM...),
    # i.e. a latent model, so we do not clip; a config that sets it keeps its choice.
    config = {"clip_sample": False, **model_config, **extra}
    keywords = {}
    if seeds and accepts(cls, "noise_sampler_seed"):
        keywords["noise_sampler_seed"] = list(seeds)  # one tree per image, as in a batch
    zero_snr = bool(config.get("rescale_betas_zero_snr"))
    if zero_snr and not accepts(cls, "rescale_betas_zero_snr") and accepts(cls, "trained_betas"):
        # (a keyword: from_config drops a trained_betas found in the config dict itself)
        keywords["trained_betas"] = zero_snr_betas(model_config)
    scheduler = cls.from_config(config, **keywords)
    if zero_snr and name != DEFAULT:
        if config.get("use_karras_sigmas"):
            # Karras' ramp is built for a finite sigma range; from 4096 it spends most steps on
            # pure noise (8 steps: 4096, 1720, 639, 201, 51, 9, 0.9) and its rounded timesteps
            # repeat 999, which makes diffusers' DPM-Solver run past its last sigma at 50 steps.
            # Ramp from the sigma_max the same betas have without the rescale (SD's: 14.6).
            scheduler.register_to_config(sigma_max=unrescaled_sigma_max(model_config))
        if name in SECOND_ORDER_FIRST_STEP and name != "PLMS":
            take_first_step_first_order(scheduler)
    if name == "PLMS" and config.get("prediction_type") == "v_prediction":
        plms_on_x0(scheduler, first_step_first_order=zero_snr)
    return scheduler


def accepts(cls, parameter: str) -> bool:
    return parameter in inspect.signature(cls.__init__).parameters


def zero_snr_betas(model_config: dict) -> list[float]:
    """The model's betas rescaled to zero terminal SNR, for schedulers without that option.

    A model trained with `rescale_betas_zero_snr` (as the bundled one is) must be sampled on that
    schedule; Heun, LMS, PLMS, DPM2 and others ignore the option, so they get the betas instead.
    As diffusers' Euler does, the last cumulative alpha is 2^-24 rather than 0, which would make
    the first sigma infinite.
    """
    import diffusers
    import torch

    alphas_cumprod = diffusers.DDPMScheduler.from_config(model_config).alphas_cumprod.double().clone()
    alphas_cumprod[-1] = 2.0 ** -24
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return (1 - alphas_cumprod / previous).tolist()


def unrescaled_sigma_max(model_config: dict) -> float:
    """The largest sigma of the model's betas before any zero-terminal-SNR rescale."""
    import diffusers

    plain = diffusers.DDPMScheduler.from_config({**model_config, "rescale_betas_zero_snr": False})
    alpha_bar = float(plain.alphas_cumprod[-1])
    return math.sqrt((1 - alpha_bar) / alpha_bar)


def take_first_step_first_order(scheduler) -> None:
    """Make the first step of a Heun or DPM2 (ancestral or not) scheduler first-order.

    The second model call of step 1 is handed the first call's x0, so their combination of the
    two is Euler's (Euler ancestral's) step. Every later step is the sampler's own; the number
    of model calls is unchanged. (PLMS: see `plms_on_x0`.)"""
    original = scheduler.step
    first_x0 = []

    @functools.wraps(original)  # keeps `generator` in the signature for the ancestral ones
    def step(model_output, timestep, sample, *args, **kwargs):
        second_call_of_step_1 = scheduler.step_index == 1 and not scheduler.state_in_first_order
        if second_call_of_step_1:
            model_output = output_for_x0(scheduler, sample, first_x0[0], corrector_sigma(scheduler))
        out = original(model_output, timestep, sample, *args, **kwargs)
        if not first_x0:
            first_x0.append(out[1] if isinstance(out, tuple) else out.pred_original_sample)
        return out

    scheduler.step = step


def plms_on_x0(scheduler, first_step_first_order: bool) -> None:
    """PLMS (diffusers' PNDM) for a v-prediction model, extrapolating predicted x0, not v.

    PNDM keeps the raw model outputs of its last steps and combines them linearly (its warm-up
    average, then Adams-Bashforth weights), converting only the result to noise with the current
    sample. But v = sqrt(a) eps - sqrt(1 - a) x0 mixes noise and picture differently at every
    timestep, so a combination of v from several timesteps is no step of the method; at 8 steps
    the bundled model drew a washed-out blob (3 of 16 prompts right), and extrapolating noise
    instead is worse still (0 of 16: near pure noise it hardly says anything about the picture).
    Here each output is read as the x0 it predicts, at its own timestep and sample, and before
    every step the history is handed to PNDM re-expressed at the current timestep and sample, so
    PNDM's weights (each set sums to 1) combine x0s: a multistep method on the data prediction,
    as DPM-Solver++ is. With `first_step_first_order` (a zero-terminal-SNR schedule, from pure
    noise), step 1 uses the first x0 alone and the history restarts after it (see
    SECOND_ORDER_FIRST_STEP). Under PLMS_FULL_ORDER_STEPS steps it is second order (one earlier
    x0), as DPM-Solver lowers its order under 15 steps. The number of model calls is unchanged."""
    scheduler.step = functools.wraps(scheduler.step)(X0History(scheduler, first_step_first_order))


class X0History:
    """plms_on_x0's step: PNDM's own step, handed its history as x0s re-expressed at each step."""

    def __init__(self, scheduler, first_step_first_order: bool):
        self.scheduler, self.original, self.first_order = scheduler, scheduler.step, first_step_first_order
        # The predicted x0 behind each entry of scheduler.ets, oldest first. Kept on the scheduler,
        # with all its state, so that a run resumed after any step (studio.resume) has it.
        scheduler.x0_history, scheduler.from_pure_noise = [], False

    def coefficients(self, timestep: int, sample):
        alpha_bar = self.scheduler.alphas_cumprod[timestep].to(sample.device, sample.dtype)
        return alpha_bar ** 0.5, (1 - alpha_bar) ** 0.5

    def as_output(self, x0, sample, timestep: int):  # the v that predicts x0 from `sample` at `timestep`
        a, b = self.coefficients(timestep, sample)
        return (a * sample - x0) / b

    def __call__(self, model_output, timestep, sample, *args, **kwargs):
        scheduler, original, t = self.scheduler, self.original, int(timestep)
        history = scheduler.x0_history
        a, b = self.coefficients(t, sample)
        x0 = a * sample - b * model_output
        counter = scheduler.counter
        if counter == 0:
            scheduler.from_pure_noise = self.first_order and t == scheduler.config.num_train_timesteps - 1
            history[:] = [x0]
            return original(model_output, timestep, sample, *args, **kwargs)
        if counter == 1:  # the warm-up: PNDM steps again from the first sample and timestep
            start, t0 = scheduler.cur_sample, t + scheduler.config.num_train_timesteps // scheduler.num_inference_steps
            warm = history[0] if scheduler.from_pure_noise else x0
            scheduler.ets = [self.as_output(history[0], start, t0)]
            out = original(self.as_output(warm, start, t0), timestep, sample, *args, **kwargs)
            if scheduler.from_pure_noise:
                history[:] = [x0]  # the pure-noise prediction leaves the history
            return out
        earlier = 3 if scheduler.num_inference_steps >= PLMS_FULL_ORDER_STEPS else 1
        scheduler.ets = [self.as_output(h, sample, t) for h in history[-earlier:]]
        out = original(self.as_output(x0, sample, t), timestep, sample, *args, **kwargs)
        history.append(x0)
        del history[:-4]  # the most PNDM combines (and what a resumed run needs)
        if scheduler.from_pure_noise and counter == 2:
            history[:] = [x0]  # x0 of step 1's second call was this same one: not two points
        return out


def corrector_sigma(scheduler) -> float:
    """The sigma at which a two-stage scheduler's second call reads its x0."""
    kind = type(scheduler).__name__
    if kind == "HeunDiscreteScheduler":
        return float(scheduler.sigmas[scheduler.step_index])
    if kind == "KDPM2AncestralDiscreteScheduler":
        return float(scheduler.sigmas_interpol[scheduler.step_index - 1])
    return float(scheduler.sigmas_interpol[scheduler.step_index])  # KDPM2


def output_for_x0(scheduler, sample, x0, sigma: float):
    """The model output from which the scheduler reads `x0` at `sigma` (sigma-scale sample,
    Karras et al. 2022: x0 = c_skip x + c_out F; epsilon: x0 = x - sigma eps)."""
    if scheduler.config.prediction_type == "v_prediction":
        return (sample / (sigma ** 2 + 1) - x0) * (sigma ** 2 + 1) ** 0.5 / sigma
    return (sample - x0) / sigma


def name_of(scheduler) -> str:
    """The user-facing name of a scheduler instance, for metadata ("Euler a", "DPM++ 2M Karras")."""
    cls_name = type(scheduler).__name__
    config = dict(scheduler.config)
    best, best_extra = cls_name, -1
    for name, (candidate, extra) in SCHEDULERS.items():
        matches = candidate == cls_name and all(config.get(k) == v for k, v in extra.items())
        if matches and len(extra) > best_extra:  # the most specific name wins
            best, best_extra = name, len(extra)
    return best
