"""AUTOMATIC1111's variation seed (subseed, subseed_strength) on the bundled model: the proof
that a field added to studio.fields reaches the manager, the PNG text, PNG info, the CLI, the API
and the X/Y plot from the table alone."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from studio import metadata, sweeps
from studio.errors import StudioError
from studio.requests import GenerationRequest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# No size or background named, so the seed picks them: seed 7's picture is far from seed 1's (the
# bundled model: a large yellow circle on red, on blue). (v9p,
# the bundled model before v9's fifth draw, drew "a large yellow circle on a blue background" in
# the middle for every seed, 5 of 255 apart.)
PROMPT = "a yellow circle"


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=float)


@pytest.fixture(scope="module")
def runs(bundled_manager) -> dict:
    """Seed 1 alone, seed 7 alone, and seed 1 varied towards 7 by each strength."""
    def run(**changes):
        return bundled_manager.generate(GenerationRequest(**{"prompt": PROMPT, "seed": 1, **changes}))

    return {"seed 1": run(), "seed 7": run(seed=7),
            **{s: run(subseed=7, subseed_strength=s) for s in (0.0, 0.1, 0.2, 1.0)}}


def test_strength_0_gives_the_pixels_of_a_run_without_it(runs):
    assert (pixels(runs[0.0]) == pixels(runs["seed 1"])).all()


def test_strength_1_gives_the_variation_seeds_picture(runs):
    assert (pixels(runs[1.0]) == pixels(runs["seed 7"])).all()


@pytest.mark.parametrize("strength", [0.1, 0.2])
def test_a_low_strength_gives_a_near_variation_of_the_same_picture(runs, strength):
    """Measured on the bundled model: mean difference 1.3 (0.1) and 2.8 (0.2) of 255 from seed 1's
    picture, while seed 7's picture is 118 away (v9p: 0.6, 1.2 and 125)."""
    near = np.abs(pixels(runs[strength]) - pixels(runs["seed 1"])).mean()
    apart = np.abs(pixels(runs["seed 7"]) - pixels(runs["seed 1"])).mean()
    assert 0 < near < apart / 10, (near, apart)


def test_the_png_records_it_and_png_info_and_sd_parsers_read_it_back(runs, bundled_manager, tmp_path):
    from sd_parsers import ParserManager

    result = runs[0.1]
    path = metadata.save_png(result.images[0], tmp_path / "varied.png", result, result.seeds[0])
    text = Image.open(path).info["parameters"]
    assert "Variation seed: 7, Variation seed strength: 0.1" in text
    fields, notes = metadata.request_fields(metadata.parse_parameters(text))
    assert (fields["subseed"], fields["subseed_strength"], notes) == (7, 0.1, [])
    again = bundled_manager.generate(GenerationRequest(**fields))
    assert (pixels(again) == pixels(result)).all()  # the PNG's text makes the same picture
    parsed = ParserManager().parse(str(path))
    assert (parsed.metadata["Variation seed"], parsed.metadata["Variation seed strength"]) == ("7", "0.1")


def test_a_random_variation_seed_is_resolved_and_recorded(bundled_manager):
    result = bundled_manager.generate(GenerationRequest(prompt=PROMPT, seed=1, subseed=-1, subseed_strength=0.5,
                                                        num_inference_steps=2))
    assert result.request.subseed >= 0
    again = bundled_manager.generate(dataclasses.replace(result.request))
    assert (pixels(again) == pixels(result)).all()


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "0.2"])
def test_a_bad_strength_is_refused_by_name(bundled_manager, value):
    with pytest.raises(StudioError, match=rf"subseed_strength={value!r} is not allowed"):
        bundled_manager.generate(GenerationRequest(prompt=PROMPT, subseed_strength=value))


def test_img2img_refuses_a_variation_by_name(bundled_manager):
    with pytest.raises(StudioError, match=r"subseed_strength=0.3 is not allowed: expected 0 here"):
        bundled_manager.generate(GenerationRequest(prompt=PROMPT, image=Image.new("RGB", (64, 64), "red"),
                                                   subseed=3, subseed_strength=0.3))


def test_the_xy_plot_sweeps_it_as_var_strength():
    axis = sweeps.parse_axis("X", "subseed_strength", "0-0.3 [4]")
    assert axis.label == "Var. strength" and axis.values == (0.0, 0.1, 0.2, 0.3)
    assert axis.describe(0.1) == "Var. strength: 0.1"


def test_the_cli_takes_it(tmp_path):
    from studio.__main__ import build_parser, request_from

    args = build_parser().parse_args(["generate", "--prompt", PROMPT, "--out", str(tmp_path / "a.png"),
                                      "--subseed", "7", "--subseed-strength", "0.2"])
    assert (request_from(args).subseed, request_from(args).subseed_strength) == (7, 0.2)


def test_the_api_and_the_ui_take_it_by_name(app_server):
    from gradio_client import Client

    client = Client(app_server[0], verbose=False)
    names = [p["parameter_name"] for p in
             client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/txt2img"]["parameters"]]
    assert {"subseed", "subseed_strength"} <= set(names)
    _, gallery, info = client.predict(prompt=PROMPT, num_inference_steps=4, seed=1, subseed=7, subseed_strength=1.0,
                                      api_name="/txt2img")
    text = Image.open(gallery[0]["image"]).info["parameters"]
    assert "Variation seed: 7, Variation seed strength: 1.0" in text
