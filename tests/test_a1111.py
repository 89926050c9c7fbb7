"""AUTOMATIC1111's request bodies in the studio's terms (studio.a1111), without a server: field
names, defaults, samplers, pictures, bad values named as the client sent them, the model catalog,
the job board and the API's history session."""
from __future__ import annotations

import base64
import io
import json
import threading

import pytest
from PIL import Image

from studio import schedulers
from studio.a1111 import catalog, payloads
from studio.a1111.jobs import Busy, JobBoard
from studio.config import DEFAULT_MODEL, Settings
from studio.history import SessionHistory
from studio.outputs import OutputWriter


def png_base64(color=(200, 30, 30), size=(64, 64)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a1111_names_map_to_the_request_fields_and_unknown_keys_are_ignored():
    body = {"prompt": "a red circle", "negative_prompt": "green", "steps": 12, "cfg_scale": 5,
            "width": 64, "height": 96, "seed": 7, "subseed": 9, "subseed_strength": 0.25, "batch_size": 2,
            "sampler_name": "Euler a", "n_iter": 3, "restore_faces": False, "alwayson_scripts": {}, "url": "x"}
    plan = payloads.plan(body, img2img=False)
    assert len(plan) == 3  # n_iter batches, with consecutive seeds across them (A1111's)
    first = plan[0]
    assert (first.prompt, first.negative_prompt, first.num_inference_steps, first.guidance_scale) == \
        ("a red circle", "green", 12, 5.0)
    assert (first.width, first.height, first.num_images_per_prompt, first.scheduler) == (64, 96, 2, "Euler a")
    assert (first.subseed, first.subseed_strength) == (9, 0.25)
    assert [r.seed for r in plan] == [7, 9, 11]


def test_fields_left_out_or_null_take_the_studios_defaults_not_a1111s():
    request, = payloads.plan({"prompt": "a blue square", "steps": None, "width": None}, img2img=False)
    assert (request.num_inference_steps, request.guidance_scale, request.width, request.scheduler) == \
        (20, 7.5, None, schedulers.DEFAULT)  # the model's native size and its own sampler


@pytest.mark.parametrize("body, expected", [
    ({"sampler_name": "DPM++ 2M", "scheduler": "Karras"}, "DPM++ 2M Karras"),
    ({"sampler_name": "DPM++ 2M", "scheduler": "automatic"}, "DPM++ 2M"),
    ({"sampler_name": "DPM++ 2M Karras", "scheduler": "karras"}, "DPM++ 2M Karras"),
    ({"sampler_index": "k_euler_a"}, "Euler a"),
    ({"sampler_name": "euler a", "sampler_index": "Euler"}, "Euler a"),
    ({"sampler_name": "", "sampler_index": "UniPC"}, "UniPC"),
])
def test_samplers_are_read_by_name_alias_and_schedule(body, expected):
    assert payloads.plan(body, img2img=False)[0].scheduler == expected


@pytest.mark.parametrize("body, field, value", [
    ({"steps": 0}, "steps", 0),
    ({"steps": 3.5}, "steps", 3.5),
    ({"cfg_scale": "high"}, "cfg_scale", "high"),
    ({"width": 65}, "width", 65),
    ({"batch_size": 9}, "batch_size", 9),
    ({"seed": -2}, "seed", -2),
    ({"n_iter": 0}, "n_iter", 0),
    ({"sampler_name": "Euler z"}, "sampler_name", "Euler z"),
    ({"sampler_name": "Euler", "scheduler": "Karras"}, "scheduler", "Karras"),
    ({"scheduler": "exponential"}, "scheduler", "exponential"),
    ({"prompt": 5}, "prompt", 5),
])
def test_a_bad_value_is_refused_naming_the_field_as_the_client_sent_it(body, field, value):
    with pytest.raises(payloads.FieldError) as caught:
        payloads.plan(body, img2img=False)
    detail, = caught.value.detail()
    assert detail["loc"] == ["body", field] and detail["input"] == value
    assert detail["msg"].startswith(f"{field}={value!r}")


def test_img2img_takes_its_picture_with_or_without_a_data_url_prefix():
    raw = png_base64()
    for sent in (raw, "data:image/png;base64," + raw):
        request, = payloads.plan({"init_images": [sent], "denoising_strength": 0.5}, img2img=True)
        assert request.image.size == (64, 64) and request.image.getpixel((3, 3)) == (200, 30, 30)
        assert request.strength == 0.5


def test_an_img2img_mask_is_inpainting_with_a1111s_options():
    body = {"init_images": [png_base64()], "mask": png_base64((255, 255, 255)), "inpainting_fill": 2,
            "inpaint_full_res": True, "mask_blur": 8, "inpainting_mask_invert": 1}
    request, = payloads.plan(body, img2img=True)
    assert (request.masked_content, request.inpaint_only_masked, request.mask_blur) == ("latent noise", True, 8)
    assert request.mask_image.getextrema() == (0, 0)  # white, inverted
    assert payloads.plan({**body, "inpainting_fill": None}, img2img=True)[0].masked_content == "original"
    assert not payloads.plan({"mask": png_base64()}, img2img=False)[0].is_inpaint  # txt2img has no mask


@pytest.mark.parametrize("body, field", [
    ({}, "init_images"),
    ({"init_images": []}, "init_images"),
    ({"init_images": ["not base64!"]}, "init_images[0]"),
    ({"init_images": [base64.b64encode(b"not a picture").decode()]}, "init_images[0]"),
    ({"init_images": ["/etc/passwd"]}, "init_images[0]"),  # never taken for a path
    ({"init_images": [png_base64()], "denoising_strength": 0.01, "steps": 20}, "denoising_strength"),
    ({"init_images": [png_base64()], "mask": png_base64(), "inpainting_fill": 0}, "inpainting_fill"),
    ({"init_images": [png_base64()], "mask": "not a picture"}, "mask"),
])
def test_img2img_refuses_a_missing_or_bad_picture_by_name(body, field):
    with pytest.raises(payloads.FieldError) as caught:
        payloads.plan(body, img2img=True)
    assert caught.value.field == field
    assert str(caught.value).startswith(field)


def test_the_info_holds_the_seeds_and_an_infotext_per_picture(bundled_manager):
    plan = payloads.plan({"prompt": "a large green triangle", "steps": 2, "seed": 5, "batch_size": 2}, img2img=False)
    result = bundled_manager.generate(plan[0])
    answer = payloads.response({"prompt": "a large green triangle", "steps": 2}, [result], [b"png1", b"png2"], False)
    info = json.loads(answer["info"])
    assert info["seed"] == 5 and info["all_seeds"] == [5, 6]
    assert [t.splitlines()[0] for t in info["infotexts"]] == ["a large green triangle"] * 2
    assert "Seed: 6" in info["infotexts"][1] and info["width"] == info["height"] == 64
    assert answer["parameters"] == {"prompt": "a large green triangle", "steps": 2}
    assert base64.b64decode(answer["images"][1]) == b"png2"


def test_the_catalog_titles_the_loaded_model_with_its_hash_and_finds_it_in_any_case(bundled_manager):
    settings = Settings(model=DEFAULT_MODEL)
    entry, = catalog.sd_models(bundled_manager, settings)
    assert entry["title"] == f"{DEFAULT_MODEL} [{bundled_manager.loaded.hash}]"
    assert catalog.options(bundled_manager)["sd_model_checkpoint"] == entry["title"]
    for name in (entry["title"].lower(), "TINY-SHAPES", DEFAULT_MODEL):
        assert catalog.checkpoint_name(name, bundled_manager, settings) == DEFAULT_MODEL


def test_a_public_server_refuses_a_model_it_does_not_offer_and_keeps_its_own(bundled_manager, tiny_dirs):
    settings = Settings(model=DEFAULT_MODEL, host="0.0.0.0")
    with pytest.raises(payloads.FieldError) as caught:
        catalog.switch(str(tiny_dirs["sd1"]), bundled_manager, settings)
    assert caught.value.field == "sd_model_checkpoint" and "not offered" in str(caught.value)
    assert bundled_manager.info.name == DEFAULT_MODEL


def test_the_job_board_refuses_past_its_limit_and_reports_idle(bundled_manager, tmp_path):
    board = JobBoard(bundled_manager, OutputWriter(tmp_path), max_jobs=1)
    gate, entered = threading.Event(), threading.Event()
    original = board._stream

    def held(job, request):  # the first job waits here, so it counts as queued
        entered.set()
        gate.wait(60)
        return original(job, request)

    board._stream = held
    plan = payloads.plan({"prompt": "a red circle", "steps": 2, "seed": 1}, img2img=False)
    first = threading.Thread(target=board.run, args=(plan,))
    first.start()
    assert entered.wait(60)
    assert board.progress()["state"]["job_count"] == 1
    with pytest.raises(Busy, match="at most 1"):
        board.run(plan)
    gate.set()
    first.join(60)
    idle = board.progress()
    assert (idle["progress"], idle["state"]["job_count"], idle["current_image"]) == (0.0, 0, None)
    assert len(board.history) == 1 and board.history.entries[0].results[0].seeds == [1]


def test_a_session_takes_in_another_sessions_new_entries_once(bundled_manager):
    request = payloads.plan({"prompt": "a red circle", "steps": 1, "seed": 1}, img2img=False)[0]
    result = bundled_manager.generate(request)
    api = SessionHistory().add_run(result, ["a.png"]).add_run(result, ["b.png"])
    mine = SessionHistory().add_run(result, ["mine.png"])
    mine, added = mine.take_from(api, "A1111 API")
    assert added == 2 and [e.origin for e in mine.entries] == ["", "A1111 API #1", "A1111 API #2"]
    assert [e.number for e in mine.entries] == [1, 2, 3]
    mine, added = mine.take_from(api, "A1111 API")
    assert added == 0 and len(mine) == 3
    mine, added = mine.take_from(api.add_run(result, ["c.png"]), "A1111 API")
    assert added == 1 and mine.entries[-1].files == (("c.png",),)
