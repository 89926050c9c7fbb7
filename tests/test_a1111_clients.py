"""The A1111 API (`--api`, /sdapi/v1) driven by the clients people use: the webuiapi package, and
raw HTTP as Open WebUI and SillyTavern send it; auth, bad values, and API and UI clients at once.

The server is conftest's `api_server` (the bundled model, a manager of its own). Waits are on the
server's own state (its progress answer), bounded by RUN_SECONDS, never a guessed sleep.
"""
from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import threading
import time

import numpy as np
import pytest
import requests
import webuiapi
from gradio_client import Client
from PIL import Image

from studio import metadata
from studio.config import DEFAULT_MODEL, Settings
from tests.conftest import free_port, serve

RUN_SECONDS = 300  # a ceiling for a run on a loaded 2-core machine, not a measure of speed
PROMPT = "a large red circle on a blue background"
ROUTES_GET = ["progress", "samplers", "schedulers", "sd-models", "options", "upscalers", "latent-upscale-modes",
              "sd-vae", "scripts", "loras"]
ROUTES_POST = ["txt2img", "img2img", "interrupt", "options", "png-info"]


def sdapi(api_server) -> str:
    return api_server[0] + "sdapi/v1/"


def pixels(picture) -> np.ndarray:
    if isinstance(picture, str):
        picture = Image.open(io.BytesIO(base64.b64decode(picture)))
    return np.asarray(picture.convert("RGB"))


def client(api_server) -> webuiapi.WebUIApi:
    host, port = api_server[0].split("//")[1].rstrip("/").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port))


def wait_for(condition, what: str):
    """Poll `condition()` until it gives something truthy; fail after RUN_SECONDS."""
    deadline = time.monotonic() + RUN_SECONDS
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def in_background(function, *args, **kwargs) -> concurrent.futures.Future:
    return concurrent.futures.ThreadPoolExecutor(1).submit(function, *args, **kwargs)


@pytest.fixture(scope="module")
def warm(api_server):
    """One run first: the fast live preview (current_image) is fitted on a model's first run."""
    requests.post(sdapi(api_server) + "txt2img", json={"prompt": PROMPT, "steps": 4, "seed": 1},
                  timeout=RUN_SECONDS).raise_for_status()
    return api_server


# ----- webuiapi ------------------------------------------------------------------------------
def test_webuiapi_txt2img_gives_the_picture_its_seed_and_infotext(warm):
    result = client(warm).txt2img(prompt=PROMPT, seed=12, steps=8, width=64, height=64, sampler_name="Euler a")
    assert len(result.images) == 1 and result.image.size == (64, 64)
    assert result.info["seed"] == 12 and result.info["all_seeds"] == [12]
    assert "Seed: 12" in result.info["infotexts"][0] and "Sampler: Euler a" in result.info["infotexts"][0]
    assert metadata.read_parameters(result.image).startswith(PROMPT)  # the PNG carries its infotext
    drawn = pixels(result.image).astype(int)
    red_share = ((drawn[..., 0] - drawn[..., 2]) > 80).mean()
    assert red_share > 0.03 and drawn[2, 2, 2] > drawn[2, 2, 0] + 80  # the bundled model drew the prompt


def test_webuiapi_img2img_keeps_the_picture_at_low_strength(warm):
    start = Image.new("RGB", (64, 64), (240, 220, 20))
    result = client(warm).img2img(images=[start], prompt="a small blue square", denoising_strength=0.3,
                                  steps=20, seed=3, width=64, height=64)
    assert result.image.size == (64, 64) and result.info["denoising_strength"] == 0.3
    assert np.abs(pixels(result.image).astype(int) - pixels(start)).mean() < 40


def test_webuiapi_inpaints_with_a_mask_and_keeps_the_rest(warm):
    start = Image.new("RGB", (64, 64), (20, 40, 230))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = client(warm).img2img(images=[start], mask_image=mask, inpainting_fill=1, mask_blur=0,
                                  prompt="a large yellow square in the center on a blue background",
                                  denoising_strength=1.0, steps=20, seed=2, width=64, height=64)
    made, inside = pixels(result.image).astype(int), np.asarray(mask) > 0
    assert np.abs(made - pixels(start))[~inside].max() == 0
    assert (made[inside][:, 0] > 150).mean() > 0.3  # yellow painted in the mask
    assert "Masked content: original" in result.info["infotexts"][0]


def test_webuiapi_reads_progress_with_a_current_image_during_a_run(warm):
    api = client(warm)
    run = in_background(api.txt2img, prompt=PROMPT, steps=150, seed=4, width=64, height=64)
    seen = wait_for(lambda: run.done() or (lambda p: p if p["current_image"] else None)(api.get_progress()),
                    "progress with a current image")
    assert seen is not True, "the run ended before progress showed its picture"
    assert 0 < seen["progress"] < 1 and seen["state"]["sampling_steps"] == 150
    assert 1 <= seen["state"]["sampling_step"] <= 150 and seen["state"]["job_count"] == 1
    assert Image.open(io.BytesIO(base64.b64decode(seen["current_image"]))).size == (64, 64)
    skipped = api.session.get(api.baseurl + "/progress", params={"skip_current_image": "true"}).json()
    assert skipped["current_image"] is None
    assert run.result(RUN_SECONDS).info["all_seeds"] == [4]


def test_webuiapi_interrupt_stops_the_run_within_one_step_and_the_next_works(warm):
    api = client(warm)
    run = in_background(api.txt2img, prompt=PROMPT, steps=150, seed=5, width=64, height=64)
    wait_for(lambda: api.get_progress()["state"]["sampling_step"] >= 2, "the run to start")
    assert api.interrupt() == {}
    step_after = api.get_progress()["state"]["sampling_step"]
    result = run.result(RUN_SECONDS)
    stopped = result.info["stopped"]
    done = int(stopped.split("step ")[1].split(" of")[0])
    assert stopped.endswith("of 150.") and done <= step_after + 1 and result.images == []
    assert client(warm).txt2img(prompt=PROMPT, steps=4, seed=6, width=64, height=64).info["all_seeds"] == [6]


def test_webuiapi_png_info_reads_the_parameters_back(warm):
    api = client(warm)
    picture = api.txt2img(prompt=PROMPT, seed=21, steps=6, width=64, height=64).image
    result = api.png_info(picture)
    assert result.info.startswith(PROMPT) and "Seed: 21" in result.info
    assert result.parameters["Seed"] == "21" and result.parameters["Steps"] == "6"


def test_webuiapi_lists_models_and_switches_through_options(warm, tiny_dirs):
    api, other = client(warm), str(tiny_dirs["sd1"])
    manager = warm[2]
    assert api.util_get_model_names() == [f"{DEFAULT_MODEL} [{manager.loaded.hash}]"]
    try:
        api.set_options({"sd_model_checkpoint": other})
        assert manager.info.name == other and api.util_get_current_model().startswith(other + " [")
        assert api.txt2img(prompt="a cat", steps=2, seed=1, width=64, height=64).image.size == (64, 64)
        failed = api.set_options({"sd_model_checkpoint": "/no/such/model"})
        assert failed["detail"][0]["loc"] == ["body", "sd_model_checkpoint"]
        assert manager.info.name == other  # a failed switch keeps the current model
    finally:
        api.util_set_model("tiny-shapes")  # webuiapi lower-cases it and picks the closest title
    assert manager.info.name == DEFAULT_MODEL


def test_webuiapi_waits_for_ready_until_every_api_job_has_ended(warm):
    api = client(warm)
    run = in_background(api.txt2img, prompt=PROMPT, steps=60, seed=8, n_iter=2, width=64, height=64)
    wait_for(lambda: api.get_progress()["state"]["job_count"] == 2, "the job to be counted")
    api.util_wait_for_ready(check_interval=0.05)
    assert run.done() or run.result(5)  # ready means its answer is on its way
    assert run.result(RUN_SECONDS).info["all_seeds"] == [8, 9]
    assert api.get_progress()["state"]["job_count"] == 0


# ----- raw HTTP, as the apps send it ---------------------------------------------------------
def test_open_webui_reads_options_and_models_posts_them_back_and_generates(warm):
    base = sdapi(warm)
    options = requests.get(base + "options").json()
    models = requests.get(base + "sd-models").json()
    assert options["sd_model_checkpoint"] in [m["title"] for m in models]
    assert requests.post(base + "options", json=options).json() is None  # the whole dict, model unchanged
    answer = requests.post(base + "txt2img", json={"prompt": PROMPT, "batch_size": 2, "width": 64, "height": 64,
                                                   "steps": 8}, timeout=RUN_SECONDS)
    assert answer.status_code == 200
    images = answer.json()["images"]
    assert len(images) == 2 and all(pixels(i).shape == (64, 64, 3) for i in images)
    assert not images[0].startswith("data:")  # raw base64, as A1111 answers


def test_sillytavern_lists_what_it_needs_polls_progress_and_interrupts_on_disconnect(warm):
    base = sdapi(warm)
    for route in ("samplers", "schedulers", "upscalers", "latent-upscale-modes", "sd-vae", "sd-models"):
        answer = requests.get(base + route)
        assert answer.status_code == 200 and isinstance(answer.json(), list), route
    names = [s["name"] for s in requests.get(base + "samplers").json()]
    assert {"Euler a", "DPM++ 2M", "DPM++ 2M Karras"} <= set(names)
    assert "forge_preset" not in requests.get(base + "options").json()
    body = {"prompt": PROMPT, "negative_prompt": "", "sampler_name": "DPM++ 2M", "scheduler": "Karras",
            "steps": 150, "cfg_scale": 7, "width": 64, "height": 64, "seed": 9, "restore_faces": False,
            "enable_hr": False, "hr_upscaler": "Latent", "denoising_strength": 0.7, "override_settings": {},
            "override_settings_restore_afterwards": True, "url": "http://127.0.0.1:7860", "auth": ""}
    run = in_background(requests.post, base + "txt2img", json=body, timeout=RUN_SECONDS)
    wait_for(lambda: requests.get(base + "progress").json()["state"]["sampling_step"] >= 1, "the run to start")
    assert requests.post(base + "interrupt").json() == {}  # what it sends when its user aborts
    assert json.loads(run.result(RUN_SECONDS).json()["info"])["stopped"].startswith("Stopped at step")
    body |= {"steps": 8}
    answer = requests.post(base + "txt2img", json=body, timeout=RUN_SECONDS).json()
    assert "Sampler: DPM++ 2M Karras" in json.loads(answer["info"])["infotexts"][0]


def test_empty_lists_and_scripts_answer_valid_json(warm):
    base = sdapi(warm)
    for route in ("upscalers", "latent-upscale-modes", "sd-vae"):
        assert requests.get(base + route).json() == []
    assert requests.get(base + "scripts").json() == {"txt2img": [], "img2img": []}


def test_an_empty_basic_header_without_auth_is_ignored(warm):
    answer = requests.get(sdapi(warm) + "options", headers={"Authorization": "Basic "})
    assert answer.status_code == 200


@pytest.mark.parametrize("body, field", [
    ({"steps": -1}, "steps"), ({"width": 4096}, "width"), ({"cfg_scale": None, "seed": "x"}, "seed"),
    ({"sampler_name": "Euler z"}, "sampler_name"), ({"batch_size": 0}, "batch_size"),
])
def test_a_bad_value_is_a_422_naming_it_and_the_server_keeps_serving(warm, body, field):
    base = sdapi(warm)
    answer = requests.post(base + "txt2img", json={"prompt": PROMPT, **body})
    assert answer.status_code == 422
    detail, = answer.json()["detail"]
    assert detail["loc"] == ["body", field] and detail["msg"].startswith(f"{field}=")
    after = requests.post(base + "txt2img", json={"prompt": PROMPT, "steps": 2, "seed": 1}, timeout=RUN_SECONDS)
    assert after.status_code == 200


def test_a_body_that_is_not_strict_json_is_a_422(warm):
    answer = requests.post(sdapi(warm) + "txt2img", data='{"steps": NaN}', headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and "NaN" in answer.json()["detail"]


# ----- the same pixels, queue and history as the UI -------------------------------------------
def test_txt2img_through_sdapi_gives_the_pixels_of_the_studios_own_txt2img(warm):
    values = {"prompt": "a small yellow triangle on a green background", "seed": 31, "width": 64, "height": 64}
    api = requests.post(sdapi(warm) + "txt2img", json={**values, "steps": 12, "cfg_scale": 6.5,
                                                       "sampler_name": "DPM++ 2M"}, timeout=RUN_SECONDS).json()
    gradio = Client(warm[0], verbose=False)
    _, gallery, _ = gradio.predict(**values, num_inference_steps=12, guidance_scale=6.5, scheduler="DPM++ 2M",
                                   api_name="/txt2img")
    assert np.array_equal(pixels(api["images"][0]), pixels(Image.open(gallery[0]["image"])))


def test_a_prompts_lora_tag_through_sdapi_is_the_ui_clients_picked_lora(warm):
    """GET loras lists the bundled LoRA by name (its path inside --lora-dir, never the server's);
    `<lora:name:w>` in an A1111 prompt gives the pixels of the Gradio API's `loras` field."""
    listed = requests.get(sdapi(warm) + "loras").json()
    assert listed == [{"name": "shift-left", "alias": "shift-left", "path": "shift-left.safetensors", "metadata": {}}]
    values = {"prompt": "a large red circle at the right on a blue background", "seed": 5, "steps": 10}
    api = requests.post(sdapi(warm) + "txt2img", json={**values, "prompt": values["prompt"] + " <lora:shift-left:0.8>"},
                        timeout=RUN_SECONDS).json()
    assert 'Lora hashes: "shift-left: ' in json.loads(api["info"])["infotexts"][0]
    gradio = Client(warm[0], verbose=False)
    _, gallery, _ = gradio.predict(prompt=values["prompt"], seed=5, num_inference_steps=10, loras="shift-left:0.8",
                                   api_name="/txt2img")
    assert np.array_equal(pixels(api["images"][0]), pixels(Image.open(gallery[0]["image"])))
    plain = requests.post(sdapi(warm) + "txt2img", json=values, timeout=RUN_SECONDS).json()
    assert not np.array_equal(pixels(plain["images"][0]), pixels(api["images"][0]))


def test_three_api_clients_and_a_ui_client_at_once_each_get_their_own_picture(warm):
    """No errors, no cross-talk (each picture equals its request run alone), and the manager never
    ran two at once."""
    base, manager = sdapi(warm), warm[2]
    asks = [{"prompt": f"a large {c} square on a {b} background", "seed": s, "steps": 10}
            for c, b, s in (("red", "white", 41), ("green", "black", 42), ("blue", "yellow", 43))]
    ui_ask = {"prompt": "a small purple circle on an orange background", "seed": 44, "num_inference_steps": 10}

    def api_run(ask):
        answer = requests.post(base + "txt2img", json=ask, timeout=RUN_SECONDS)
        answer.raise_for_status()
        return pixels(answer.json()["images"][0]), json.loads(answer.json()["info"])["infotexts"][0]

    def ui_run():
        _, gallery, _ = Client(warm[0], verbose=False).predict(**ui_ask, api_name="/txt2img")
        return pixels(Image.open(gallery[0]["image"]))

    alone = [api_run(ask) for ask in asks] + [ui_run()]
    running, most = [0], [0]
    original, lock = manager._run, threading.Lock()

    def counted(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    manager._run = counted
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            together = [pool.submit(api_run, ask) for ask in asks] + [pool.submit(ui_run)]
            together = [f.result(RUN_SECONDS) for f in together]
    finally:
        del manager._run
    for ask, (picture, infotext), (alone_picture, _) in zip(asks, together[:3], alone[:3]):
        assert infotext.startswith(ask["prompt"]) and f"Seed: {ask['seed']}" in infotext
        assert np.array_equal(picture, alone_picture)
    assert np.array_equal(together[3], alone[3])
    assert most[0] == 1


def test_api_runs_join_a_history_session_of_their_own(warm):
    api = warm[3]
    before = api.runs()
    requests.post(sdapi(warm) + "txt2img", json={"prompt": PROMPT, "steps": 3, "seed": 77, "n_iter": 2},
                  timeout=RUN_SECONDS).raise_for_status()
    history = api.runs()
    assert history.next_number == before.next_number + 2  # one entry per batch of n_iter
    assert [e.results[0].seeds for e in history.entries[-2:]] == [[77], [78]]
    assert all(e.results[0].trajectory is not None for e in history.entries[-2:])  # for the viewer


# ----- auth ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_api_server(bundled_manager, tmp_path_factory):
    settings = Settings(model=DEFAULT_MODEL, port=free_port(), api=True, auth="ann:s3cret-pass",
                        outputs=str(tmp_path_factory.mktemp("api-auth")))
    with serve(bundled_manager, settings) as url:
        yield url + "sdapi/v1/"


def test_with_auth_every_route_needs_basic_auth_and_progress_never_leaks(auth_api_server):
    for wrong in (None, ("ann", "wrong"), ("bob", "s3cret-pass")):
        for route in ROUTES_GET:
            answer = requests.get(auth_api_server + route, auth=wrong)
            assert answer.status_code == 401 and "current_image" not in answer.text, route
            assert answer.headers["WWW-Authenticate"].startswith("Basic")
        for route in ROUTES_POST:
            assert requests.post(auth_api_server + route, json={}, auth=wrong).status_code == 401, route


def test_with_auth_webuiapi_signs_in_and_generates(auth_api_server):
    host, port = auth_api_server.split("//")[1].split("/")[0].split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), username="ann", password="s3cret-pass")
    assert api.txt2img(prompt=PROMPT, steps=3, seed=2, width=64, height=64).info["all_seeds"] == [2]
    assert api.get_progress()["state"]["job_count"] == 0


def test_without_api_there_is_no_sdapi(app_server):
    assert requests.get(app_server[0] + "sdapi/v1/options").status_code == 404
