"""The Gradio app through its public API (gradio_client on 127.0.0.1), and how app.py launches."""
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from studio import metadata

ROOT = Path(__file__).resolve().parent.parent
TXT2IMG = dict(prompt="a small red circle", negative_prompt="", num_inference_steps=20, guidance_scale=7.5,
               width=64, height=64, scheduler="Default", num_images_per_prompt=1, seed=5, preview="none")


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server[0], verbose=False)


def test_the_api_names_its_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/txt2img", "/img2img", "/load_model"} <= set(endpoints)


def test_txt2img_round_trip_returns_a_png_with_its_parameters(client):
    _, gallery, info = client.predict(**TXT2IMG, api_name="/txt2img")
    assert len(gallery) == 1 and "**Seed:** 5" in info
    image = Image.open(gallery[0]["image"])
    assert image.size == (64, 64)
    parameters = metadata.parse_parameters(image.info["parameters"])
    assert parameters["Prompt"] == "a small red circle" and parameters["Seed"] == "5"


def test_img2img_round_trip(client, tmp_path):
    start = tmp_path / "start.png"
    Image.new("RGB", (64, 64), "red").save(start)
    values = {**TXT2IMG, "prompt": "a large blue square"}
    _, gallery, info = client.predict(**values, image=handle_file(str(start)), strength=0.5, api_name="/img2img")
    assert Image.open(gallery[0]["image"]).size == (64, 64)
    assert "10 steps" in info


@pytest.mark.parametrize(("name", "value", "message"), [
    ("num_inference_steps", 3.7, "num_inference_steps=3.7 is not allowed"),
    ("width", 500, "width=500 is not allowed"),
    ("height", 1024, r"height=1024 is not allowed: expected 64 to 256 for the loaded model \(--size-factor times"),
    ("scheduler", "Euler b", "Euler b"),
])
def test_bad_api_input_is_a_clear_error_and_the_next_request_works(client, name, value, message):
    with pytest.raises(Exception, match=message):
        client.predict(**{**TXT2IMG, name: value}, api_name="/txt2img")
    _, gallery, _ = client.predict(**{**TXT2IMG, "num_inference_steps": 2}, api_name="/txt2img")
    assert len(gallery) == 1


def test_loading_a_missing_model_keeps_the_current_one(client):
    with pytest.raises(Exception, match="was not found"):
        client.predict("/nonexistent/model", api_name="/load_model")
    _, gallery, _ = client.predict(**{**TXT2IMG, "num_inference_steps": 2}, api_name="/txt2img")
    assert len(gallery) == 1


def wait_for_line(process, needle: str, seconds: float) -> list[str]:
    """Lines of the process's stderr until one contains `needle` (or the time is up)."""
    lines, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen in:\n{''.join(lines)}")


def test_share_without_a_network_says_why_and_keeps_serving_locally(sd1_dir):
    from tests.conftest import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--model", str(sd1_dir), "--port", str(port), "--share", "--no-save"],
        cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        lines = wait_for_line(process, "No public link", 180)
        assert any("--share without --auth" in line for line in lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200
    finally:
        process.terminate()
        process.wait(30)


def test_batch_count_runs_batches_in_a_row_with_seeds_that_continue(client):
    """Batch count 2 x batch size 2 from seed 10: four pictures, seeds 10-13; the second batch is
    exactly what batch size 2 from seed 12 makes (so any batch can be made again)."""
    values = {**TXT2IMG, "num_inference_steps": 4, "num_images_per_prompt": 2, "seed": 10}
    _, gallery, info = client.predict(**values, batch_count=2, api_name="/txt2img")
    seeds = [int(metadata.parse_parameters(Image.open(g["image"]).info["parameters"])["Seed"]) for g in gallery]
    assert seeds == [10, 11, 12, 13]
    assert info.count("**Seeds:**") == 2 and "10, 11" in info and "12, 13" in info
    _, again, _ = client.predict(**{**values, "seed": 12}, api_name="/txt2img")
    assert [pixels(g) for g in again] == [pixels(g) for g in gallery[2:]]  # the second batch, run on its own


def pixels(picture: dict) -> bytes:
    return Image.open(picture["image"]).convert("RGB").tobytes()


@pytest.mark.parametrize("count", [0, 17, 1.5])
def test_a_bad_batch_count_is_refused_by_name_and_the_next_request_works(client, count):
    with pytest.raises(Exception, match=rf"batch_count={count!r} is not allowed|Value {count} is (less|greater)"):
        client.predict(**{**TXT2IMG, "num_inference_steps": 2}, batch_count=count, api_name="/txt2img")
    _, gallery, _ = client.predict(**{**TXT2IMG, "num_inference_steps": 2}, api_name="/txt2img")
    assert len(gallery) == 1


def test_the_branch_endpoint_carries_a_run_on_and_refuses_bad_values_by_name(client):
    import gradio.exceptions
    from gradio_client.exceptions import AppError

    client.predict(**{**TXT2IMG, "num_inference_steps": 8}, api_name="/txt2img")
    sheet, info = client.predict(None, at_step=4, prompt="a large blue square", negative_prompt="",
                                 guidance_scale="", scheduler="(as the run)", seed="", api_name="/branch")
    assert "after step 4: ran steps 5 to 8" in info and Image.open(sheet).width > 8 * 48
    for name, value, message in (("at_step", 8, "at_step=8 is not allowed"),
                                 ("guidance_scale", "lots", "guidance_scale='lots' is not a number"),
                                 ("seed", "-7", "seed=-7 is not allowed"),
                                 ("scheduler", "Nope", "Value: Nope is not in the list of choices")):
        values = dict(at_step=2, prompt="", negative_prompt="", guidance_scale="", scheduler="(as the run)", seed="")
        with pytest.raises((AppError, gradio.exceptions.Error), match=re.escape(message)):  # the dropdown's own check
            client.predict(None, **{**values, name: value}, api_name="/branch")
    _, again = client.predict(None, at_step=1, prompt="", negative_prompt="", guidance_scale="3", scheduler="Euler a",
                              seed="", api_name="/branch")
    assert "ran steps 2 to 8" in again and "Euler a" in again


def test_the_api_records_attention_on_request_and_the_viewer_shows_a_words_map(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=re.escape("record_attention='yes' is not allowed: expected true or false")):
        client.predict(**{**TXT2IMG, "record_attention": "yes"}, api_name="/txt2img")
    client.predict(**{**TXT2IMG, "num_inference_steps": 6, "record_attention": True}, api_name="/txt2img")
    words, lit, alone, note = client.predict(None, 3, "fast", "circle", False, api_name="/viewer_attention")
    assert [c[0] for c in words["choices"]] == ["a", "small", "red", "circle"] and words["value"] == "circle"
    assert Image.open(lit).size == Image.open(alone).size == (256, 256)
    assert "The attention of **circle** at step 3" in note
    with pytest.raises(AppError, match=re.escape("attention='square' is not a word of this run's prompt")):
        client.predict(None, 3, "fast", "square", False, api_name="/viewer_attention")
    client.predict(**{**TXT2IMG, "num_inference_steps": 2}, api_name="/txt2img")  # recording is off by default
    _, lit, _, note = client.predict(None, 2, "fast", "circle", False, api_name="/viewer_attention")
    assert lit is None and "did not record attention" in note


def test_the_viewer_replay_endpoint_hands_back_one_self_contained_page(client):
    client.predict(**{**TXT2IMG, "num_inference_steps": 5}, api_name="/txt2img")
    page = Path(client.predict(None, "fast", api_name="/viewer_replay")).read_text()
    assert page.startswith("<!doctype html>") and "studioPlayer(" in page and "Steps: 5" in page
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_the_reproduce_endpoint_makes_a_png_again_and_compares_its_pixels(client, bundled_manager, tmp_path):
    from gradio_client.exceptions import AppError

    from studio.outputs import OutputWriter
    from studio.requests import GenerationRequest

    made = bundled_manager.generate(GenerationRequest(prompt="a large white circle", num_inference_steps=6, seed=3))
    [png] = OutputWriter(tmp_path).write(made)
    picture, info = client.predict(handle_file(png), api_name="/reproduce")
    assert "Identical: every pixel is the dropped picture's." in info.replace("**", "")
    assert np.array_equal(np.asarray(Image.open(picture).convert("RGB")), np.asarray(made.images[0].convert("RGB")))
    plain = tmp_path / "plain.png"
    Image.new("RGB", (64, 64), "red").save(plain)
    with pytest.raises(AppError, match="drop a PNG with its parameters first"):
        client.predict(handle_file(str(plain)), api_name="/reproduce")


def test_the_regenerate_branch_endpoint_makes_a_branchs_png_again_and_refuses_other_pngs(client, bundled_manager,
                                                                                         tmp_path):
    from gradio_client.exceptions import AppError

    from studio import branching
    from studio.outputs import OutputWriter
    from studio.requests import GenerationRequest

    parent = bundled_manager.generate(GenerationRequest(**{**TXT2IMG, "num_inference_steps": 8}))
    [plain] = OutputWriter(tmp_path / "parent").write(parent)
    [png] = OutputWriter(tmp_path / "branch").write(branching.branch(bundled_manager, parent, 3, seed=77))
    with pytest.raises(AppError, match="This picture is not a branch: its parameters have no 'Branch at step'"):
        client.predict(handle_file(plain), api_name="/regenerate_branch")
    picture, info = client.predict(handle_file(png), api_name="/regenerate_branch")
    assert "branched it after step 3" in info and "Identical: every pixel is the dropped picture's." in info.replace("**", "")
    assert (np.asarray(Image.open(picture).convert("RGB")) == np.asarray(Image.open(png).convert("RGB"))).all()
