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
HINTS = {
    "LCM": "only for LCM-distilled models (2-8 steps, guidance 1-2)",
}
# Samplers whose first step is not a first-order step: Heun and the DPM2s evaluate the model twice
# per step and combine the two, and PLMS averages its first two noise predictions and then
# extrapolates from them. From a zero-terminal-SNR schedule's first sigma (4096, a stand-in for
# infinity) to the next (14 at 8 steps), that combination multiplies the difference between the
# two predictions by about (s0 - s1) / s1 ~ 300: the bundled model then drew noise under Heun and
# PLMS. The step from pure noise is exact at first order (Euler there is DDIM), so on such a
# schedule these samplers take it first-order, as DPM-Solver and UniPC do by design.
SECOND_ORDER_FIRST_STEP = {"Heun", "DPM2", "DPM2 a", "PLMS"}


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
        if name in SECOND_ORDER_FIRST_STEP:
            take_first_step_first_order(scheduler)
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
    """Make the first step of a Heun, DPM2 (ancestral or not) or PLMS scheduler first-order.

    The two-stage samplers' second model call of step 1 is handed the first call's x0, so their
    combination of the two is Euler's (Euler ancestral's) step. PLMS's second call (its warm-up
    average) is handed the first noise prediction, and its history restarts after that step, so
    the pure-noise prediction never enters its extrapolation. Every later step is the sampler's
    own; the number of model calls is unchanged."""
    original = scheduler.step
    first_x0 = []

    @functools.wraps(original)  # keeps `generator` in the signature for the ancestral ones
    def step(model_output, timestep, sample, *args, **kwargs):
        if type(scheduler).__name__ == "PNDMScheduler":
            return plms_step(scheduler, original, model_output, timestep, sample, *args, **kwargs)
        second_call_of_step_1 = scheduler.step_index == 1 and not scheduler.state_in_first_order
        if second_call_of_step_1:
            model_output = output_for_x0(scheduler, sample, first_x0[0], corrector_sigma(scheduler))
        out = original(model_output, timestep, sample, *args, **kwargs)
        if not first_x0:
            first_x0.append(out[1] if isinstance(out, tuple) else out.pred_original_sample)
        return out

    scheduler.step = step


def plms_step(scheduler, original, model_output, timestep, sample, *args, **kwargs):
    if scheduler.counter == 0:  # only a run from pure noise (not img2img) starts at the last timestep
        scheduler.from_pure_noise = int(timestep) == scheduler.config.num_train_timesteps - 1
    if not scheduler.from_pure_noise:
        return original(model_output, timestep, sample, *args, **kwargs)
    if scheduler.counter == 1:  # the warm-up: from x_T again, with the average of two predictions
        first, scheduler.ets[-1] = scheduler.ets[-1], model_output
        return original(first, timestep, sample, *args, **kwargs)  # = the first call's DDIM step
    out = original(model_output, timestep, sample, *args, **kwargs)
    if scheduler.counter == 3:  # (counter counts calls made) the history starts at step 2
        scheduler.ets = scheduler.ets[-1:]
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
