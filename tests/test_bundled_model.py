"""The bundled tiny-shapes model: prompts, negative prompts, guidance and strength really act.

Its pictures have measurable meaning, read by the deterministic pixel classifier in
training/classify.py, so these tests check behaviour, not just shapes. Seeds are fixed.
"""
import numpy as np
import pytest

# The bundled model v6 meets the evaluation's bars (see its model card), but some behaviour we
# require is not there yet. These tests state it; strict xfail makes the suite fail the day one
# starts passing, so its marker goes.
MODEL_GAP = pytest.mark.xfail(strict=True, reason="the bundled model (v6) does not do this yet (issue 3)")

from diffusers import StableDiffusionPipeline
from PIL import Image

from studio import schedulers
from studio.config import DEFAULT_MODEL, Settings, parse_settings
from studio.requests import GenerationRequest
from training import classify, shapes


def verdict(image: Image.Image) -> classify.Verdict:
    return classify.classify(np.asarray(image.convert("RGB")))


def share_of(images, colour: str) -> float:
    """Fraction of all pixels whose nearest palette colour is `colour`."""
    pixels = np.concatenate([np.asarray(im, np.float32).reshape(-1, 3) for im in images])
    nearest = np.argmin(((pixels[:, None, :] - classify.PALETTE[None]) ** 2).sum(-1), axis=1)
    return float((nearest == classify.NAMES.index(colour)).mean())


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


@pytest.mark.parametrize("prompt", [
    # v6 draws small squares too large: 47 of the evaluation's 90 read as large.
    pytest.param(p, marks=MODEL_GAP) if "small blue square" in p else p for p in PROMPTS])
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
    request = dict(prompt="a large circle", num_images_per_prompt=8, seed=10)
    plain = bundled_manager.generate(GenerationRequest(**request)).images
    avoided = bundled_manager.generate(GenerationRequest(negative_prompt="red", **request)).images
    assert share_of(avoided, "red") < 0.5 * share_of(plain, "red")


# v6 already follows these prompts' colour, background and size fully without guidance (24 of 24
# at 1.0 and at 7.5). Over 32 held-out prompts guidance 7.5 reads shapes better than 1.0 (100%
# against 93.8%) but sizes worse (93.8% against 100%: small squares swell), so the count of
# right attributes does not rise with guidance.
@MODEL_GAP
def test_higher_guidance_follows_the_prompt_more_closely(bundled_manager):
    prompts = {shapes.caption(s): s for s in shapes.scenes(3, 8, list(shapes.HELD_OUT))}

    def correct(guidance: float) -> int:
        hits = 0
        for i, prompt in enumerate(prompts):
            seen = verdict(bundled_manager.generate(GenerationRequest(prompt=prompt, seed=i,
                                                                      guidance_scale=guidance)).images[0])
            scene = prompts[prompt]
            hits += (seen.colour == scene.colour) + (seen.background == scene.background) + (seen.size == scene.size)
        return hits

    assert correct(7.5) > correct(1.0)


@pytest.fixture(scope="module")
def red_circle() -> Image.Image:
    return shapes.render(shapes.Scene("red", "circle", "white", "large", "center", 14, 32, 32))


# At guidance 7.5 v1, v4 and v6 turn the red circle into a blue square already at strength 0.2
# (v6 even at 0.1); at guidance 1 v6 keeps it at 0.2, turns it purple at 0.3 and blue at 0.5.
@MODEL_GAP
def test_img2img_at_low_strength_keeps_the_picture(bundled_manager, red_circle):
    result = bundled_manager.generate(GenerationRequest(
        prompt="a large blue square in the center on a white background", image=red_circle, strength=0.2, seed=0))
    seen = verdict(result.images[0])
    assert (seen.colour, seen.shape) == ("red", "circle")


def test_img2img_at_high_strength_follows_the_prompt(bundled_manager, red_circle):
    result = bundled_manager.generate(GenerationRequest(
        prompt="a large blue square in the center on a white background", image=red_circle, strength=0.9, seed=0))
    seen = verdict(result.images[0])
    assert (seen.colour, seen.shape) == ("blue", "square")


@pytest.mark.parametrize("name", [pytest.param(n, marks=MODEL_GAP) if n in ("Heun", "PLMS") else n
                                  for n in schedulers.SCHEDULERS])  # Heun: orange; PLMS: white
def test_it_runs_under_every_scheduler(bundled_manager, name):
    result = bundled_manager.generate(GenerationRequest(
        prompt="a large yellow square in the center on a blue background", scheduler=name, seed=1,
        num_inference_steps=20, guidance_scale=1.5 if name == "LCM" else 7.5))
    assert result.images[0].size == (shapes.RESOLUTION, shapes.RESOLUTION)
    if name != "LCM":  # LCM's schedule is for distilled models; on this one it only has to run
        assert verdict(result.images[0]).colour == "yellow"
