"""PNG info: a PNG's parameters text back to request fields, regeneration from it, the UI's fill.

Our PNGs and AUTOMATIC1111's carry the same "parameters" text; studio.metadata parses it and maps
it to GenerationRequest arguments. Regenerating from one of our PNGs gives the same pixels.
"""
from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image, PngImagePlugin

from studio import metadata
from studio.outputs import OutputWriter
from studio.requests import GenerationRequest, GenerationResult
from studio.ui import cache, form, pnginfo_tab

A1111_TEXT = (
    'masterpiece, 1girl, "smiling": 1.2, (blue eyes:1.1)\n'
    "Negative prompt: lowres, bad anatomy\n"
    "second line of the negative\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, "
    'Clip skip: 2, Lora hashes: "add_detail: 7c6bad76eb54, more: 0a1b2c3d", '
    'Hires prompt: "a \\"quoted\\" word, and a comma", Version: v1.9.4'
)


def a_result(**request) -> GenerationResult:
    """A result as the manager returns it, without running a model (for the format alone)."""
    request = GenerationRequest(**{"prompt": "a red circle", "width": 64, "height": 64, "seed": 7, **request})
    return GenerationResult(images=[Image.new("RGB", (64, 64))], seeds=[request.seed], request=request,
                            model="models/tiny-shapes", model_hash="0123456789", device="cpu",
                            dtype="float32", timings={}, scheduler_name=request.scheduler)


def png_with(path, text: str | None):
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text(metadata.KEY, text)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path, pnginfo=info)
    return str(path)


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    """The messages the UI shows with gr.Warning, recorded instead of sent to a browser."""
    shown: list[str] = []
    monkeypatch.setattr(gr, "Warning", shown.append)
    return shown


# ----- the text -> fields mapping ------------------------------------------------------------
def test_our_parameters_text_maps_back_to_every_request_field():
    result = a_result(prompt="a small red circle, top left: on blue", negative_prompt="green, square",
                      num_inference_steps=12, guidance_scale=4.5, scheduler="Euler a", seed=99)
    values = metadata.parse_parameters(metadata.format_parameters(result, 99))
    fields, notes = metadata.request_fields(values)
    assert notes == []
    assert fields == {"prompt": "a small red circle, top left: on blue", "negative_prompt": "green, square",
                      "num_inference_steps": 12, "guidance_scale": 4.5, "width": 64, "height": 64,
                      "scheduler": "Euler a", "seed": 99, "num_images_per_prompt": 1,
                      "subseed": -1, "subseed_strength": 0.0, "clip_skip": None, "loras": "",
                      "guidance_min_sigma": None, "guidance_fade_sigma": None}  # left out: unused or the model's own
    assert GenerationRequest(**fields).prompt == result.request.prompt


def test_an_a1111_text_with_quoted_values_maps_to_fields():
    values = metadata.parse_parameters(A1111_TEXT)
    assert values["Lora hashes"] == "add_detail: 7c6bad76eb54, more: 0a1b2c3d"
    assert values["Hires prompt"] == 'a "quoted" word, and a comma'
    assert values["Version"] == "v1.9.4"
    fields, notes = metadata.request_fields(values)
    assert notes == []
    assert fields == {"prompt": 'masterpiece, 1girl, "smiling": 1.2, (blue eyes:1.1)',
                      "negative_prompt": "lowres, bad anatomy\nsecond line of the negative",
                      "num_inference_steps": 28, "guidance_scale": 7.0, "seed": 1234567890,
                      "width": 512, "height": 768, "scheduler": "DPM++ 2M Karras", "strength": 0.45,
                      "clip_skip": 2, "num_images_per_prompt": 1, "subseed": -1, "subseed_strength": 0.0,
                      "loras": "", "guidance_min_sigma": None, "guidance_fade_sigma": None}  # A1111 picks its LoRAs in the prompt


def test_a_value_with_a_comma_or_colon_is_quoted_in_our_text_and_read_back():
    result = a_result()
    result.model = "models/shapes, v2: best"
    text = metadata.format_parameters(result, 7)
    assert 'Model: "shapes, v2: best"' in text
    assert metadata.parse_parameters(text)["Model"] == "shapes, v2: best"


def test_a_models_own_scheduler_without_a_sampler_name_reads_back_as_default():
    result = a_result()
    result.scheduler_name = "DEISMultistepScheduler"
    text = metadata.format_parameters(result, 7)
    assert "Sampler: Default, " in text and "Scheduler: DEISMultistepScheduler" in text
    fields, notes = metadata.request_fields(metadata.parse_parameters(text))
    assert (fields["scheduler"], notes) == ("Default", [])


def test_a_batch_records_its_size_and_each_pictures_place_and_seed():
    result = a_result(num_images_per_prompt=3)
    result.seeds = [7, 8, 9]
    fields, _ = metadata.request_fields(metadata.parse_parameters(metadata.format_parameters(result, 8)))
    assert (fields["seed"], fields["num_images_per_prompt"]) == (8, 3)
    assert metadata.parse_parameters(metadata.format_parameters(result, 8))["Batch pos"] == "1"


def test_a_text_without_a_settings_line_is_all_prompt():
    fields, notes = metadata.request_fields(metadata.parse_parameters("just a prompt, nothing more"))
    assert fields == {"prompt": "just a prompt, nothing more", "negative_prompt": ""}
    assert notes == []


SETTINGS = {"Steps": "20", "Sampler": "Euler", "CFG scale": "7", "Seed": "1", "Size": "64x64"}


@pytest.mark.parametrize(("field", "value", "named", "left_out"), [
    ("Sampler", "DPM++ 3M SDE Exponential", "'DPM++ 3M SDE Exponential'", "scheduler"),
    ("Schedule type", "Karras", "'Euler Karras'", "scheduler"),
    ("Steps", "500", "num_inference_steps=500", "num_inference_steps"),
    ("Steps", "12.5", "num_inference_steps=12.5", "num_inference_steps"),
    ("CFG scale", "-3", "guidance_scale=-3", "guidance_scale"),
    ("CFG scale", "lots", "guidance_scale='lots'", "guidance_scale"),
    ("Seed", "99999999999", "seed=99999999999", "seed"),
    ("Size", "500x512", "width=500", "width"),
    ("Size", "512x4096", "height=4096", "height"),
    ("Size", "big", "'big'", "width"),
    ("Batch size", "64", "num_images_per_prompt=64", "num_images_per_prompt"),
    ("Denoising strength", "0", "strength=0", "strength"),
])
def test_an_unusable_value_is_a_note_naming_the_field_and_value_and_is_left_out(field, value, named, left_out):
    settings = {**SETTINGS, field: value}
    text = "a cat\n" + ", ".join(f"{k}: {v}" for k, v in settings.items())
    fields, notes = metadata.request_fields(metadata.parse_parameters(text))
    assert len(notes) == 1, notes
    assert notes[0].startswith(f"{'Sampler' if field == 'Schedule type' else field}:") and named in notes[0]
    assert left_out not in fields
    assert fields["prompt"] == "a cat"


# ----- the UI's fill -------------------------------------------------------------------------
def test_send_to_txt2img_fills_every_field_and_switches_tab(tmp_path, warnings):
    path = png_with(tmp_path / "ours.png", metadata.format_parameters(
        a_result(negative_prompt="blue", num_inference_steps=9, guidance_scale=3.0, scheduler="DDIM"), 7))
    *values, tabs = pnginfo_tab.fill(path, "txt2img", with_picture=False)
    assert dict(zip(pnginfo_tab.SENT_FIELDS, values)) == {
        "prompt": "a red circle", "negative_prompt": "blue", "num_inference_steps": 9,
        "guidance_scale": 3.0, "width": 64, "height": 64, "scheduler": "DDIM",
        "num_images_per_prompt": 1, "seed": 7, "subseed": -1, "subseed_strength": 0.0,
        "loras": ""}  # none: reset
    assert tabs.selected == "txt2img"
    assert warnings == []


def test_send_to_img2img_sends_the_picture_and_the_denoising_strength(tmp_path, warnings):
    path = png_with(tmp_path / "a1111.png", A1111_TEXT)
    *values, picture, strength, tabs = pnginfo_tab.fill(path, "img2img", with_picture=True)
    assert (picture, strength, tabs.selected) == (cache.served(path), 0.45, "img2img")  # a copy it may serve
    assert values[pnginfo_tab.SENT_FIELDS.index("scheduler")] == "DPM++ 2M Karras"
    assert [w for w in warnings if "Clip skip: 2" in w]  # the UI has no clip-skip control: said so


def test_an_unknown_sampler_is_a_warning_and_the_sampler_is_skipped(tmp_path, warnings):
    path = png_with(tmp_path / "odd.png", "a cat\nSteps: 20, Sampler: Restart, CFG scale: 7, Seed: 1, Size: 64x64")
    *values, _ = pnginfo_tab.fill(path, "txt2img", with_picture=False)
    assert warnings == [w for w in warnings if "Sampler: 'Restart'" in w] and len(warnings) == 1
    assert isinstance(values[pnginfo_tab.SENT_FIELDS.index("scheduler")], type(gr.skip()))
    assert values[pnginfo_tab.SENT_FIELDS.index("num_inference_steps")] == 20


def test_a_size_above_the_loaded_models_bound_is_a_warning_and_the_size_is_kept(tmp_path, warnings):
    """The sliders of the bundled 64 px model go to 256; an SD picture's 512x768 is not offered."""
    path = png_with(tmp_path / "sd.png", "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x768")
    *values, _ = pnginfo_tab.fill(path, "txt2img", with_picture=False, max_side=256)
    sent = dict(zip(pnginfo_tab.SENT_FIELDS, values))
    assert all(isinstance(sent[side], type(gr.skip())) for side in ("width", "height"))
    assert warnings == ["Size: '512x768' is larger than the loaded model takes here (up to 256 a side): "
                        "the size was kept."]
    *values, _ = pnginfo_tab.fill(path, "txt2img", with_picture=False, max_side=2048)
    assert values[pnginfo_tab.SENT_FIELDS.index("height")] == 768


def test_the_size_sliders_follow_the_loaded_model():
    """Width and height went to 2048 for a 64 px model; a switch to a 512 px one widens them."""
    import types

    from studio.ui import settings_panel

    with gr.Blocks():
        panel = form.parameter_panel("t", 64, prompt="a cat")
    assert (panel.width.maximum, panel.height.maximum, panel.width.step) == (256, 256, 8)
    assert panel.width.info == panel.height.info == "up to 4x the 64px it learned; larger repeats the subject"
    sd = types.SimpleNamespace(info=types.SimpleNamespace(native_size=512, family="sd1"),
                               settings=types.SimpleNamespace(size_factor=4.0))
    width, height, attention = settings_panel.fit_sizes(sd, [panel])
    assert (width["maximum"], width["value"], height["maximum"]) == (2048, 512, 2048)
    assert panel.width.maximum == 2048  # what Gradio checks API callers' values against
    assert attention["interactive"] is True
    # a model with no text: nothing to record attention to, and the box says so
    ddpm = types.SimpleNamespace(info=types.SimpleNamespace(native_size=32, family="unconditional"),
                                 settings=types.SimpleNamespace(size_factor=4.0))
    *_, attention = settings_panel.fit_sizes(ddpm, [panel])
    assert attention["interactive"] is False and attention["value"] is False and "unconditional" in attention["info"]


def test_a_png_without_parameters_cannot_go_to_txt2img_but_its_picture_can_go_to_img2img(tmp_path, warnings):
    path = png_with(tmp_path / "plain.png", None)
    with pytest.raises(gr.Error, match="carries no parameters"):
        pnginfo_tab.fill(path, "txt2img", with_picture=False)
    *values, picture, strength, _ = pnginfo_tab.fill(path, "img2img", with_picture=True)
    assert picture == cache.served(path) and all(isinstance(v, type(gr.skip())) for v in [*values, strength])
    assert "only the picture" in warnings[0]


def test_png_info_shows_every_field_and_says_when_another_model_made_it(tmp_path, bundled_manager):
    path = png_with(tmp_path / "a1111.png", A1111_TEXT)
    text, rows, notes = pnginfo_tab.png_info(path, bundled_manager)
    assert text == A1111_TEXT
    assert dict(rows)["Lora hashes"] == "add_detail: 7c6bad76eb54, more: 0a1b2c3d" and len(rows) == 15
    assert "'v1-5-pruned-emaonly'" in notes and "'tiny-shapes' loaded" in notes


def test_a_file_that_is_not_a_picture_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(gr.Error, match="image='notes.png' is not a picture"):
        pnginfo_tab.png_info(str(path))


# ----- regeneration and the API --------------------------------------------------------------
@pytest.mark.parametrize("scheduler", ["Default", "Euler a", "DPM++ 2M Karras"])
def test_regenerating_from_our_pngs_parameters_gives_the_same_pixels(bundled_manager, one_torch_thread,
                                                                     tmp_path, scheduler):
    first = bundled_manager.generate(GenerationRequest(
        prompt="a large yellow triangle on a purple background", negative_prompt="red",
        num_inference_steps=8, guidance_scale=5.5, scheduler=scheduler, seed=1234))
    [path] = OutputWriter(tmp_path).write(first)

    with Image.open(path) as png:
        fields, notes = metadata.request_fields(metadata.parse_parameters(metadata.read_parameters(png)))
    assert notes == []
    again = bundled_manager.generate(GenerationRequest(**fields))

    assert again.seeds == [1234] and again.request.negative_prompt == "red"
    np.testing.assert_array_equal(np.asarray(again.images[0]), np.asarray(first.images[0]))
    with Image.open(path) as png:  # and the PNG holds exactly those pixels
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), np.asarray(first.images[0]))


def test_the_png_info_endpoint_reads_our_png(app_server, tmp_path):
    result = a_result(negative_prompt="green", scheduler="Euler a", seed=42)
    path = png_with(tmp_path / "ours.png", metadata.format_parameters(result, 42))
    client = Client(app_server[0], verbose=False)
    text, table, notes = client.predict(picture=handle_file(path), api_name="/png_info")
    assert text.splitlines()[0] == "a red circle"
    rows = dict(map(tuple, table["data"]))
    assert rows["Prompt"] == "a red circle" and rows["Negative prompt"] == "green"
    assert rows["Sampler"] == "Euler a" and rows["Seed"] == "42" and rows["Size"] == "64x64"
    assert notes == ""
