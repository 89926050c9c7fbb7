"""Inpainting on the bundled model (studio.inpainting): outside the mask the input stays, inside
the prompt paints; the options; bad masks named; the PNG and the command line."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
import pytest
from PIL import Image, ImageDraw

from studio import inpainting, metadata
from studio.config import REPO_ROOT
from studio.errors import StudioError
from studio.requests import GenerationRequest

RED = "a large red circle in the center on a blue background"
YELLOW = "a large yellow circle in the center on a blue background"


@pytest.fixture(scope="module")
def start(bundled_manager) -> Image.Image:
    return bundled_manager.generate(GenerationRequest(prompt=RED, seed=3)).images[0]


def box_mask(box=(12, 12, 52, 52), size=(64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def inpaint(manager, start, mask, **options):
    values = dict(prompt=YELLOW, image=start, mask_image=mask, strength=0.9, seed=1) | options
    return manager.generate(GenerationRequest(**values))


def yellow_share(picture, mask) -> float:
    pixels, inside = np.asarray(picture).astype(int), np.asarray(mask) > 0
    yellow = (pixels[..., 0] > 150) & (pixels[..., 1] > 150) & (pixels[..., 2] < 100)
    return float(yellow[inside].mean())


def test_outside_the_mask_the_input_stays_and_inside_the_prompt_paints(bundled_manager, start):
    mask = box_mask()
    result = inpaint(bundled_manager, start, mask, mask_blur=0)
    made, given, inside = np.asarray(result.images[0]).astype(int), np.asarray(start).astype(int), np.asarray(mask) > 0
    assert np.abs(made - given)[~inside].max() == 0  # the input's own pixels, pasted back
    assert yellow_share(start, mask) == 0 and yellow_share(result.images[0], mask) > 0.2


def test_mask_blur_softens_only_the_edge(bundled_manager, start):
    mask = box_mask()
    made = np.asarray(inpaint(bundled_manager, start, mask, mask_blur=4).images[0]).astype(int)
    far = np.ones((64, 64), bool)
    far[4:61, 4:61] = False  # more than 3 blur radii from the mask's edge
    assert np.abs(made - np.asarray(start).astype(int))[far].max() <= 1
    edge = np.abs(made - np.asarray(start).astype(int))[11, 20:44].mean()  # just outside the box
    assert edge > 0  # the soft edge reaches past the hard one


def test_latent_noise_runs_every_step_and_original_the_strengths(bundled_manager, start):
    original = inpaint(bundled_manager, start, box_mask(), strength=0.5)
    noise = inpaint(bundled_manager, start, box_mask(), strength=0.5, masked_content="latent noise")
    assert len(original.trajectory.steps) == 10 and len(noise.trajectory.steps) == 20
    full = inpaint(bundled_manager, start, box_mask(), strength=1.0)
    assert np.array_equal(np.asarray(noise.images[0]), np.asarray(full.images[0]))


def test_only_the_masked_area_keeps_the_rest_and_paints_the_box(bundled_manager, start):
    mask = box_mask((0, 0, 20, 20))  # a corner: its padded box is smaller than the picture
    result = inpaint(bundled_manager, start, mask, mask_blur=0, inpaint_only_masked=True, strength=1.0,
                     prompt="a large yellow circle at the top left on a blue background")
    made, given, inside = np.asarray(result.images[0]).astype(int), np.asarray(start).astype(int), np.asarray(mask) > 0
    assert np.abs(made - given)[~inside].max() == 0
    assert not np.array_equal(made[inside], given[inside])


def test_a_full_mask_repaints_everything_as_documented(bundled_manager, start):
    result = inpaint(bundled_manager, start, Image.new("L", (64, 64), 255), strength=1.0)
    assert yellow_share(result.images[0], Image.new("L", (64, 64), 255)) > 0.05


@pytest.mark.parametrize("mask, message", [
    (Image.new("L", (64, 64), 0), "mask_image is empty"),
    (Image.new("L", (64, 32), 255), "mask_image is 64x32 and the picture 64x64"),
])
def test_a_bad_mask_is_refused_by_name(bundled_manager, start, mask, message):
    with pytest.raises(StudioError, match=message):
        inpaint(bundled_manager, start, mask)


def test_a_mask_of_another_size_with_the_same_shape_is_scaled(bundled_manager, start):
    result = inpaint(bundled_manager, start, box_mask((24, 24, 104, 104), (128, 128)), mask_blur=0)
    assert yellow_share(result.images[0], box_mask()) > 0.2


def test_a_mask_needs_a_picture(bundled_manager):
    with pytest.raises(StudioError, match="mask_image: a mask needs the picture"):
        bundled_manager.generate(GenerationRequest(prompt=YELLOW, mask_image=box_mask()))


def test_the_png_records_the_mask_options_and_plain_img2img_does_not(bundled_manager, start):
    inpainted = inpaint(bundled_manager, start, box_mask(), num_inference_steps=4)
    text = metadata.format_parameters(inpainted, inpainted.seeds[0])
    assert "Mask blur: 4" in text and "Masked content: original" in text and "Inpaint only masked: False" in text
    plain = bundled_manager.generate(GenerationRequest(prompt=YELLOW, image=start, num_inference_steps=4))
    assert "Mask blur" not in metadata.format_parameters(plain, plain.seeds[0])


def test_the_command_line_inpaints_with_mask(start, tmp_path):
    start.save(tmp_path / "start.png")
    box_mask().save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    done = subprocess.run([sys.executable, "-m", "studio", "generate", "--prompt", YELLOW, "--init-image",
                           str(tmp_path / "start.png"), "--mask", str(tmp_path / "mask.png"), "--mask-blur", "0",
                           "--strength", "0.9", "--seed", "1", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    made, inside = np.asarray(Image.open(out).convert("RGB")).astype(int), np.asarray(box_mask()) > 0
    assert np.abs(made - np.asarray(start).astype(int))[~inside].max() == 0
    assert yellow_share(Image.open(out).convert("RGB"), box_mask()) > 0.2


def test_the_viewer_outlines_the_mask_on_x_t_and_x0(bundled_manager, start):
    import base64
    import io

    from studio import replay

    result = inpaint(bundled_manager, start, box_mask(), num_inference_steps=4)
    first = replay.frames(bundled_manager, result)["steps"][0]
    for kind in ("xt", "x0"):
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(first[kind].split(",", 1)[1]))).convert("RGB"))
        magenta = np.all(picture == (255, 0, 255), axis=-1)
        scale = picture.shape[0] / 64
        assert magenta[int(12 * scale), int(30 * scale)] and not magenta[int(32 * scale), int(32 * scale)], kind
    plain = bundled_manager.generate(GenerationRequest(prompt=YELLOW, image=start, num_inference_steps=4))
    assert "xt" in replay.frames(bundled_manager, plain)["steps"][0]


def test_a_9_channel_inpainting_model_inpaints_by_its_own_path_and_also_draws_txt2img_and_img2img(
        tiny_dirs, make_manager):
    """Its UNet takes the mask and the masked picture: inpainting is diffusers' own inpainting
    call (then the kept pixels pasted back); text to image and image to image are that call with
    the whole picture masked, as A1111 conditions such a model, never a 4-channel call that fails."""
    from diffusers import StableDiffusionInpaintPipeline

    manager = make_manager(tiny_dirs["sd1-inpaint"])
    assert manager.loaded.inpainting_unet
    direct = StableDiffusionInpaintPipeline.from_pretrained(tiny_dirs["sd1-inpaint"])
    direct.set_progress_bar_config(disable=True)
    picture, mask = Image.new("RGB", (64, 64), (200, 30, 30)), box_mask((16, 16, 47, 47))
    ask = dict(prompt="a cat", seed=4, num_inference_steps=3)

    made = manager.generate(GenerationRequest(**ask, image=picture, mask_image=mask, strength=1.0, mask_blur=0))
    theirs = direct(ask["prompt"], image=picture, mask_image=mask, strength=1.0, num_inference_steps=3,
                    generator=[torch.Generator().manual_seed(4)], output_type="np").images[0]
    inside = np.asarray(mask) > 0
    ours = np.asarray(made.images[0]).astype(int)
    assert np.abs(ours[inside] - (theirs * 255).round().astype(int)[inside]).max() <= 1
    assert np.abs(ours[~inside] - np.asarray(picture).astype(int)[~inside]).max() == 0

    txt2img = manager.generate(GenerationRequest(**ask))
    whole = direct(ask["prompt"], image=Image.new("RGB", (64, 64), (127, 127, 127)), mask_image=Image.new("L", (64, 64), 255),
                   strength=1.0, num_inference_steps=3, generator=[torch.Generator().manual_seed(4)], output_type="np")
    assert np.array_equal(np.asarray(txt2img.images[0]), (whole.images[0] * 255).round().astype(np.uint8))
    img2img = manager.generate(GenerationRequest(**ask, image=picture, strength=0.7))
    assert img2img.timings["steps"] == 2 and img2img.images[0].size == (64, 64)


def test_a_saved_inpainting_run_keeps_its_mask_and_opens_outlined(bundled_manager, start, tmp_path):
    from studio import replay, runs

    result = inpaint(bundled_manager, start, box_mask(), num_inference_steps=4)
    runs.save(result, tmp_path / "run")
    opened = runs.load(tmp_path / "run")
    assert opened.request.is_inpaint
    assert np.array_equal(np.asarray(inpainting.run_mask(opened.request)), np.asarray(inpainting.run_mask(result.request)))
    assert replay.frames(bundled_manager, opened)["steps"][0]["xt"] == replay.frames(bundled_manager, result)["steps"][0]["xt"]
