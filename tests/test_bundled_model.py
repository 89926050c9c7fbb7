"""The bundled tiny-shapes model: prompts, negative prompts, guidance and strength really act.

Its pictures have measurable meaning, read by the deterministic pixel classifier in
training/classify.py, so these tests check behaviour, not just shapes. Seeds are fixed.
"""
import pytest

# The bundled model v9 meets the evaluation's bars (see its model card), but some behaviour we
# require is not there yet. These tests state it; strict xfail makes the suite fail the day one
# starts passing, so its marker goes.
MODEL_GAP = pytest.mark.xfail(strict=True, reason="the bundled model (v9) does not do this yet (model card, Limits)")

from diffusers import StableDiffusionPipeline

from studio import schedulers
from studio.config import DEFAULT_MODEL, Settings, parse_settings
from studio.requests import GenerationRequest
from training import behaviour, shapes
from training.behaviour import SAMPLER_PROMPTS, verdict


def test_it_loads_offline_as_a_plain_stable_diffusion_pipeline():
    pipe = StableDiffusionPipeline.from_pretrained(DEFAULT_MODEL, local_files_only=True)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == shapes.RESOLUTION


def test_it_is_the_default_of_the_app_and_the_cli():
    from studio.__main__ import build_parser

    assert Settings().model == parse_settings([]).model == DEFAULT_MODEL
    assert build_parser().parse_args(["generate", "--prompt", "p", "--out", "o.png"]).model == DEFAULT_MODEL


PROMPTS = {
    "a large red circle in the center on a white background": ("red", "circle", "white", "large", "center"),
    "a small blue square at the top left on a yellow background": ("blue", "square", "yellow", "small", "top left"),
    "a large green triangle at the bottom right on a black background":
        ("green", "triangle", "black", "large", "bottom right"),
}


@pytest.mark.parametrize("prompt", PROMPTS)
def test_a_prompts_colour_background_and_size_show_in_the_image(bundled_manager, prompt):
    seen = verdict(bundled_manager.generate(GenerationRequest(prompt=prompt, seed=0)).images[0])
    colour, _, background, size, _ = PROMPTS[prompt]
    assert (seen.colour, seen.background, seen.size) == (colour, background, size)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_a_prompts_shape_and_place_show_in_the_image(bundled_manager, prompt):
    seen = verdict(bundled_manager.generate(GenerationRequest(prompt=prompt, seed=0)).images[0])
    _, shape, _, _, position = PROMPTS[prompt]
    assert (seen.shape, seen.position) == (shape, position)


def test_the_negative_prompt_red_lowers_the_red_share(bundled_manager):
    plain = behaviour.negative_red(bundled_manager, "")
    assert plain > 0.05  # red does come up without the negative prompt (v9: 0.20, v9p 0.12, v8: 0.10)
    assert behaviour.negative_red(bundled_manager, "red") < 0.5 * plain


# A prompt that names no place ("a small red circle on a blue background") must still draw one
# shape: the held-out evaluation names a place in every prompt, so only this sees it. Over the 32
# such prompts at seed 0 (16 held-out triples x 2 sizes) v8 drew two or more shapes in 13, nearly
# all small ones (two or three copies), v9j in 28: without a place the prompt's prediction at high
# noise spread the shape's colour over every place, and guidance magnified it (model card). v9's
# captions leave the place out only for a centred shape, so it draws one shape in the middle: 0.
def test_a_prompt_that_names_no_place_draws_one_shape(bundled_manager):
    right, several, total = behaviour.without_place(bundled_manager, seeds=1)
    assert several <= 3, f"{several} of {total} pictures show two or more shapes ({right} read right)"


# Over the evaluation's 576 held-out pictures v8 reads colour 89.4% -> 96.5%, shape 77.4% ->
# 86.1% and size 96.9% -> 100% at guidance 1 -> 7.5 (background and place: equal). This test
# takes every 9th of those scenes (32 prompts, one seed each) and counts all five attributes:
# v9 151 -> 159 of 160 (v9p 155 -> 157, v8 148 -> 156).
# (v6 already drew colour, background and size right without guidance; 8 prompts counting only
# those three were 24 of 24 at both.)
def test_higher_guidance_follows_the_prompt_more_closely(bundled_manager):
    assert behaviour.guidance_hits(bundled_manager, 7.5) > behaviour.guidance_hits(bundled_manager, 1.0)


# v9 keeps the red circle up to strength 0.3 at guidance 7.5 (seeds 0-3; 0.5 at guidance 1),
# squares it at 0.4 and draws the blue square from 0.5; v8 the same. v6 made the blue square at
# guidance 7.5 from strength 0.1 (see "captions swapped at low noise" in the card). v9 needs its
# guidance fade for it (studio.json, from sigma 1.6: with v9p's, from 0.8, it squared the circle at
# 0.3 in 3 of 4 seeds; with guidance at every step v9j turned the circle orange).
@pytest.mark.parametrize("seed", range(4))
def test_img2img_at_strength_03_keeps_the_picture(bundled_manager, seed):
    seen = behaviour.img2img(bundled_manager, 0.3, seed)
    assert (seen.colour, seen.shape) == ("red", "circle")


@pytest.mark.parametrize("seed", range(4))
def test_img2img_from_strength_05_follows_the_prompt(bundled_manager, seed):
    seen = behaviour.img2img(bundled_manager, 0.5, seed)
    assert (seen.colour, seen.shape) == ("blue", "square")


# Every sampler but LCM (meant for distilled models) must draw the prompt at few and many steps.
# Until the zero-terminal-SNR fixes in studio/schedulers.py, Heun drew noise at 8 and 20 steps
# (0 of 16), DPM2 a and PLMS at 8, DPM++ 2M Karras a blob at 8 and crashed at 50. Each cell is one
# batch of the 16 held-out colour/shape/background triples (never in training), seeds 0-15.
# PLMS at 8 steps blotched (3 of 16) until it extrapolated x0 rather than v (15 of 16).
# Left as a stated gap, a trait of the sampler: DPM2 a at 8 steps drew 4 of 16 under v9p (v8: 7;
# Euler a 13, DPM2 12). Its step is D1 + rho (D2 - D1) with rho = s_k / s_k+1 up to 2.55 at 8 steps, which
# magnifies how fast the guided x0 moves (v8: 12 of 16 at guidance 2, 8 at 4, 7 at 7.5, 4 at 10).
# diffusers matches k-diffusion's sample_dpm_2_ancestral (a hand-written loop scored the same);
# on an exact two-mode denoiser at guidance 7.5 it lands in the prompted mode 0.61 of the time.
# v9, with its guidance fading from sigma 1.6, draws 2 of 16 under DPM2 a at 8 steps; it also falls
# short under DPM++ 2M Karras at 8 steps (7 of 16; v9p and v8 12 or more) and under UniPC at 8 (11)
# (model card, Limits). Both are their second-order extrapolation under strong guidance: on the
# same sigmas, first order draws 15 (Karras) and 14 (UniPC), and guidance 5 draws 11 and 15
# (Karras at guidance 3: 15); the misses are hue shifts (purple to blue, green to black). Without
# the fade Karras draws 8; ramping its sigmas from 20 to 80 rather than 14.6, 5 to 10. Karras'
# last steps are the wide ones (sigma ratios 2.3 to 3.7, DPM++ 2M's 1.6 to 1.8). At 20 and 50
# steps every sampler draws 14 to 16.
SAMPLER_GAPS = {("DPM2 a", 8), ("DPM++ 2M Karras", 8), ("UniPC", 8)}


@pytest.mark.parametrize("steps", [8, 20, 50])
@pytest.mark.parametrize("name", [n for n in schedulers.NAMES if n != "LCM"])
def test_every_sampler_draws_the_prompts_colours(bundled_manager, name, steps, request):
    if (name, steps) in SAMPLER_GAPS:
        request.applymarker(MODEL_GAP)
    drawn = [(v.colour, v.background) for v in behaviour.sampler_verdicts(bundled_manager, name, steps)]
    right = sum(seen == (colour, background) for seen, (_, colour, _, background) in zip(drawn, SAMPLER_PROMPTS))
    assert right >= 12, f"{name} at {steps} steps drew {right} of {len(SAMPLER_PROMPTS)}: {drawn}"


def test_lcm_runs_on_the_bundled_model(bundled_manager):
    result = bundled_manager.generate(GenerationRequest(
        prompt="a large yellow square in the center on a blue background", scheduler="LCM", seed=1,
        num_inference_steps=4, guidance_scale=1.5))
    assert result.images[0].size == (shapes.RESOLUTION, shapes.RESOLUTION)
