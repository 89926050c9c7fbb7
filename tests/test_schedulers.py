"""Every sampler name builds from the model's config, runs, and leaves one trajectory entry per step."""
import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from studio import schedulers
from studio.errors import StudioError
from studio.requests import GenerationRequest
from tests import tiny_pipelines as tiny

NAMES = list(schedulers.SCHEDULERS)


@pytest.fixture(scope="module")
def managers(tiny_dirs, tmp_path_factory):
    from studio.config import Settings
    from studio.manager import PipelineManager

    loaded = {}
    for family in ("sd1", "sd2v"):
        loaded[family] = PipelineManager(Settings(model=str(tiny_dirs[family]),
                                                  outputs=str(tmp_path_factory.mktemp("out"))))
        loaded[family].load()
    return loaded


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("family", ["sd1", "sd2v"])
def test_each_scheduler_runs_and_records_one_entry_per_step(managers, family, name):
    result = managers[family].generate(GenerationRequest(prompt=tiny.PROMPT, num_inference_steps=4,
                                                         scheduler=name, seed=0))
    assert result.scheduler_name == name
    assert np.isfinite(np.asarray(result.images[0], float)).all()
    assert len(result.trajectory.steps) == 4
    assert [s.index for s in result.trajectory.steps] == [0, 1, 2, 3]


def test_a_scheduler_keeps_the_models_prediction_type(managers):
    config = managers["sd2v"].loaded.scheduler_config
    assert schedulers.make_scheduler("DPM++ 2M Karras", config).config.prediction_type == "v_prediction"


def test_default_is_the_models_own_scheduler_unchanged(managers):
    config = managers["sd1"].loaded.scheduler_config
    made = schedulers.make_scheduler(schedulers.DEFAULT, config)
    assert type(made).__name__ == config["_class_name"]
    assert {k: made.config[k] for k in config if not k.startswith("_")} == \
        {k: v for k, v in config.items() if not k.startswith("_")}


def test_every_run_gets_a_fresh_scheduler(managers):
    manager = managers["sd1"]
    manager.generate(GenerationRequest(prompt="a", num_inference_steps=2, scheduler="DPM++ 2M"))
    first = manager.loaded.txt2img.scheduler
    manager.generate(GenerationRequest(prompt="a", num_inference_steps=2, scheduler="DPM++ 2M"))
    assert manager.loaded.txt2img.scheduler is not first


def test_names_are_recovered_from_instances():
    base = DPMSolverMultistepScheduler()
    assert schedulers.name_of(base) == "DPM++ 2M"
    assert schedulers.name_of(DPMSolverMultistepScheduler(use_karras_sigmas=True)) == "DPM++ 2M Karras"
    assert schedulers.name_of(DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")) == "DPM++ 2M SDE"


def test_an_unknown_scheduler_is_a_clear_error():
    with pytest.raises(StudioError, match="scheduler='Euler b' is not known"):
        schedulers.make_scheduler("Euler b", {"_class_name": "EulerDiscreteScheduler"})


def test_a_zero_snr_model_keeps_its_schedule_under_schedulers_without_the_option():
    from diffusers import DDPMScheduler

    config = dict(DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                timestep_spacing="trailing").config)
    config["_class_name"] = "EulerDiscreteScheduler"
    wanted = schedulers.make_scheduler("Euler", config).alphas_cumprod
    for name in ("Heun", "LMS", "PLMS", "DPM2", "DPM2 a", "DPM++ SDE", "DPM++ 2M", "UniPC", "DDIM"):
        got = schedulers.make_scheduler(name, config).alphas_cumprod
        assert torch.allclose(got[:-1].double(), wanted[:-1].double(), rtol=1e-4), name
        assert got[-1] < 1e-6, name  # zero terminal SNR (2^-24 where 0 would break sigmas)


def test_dpm_sde_gives_the_same_pictures_for_the_same_seeds(managers):
    # Its Brownian-tree noise used to come from torch's global generator, not the request's seed.
    def pixels(seed: int, count: int, global_seed: int) -> np.ndarray:
        torch.manual_seed(global_seed)
        result = managers["sd1"].generate(GenerationRequest(
            prompt=tiny.PROMPT, num_inference_steps=4, scheduler="DPM++ SDE", seed=seed,
            num_images_per_prompt=count))
        return np.stack([np.asarray(image) for image in result.images])

    batch = pixels(7, 2, global_seed=1)
    assert (pixels(7, 2, global_seed=2) == batch).all()
    # Each image keeps its own seed: the second of a batch at seed 7 is the picture of seed 8 alone
    # (up to 1/255: torchsde's tree of a batch rounds a little differently; another seed: ~240/255).
    assert np.abs(pixels(8, 1, global_seed=3)[0].astype(int) - batch[1]).max() <= 1
    assert np.abs(pixels(9, 1, global_seed=1)[0].astype(int) - batch[1]).max() > 50


V_CONFIGS = {
    "v-prediction (SD 2.x)": {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                              "beta_end": 0.012, "prediction_type": "v_prediction", "timestep_spacing": "leading",
                              "steps_offset": 1},
    "v-prediction, zero terminal SNR": {"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear",
                                        "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction",
                                        "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                                        "steps_offset": 1},
}


@pytest.mark.parametrize("steps", [8, 20])
@pytest.mark.parametrize("config", list(V_CONFIGS))
def test_plms_on_a_v_model_that_always_predicts_one_picture_ends_on_that_picture(config, steps):
    """When the model predicts the same x0 at every step, the probability-flow ODE keeps the
    starting noise direction: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps at every t, and any
    consistent sampler ends there exactly. PLMS combined the raw v outputs of several timesteps,
    which mix noise and picture in different proportions, and missed by 0.01-0.07 (measured)."""
    scheduler = schedulers.make_scheduler("PLMS", V_CONFIGS[config])
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 4, 8, 8, generator=generator) * 2 - 1
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    start = scheduler.alphas_cumprod[int(scheduler.timesteps[0])]
    noise = (sample - start ** 0.5 * x0) / (1 - start) ** 0.5
    end = scheduler.final_alpha_cumprod  # where PNDM's last step lands
    expected = end ** 0.5 * x0 + (1 - end) ** 0.5 * noise
    for t in scheduler.timesteps:
        alpha_bar = scheduler.alphas_cumprod[int(t)]
        v = (alpha_bar ** 0.5 * sample - x0) / (1 - alpha_bar) ** 0.5  # the v whose x0 is x0
        sample = scheduler.step(v, t, sample).prev_sample
    assert (sample - expected).abs().max() < 1e-3
