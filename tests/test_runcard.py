"""The run card (studio.runcard): what a picture's pixels depend on, in its PNG; Reproduce makes
it again and says "identical", or how far apart and what differs between the two cards."""
from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from studio import metadata, runcard
from studio.errors import StudioError
from studio.outputs import OutputWriter
from studio.requests import GenerationRequest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def made(bundled_manager, tmp_path_factory):
    result = bundled_manager.generate(GenerationRequest(prompt="a small yellow square at the top right",
                                                        num_inference_steps=8, seed=21, num_images_per_prompt=2))
    paths = OutputWriter(tmp_path_factory.mktemp("card")).write(result)
    return result, paths


def test_the_png_carries_the_run_card_and_a1111_style_reading_skips_it(made):
    _, paths = made
    values = metadata.parse_parameters(metadata.parameters_in_file(paths[1]))
    assert values["Diffusers"] == diffusers.__version__ and values["Torch"] == torch.__version__
    assert (values["Device"], values["Dtype"], values["Attention"], values["RNG"]) == ("cpu", "float32", "SDPA", "CPU")
    assert values["Model hash"] and values["Version"].startswith("diffusion-studio ")
    fields, notes = metadata.request_fields(values)
    assert notes == [] and fields["seed"] == 22 and fields["num_images_per_prompt"] == 2  # the picture's own seed


def test_reproducing_a_png_of_a_batch_gives_its_own_picture_identically(bundled_manager, made):
    result, paths = made
    values = metadata.parse_parameters(metadata.parameters_in_file(paths[1]))
    again, index, parent = runcard.reproduce(bundled_manager, values)  # each picture has a generator of its own
    assert parent is None and again.seeds == [22, 23] and index == 0
    assert runcard.compare(Image.open(paths[1]), again.images[index], values, again.card | values) == \
        "**Identical**: every pixel is the dropped picture's."


def test_a_different_picture_is_told_how_far_apart_and_which_card_entries_differ(made):
    result, paths = made
    values = metadata.parse_parameters(metadata.parameters_in_file(paths[0]))
    shifted = np.asarray(result.images[0], dtype=int)
    shifted[:8] = np.clip(shifted[:8] + 9, 0, 255)
    elsewhere = {**values, "Device": "cuda", "Dtype": "float16", "Torch": "2.5.1+cu121"}
    said = runcard.compare(Image.open(paths[0]), Image.fromarray(shifted.astype(np.uint8)), elsewhere, values)
    assert said.startswith("**Not identical**: up to 9/255 apart")
    assert f"Torch: 2.5.1+cu121 there, {torch.__version__} here" in said
    assert "Device: cuda there, cpu here" in said and "Dtype: float16 there, float32 here" in said
    assert "Diffusers" not in said  # the same on both
    same_card = runcard.compare(Image.open(paths[0]), Image.fromarray(shifted.astype(np.uint8)), values, values)
    assert "The two run cards agree" in same_card


def test_an_img2img_png_is_refused_by_what_it_lacks(bundled_manager, made):
    _, paths = made
    values = {**metadata.parse_parameters(metadata.parameters_in_file(paths[0])), "Denoising strength": "0.5"}
    with pytest.raises(StudioError, match="does not hold its starting picture"):
        runcard.reproduce(bundled_manager, values)


def test_the_backend_is_read_from_the_unets_processors(bundled_manager):
    unet = bundled_manager.loaded.runner.unet
    assert runcard.attention_backend(unet) == "SDPA"
    assert runcard.attention_backend(None) == "none"
