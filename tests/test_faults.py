"""Faults inside a run: an out-of-memory error in a denoising step, and a cancel arriving mid-step.

test_manager.py covers the rest of the issue's faults (cancel from a step callback, NaN pixels,
a failed model load, a switch during a run). Here the UNet itself is instrumented with forward
hooks: one raises the out-of-memory error at its third call, one counts the calls that start
after the run's Stop flag was set. Then the same through the app with gradio_client.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client

from studio.errors import GenerationCancelled, StudioError
from studio.requests import GenerationRequest
from tests import tiny_pipelines as tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REQUEST = GenerationRequest(prompt=tiny.PROMPT, num_inference_steps=6, seed=3, width=64, height=64)
OOM_ERRORS = {
    "torch.OutOfMemoryError": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "RuntimeError naming it (MPS, older CUDA)": lambda: RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"),
}


class UNetProbe:
    """Forward hooks on a UNet: counts its calls, raises `error` at call `fail_at`, and records
    the calls that start after `cancel_flag()` is set and the inputs of every call (weakly)."""

    def __init__(self, unet, fail_at: int | None = None, error=None, on_call=None):
        self.calls, self.calls_after_cancel, self.inputs = 0, 0, []
        self.fail_at, self.error, self.on_call = fail_at, error, on_call
        self.cancel_flag = None
        self.started = threading.Event()
        self.handle = unet.register_forward_pre_hook(self.before, with_kwargs=True)

    def before(self, module, args, kwargs):
        self.calls += 1
        self.started.set()
        sample = args[0] if args else kwargs["sample"]
        self.inputs.append(weakref.ref(sample))
        if self.cancel_flag is not None and self.cancel_flag():
            self.calls_after_cancel += 1
        if self.on_call is not None:
            self.on_call(self.calls)
        if self.calls == self.fail_at:
            raise self.error()

    def remove(self) -> None:
        self.handle.remove()


@contextlib.contextmanager
def probed(manager, **options):
    probe = UNetProbe(manager.loaded.txt2img.unet, **options)
    try:
        yield probe
    finally:
        probe.remove()


@pytest.fixture(scope="module")
def sd1(tiny_dirs, tmp_path_factory):
    from studio.config import Settings
    from studio.manager import PipelineManager

    manager = PipelineManager(Settings(model=str(tiny_dirs["sd1"]), outputs=str(tmp_path_factory.mktemp("out"))))
    manager.load()
    return manager


# ---------------------------------------------------------------- out of memory in a step

@pytest.mark.parametrize("kind", OOM_ERRORS)
def test_out_of_memory_in_a_step_is_a_clear_studio_error(sd1, kind):
    with probed(sd1, fail_at=3, error=OOM_ERRORS[kind]) as probe:
        with pytest.raises(StudioError) as caught:
            sd1.generate(REQUEST)
    assert probe.calls == 3  # it failed in the third step, not before
    message = str(caught.value)
    assert message.startswith("Out of memory at 64x64 with num_images_per_prompt=1")
    assert "memory was released" in message and "--attention-slicing max" in message


def test_out_of_memory_at_the_native_size_names_the_size(sd1):
    with probed(sd1, fail_at=3, error=OOM_ERRORS["torch.OutOfMemoryError"]):
        with pytest.raises(StudioError) as caught:
            sd1.generate(GenerationRequest(prompt=tiny.PROMPT, num_inference_steps=6, seed=3))
    assert str(caught.value).startswith("Out of memory at 64x64")


def test_out_of_memory_runs_the_managers_release_path(sd1, monkeypatch):
    released = []
    monkeypatch.setattr(sd1, "_release_memory", lambda: released.append(True))
    with probed(sd1, fail_at=3, error=OOM_ERRORS["torch.OutOfMemoryError"]):
        with pytest.raises(StudioError, match="Out of memory"):
            sd1.generate(REQUEST)
    assert released == [True]
    assert sd1._running_cancel is None  # the run's Stop flag is gone with it


def test_a_programming_error_in_a_step_is_not_called_out_of_memory(sd1):
    with probed(sd1, fail_at=2, error=lambda: RuntimeError("mat1 and mat2 shapes cannot be multiplied")):
        with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as caught:
            sd1.generate(REQUEST)
    assert not isinstance(caught.value, StudioError)


def test_out_of_memory_frees_the_runs_tensors_before_the_error_reaches_the_caller(sd1):
    with probed(sd1, fail_at=3, error=OOM_ERRORS["torch.OutOfMemoryError"]) as probe:
        try:
            sd1.generate(REQUEST)
        except StudioError:
            alive = [ref for ref in probe.inputs if ref() is not None]
    # the latents of the failed step (and the steps before) must be gone, with no gc by the caller
    assert probe.calls == 3 and alive == []


def test_the_run_after_an_out_of_memory_error_succeeds_with_the_same_pixels(sd1):
    with probed(sd1) as probe:
        before = np.asarray(sd1.generate(REQUEST).images[0])
    calls_per_run = probe.calls  # PLMS, the tiny model's default, warms up with one extra call
    with probed(sd1, fail_at=3, error=OOM_ERRORS["torch.OutOfMemoryError"]):
        with pytest.raises(StudioError):
            sd1.generate(REQUEST)
    with probed(sd1) as probe:
        after = sd1.generate(REQUEST)
    assert probe.calls == calls_per_run
    np.testing.assert_array_equal(np.asarray(after.images[0]), before)


# ---------------------------------------------------------------- cancel mid-step

def cancel_during_call(manager, number: int):
    """An on_call hook: a Stop arriving while the UNet runs its `number`th call."""
    def on_call(calls: int) -> None:
        if calls == number:
            manager.cancel()
    return on_call


@pytest.mark.parametrize("scheduler", ["Default", "Heun"])
def test_a_cancel_mid_step_lets_that_step_finish_and_starts_no_other(sd1, scheduler):
    request = GenerationRequest(prompt=tiny.PROMPT, num_inference_steps=20, seed=1, scheduler=scheduler)
    with probed(sd1, on_call=cancel_during_call(sd1, 4)) as probe:
        probe.cancel_flag = lambda: sd1._running_cancel is not None and sd1._running_cancel.is_set()
        with pytest.raises(GenerationCancelled, match=r"Stopped at step \d+ of 20"):
            sd1.generate(request)
    # Heun calls the UNet twice a step: its 4th call is the second half of step 2, so it ends there too
    assert probe.calls == 4
    assert probe.calls_after_cancel == 0


def test_a_cancel_from_another_thread_stops_within_one_step_and_the_next_run_is_fine(sd1):
    request = GenerationRequest(prompt=tiny.PROMPT, num_inference_steps=50, seed=2)
    expected = np.asarray(sd1.generate(GenerationRequest(prompt=tiny.PROMPT, num_inference_steps=3, seed=2)).images[0])
    failure: list[BaseException] = []
    with probed(sd1) as probe:
        def run() -> None:
            try:
                sd1.generate(request)
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                failure.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        assert probe.started.wait(60)
        sd1.cancel()
        calls_at_cancel = probe.calls
        worker.join(120)
    assert not worker.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], GenerationCancelled)
    assert probe.calls - calls_at_cancel <= 1  # at most the step already under way
    again = sd1.generate(GenerationRequest(prompt=tiny.PROMPT, num_inference_steps=3, seed=2))
    np.testing.assert_array_equal(np.asarray(again.images[0]), expected)


# ---------------------------------------------------------------- through the app

def pictures(gallery) -> list:
    """The gallery's pictures, whether the API returns them bare or in an update."""
    return gallery["value"] if isinstance(gallery, dict) else gallery


TXT2IMG = dict(prompt="a small red circle", negative_prompt="", num_inference_steps=6, guidance_scale=7.5,
               width=64, height=64, scheduler="Default", num_images_per_prompt=1, seed=5, preview="none")


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server[0], verbose=False)


def test_out_of_memory_through_the_app_is_a_clear_message_and_the_next_request_works(client, bundled_manager):
    with probed(bundled_manager, fail_at=3, error=OOM_ERRORS["torch.OutOfMemoryError"]):
        with pytest.raises(Exception, match="Out of memory at 64x64") as caught:
            client.predict(**TXT2IMG, api_name="/txt2img")
    assert "Traceback" not in str(caught.value)
    _, gallery, info = client.predict(**TXT2IMG, api_name="/txt2img")
    assert len(pictures(gallery)) == 1 and "6 steps" in info


@pytest.fixture
def cancel_received(monkeypatch) -> threading.Event:
    """Set when the server's /cancel route receives a cancel (before it acts on it)."""
    import gradio.routes

    received, original = threading.Event(), gradio.routes.cancel_tasks

    async def cancel_tasks(*args, **kwargs):
        received.set()
        return await original(*args, **kwargs)

    monkeypatch.setattr(gradio.routes, "cancel_tasks", cancel_tasks)
    return received


def submit_and_cancel(client, manager, probe, received: threading.Event, at_call: int):
    """Start a 150-step run and cancel it while the UNet runs call `at_call`, which is held until
    the server has received the cancel (so the HTTP round trip costs no steps). Returns the UNet
    calls started before the cancel arrived, and after it."""
    probe.cancel_flag = lambda: (manager._running_cancel or threading.Event()).is_set()
    reached = threading.Event()

    def hold_at(calls: int) -> None:
        if calls == at_call:
            reached.set()
            received.wait(60)

    probe.on_call = hold_at
    job = client.submit(**{**TXT2IMG, "num_inference_steps": 150}, api_name="/txt2img")
    assert reached.wait(120)
    for _ in range(600):  # the server may start the run before the client has the event's id
        if job.communicator.event_id is not None:
            break
        threading.Event().wait(0.05)
    job.cancel()
    with contextlib.suppress(Exception):
        job.result(timeout=120)
    with manager._lock:  # a run still going holds it; taken once the run has ended
        return at_call, probe.calls - at_call


def test_cancel_through_the_app_stops_within_one_step_and_the_next_request_works(
        client, bundled_manager, cancel_received):
    with probed(bundled_manager) as probe:
        _, after = submit_and_cancel(client, bundled_manager, probe, cancel_received, at_call=4)
    healthy(client)
    # Gradio cancels the event's task; its await raises at once and sets the Stop flag, so the
    # step under way ends the run (the worker may have begun one more by then)
    assert after <= 1
    assert probe.calls_after_cancel == 0


def test_after_a_cancel_through_the_app_the_next_request_works(client, bundled_manager, cancel_received):
    with probed(bundled_manager) as probe:
        submit_and_cancel(client, bundled_manager, probe, cancel_received, at_call=4)
    assert bundled_manager._running_cancel is None
    healthy(client)


def test_cancel_through_the_app_during_the_first_step_stops_the_run(client, bundled_manager, cancel_received):
    with probed(bundled_manager) as probe:
        _, after = submit_and_cancel(client, bundled_manager, probe, cancel_received, at_call=1)
    assert after <= 1


# ---------------------------------------------------------------- bad input through the API
# check_inputs, images.prepare and models.resolve have their own matrices (test_requests.py,
# test_images.py, test_models.py); here each bad value goes through gradio_client to the running
# app, is refused with a message naming it, and a valid request right after it succeeds.

BAD_TXT2IMG = [
    ("num_inference_steps", 0, "Value 0 is less than minimum value 1"),
    ("num_inference_steps", -1, "Value -1 is less than minimum value 1"),
    ("num_inference_steps", 3.7, r"num_inference_steps=3\.7 is not allowed"),
    ("num_inference_steps", 10000, "Value 10000 is greater than maximum value 150"),
    ("width", 0, "width=0 is not allowed: expected 64 to 256 for the loaded model"),
    ("width", 500, "width=500 is not allowed"),
    ("width", 513, "width=513 is not allowed"),
    ("width", 100000, "width=100000 is not allowed: expected 64 to 256 for the loaded model"),
    ("height", 513, "height=513 is not allowed"),
    ("guidance_scale", float("nan"), "not JSON compliant"),  # the client cannot even send it
    ("guidance_scale", -1.0, r"Value -1\.0 is less than minimum value 0"),
    ("num_images_per_prompt", 0, "Value 0 is less than minimum value 1"),
    ("num_images_per_prompt", 10000, "Value 10000 is greater than maximum value 8"),
    ("seed", -2, "Value -2 is less than minimum value -1"),
    ("prompt", "x" * 1_000_000, r"prompt='x+\.\.\.' is not allowed: expected at most 4000 characters"),
    ("prompt", "a red\x00circle\x07", r"prompt=.* is not allowed: expected printable text"),
    ("negative_prompt", "\x1b[31m", r"negative_prompt=.* is not allowed: expected printable text"),
    ("scheduler", "Euler b", "Euler b is not in the list of choices"),
    ("seed", 1.5, r"seed=1\.5 is not allowed: expected a whole number"),  # ran as seed 2
    ("loras", "shift-left:9", r"loras='shift-left:9' is not allowed: expected a LoRA weight in \[-2, 2\]"),
    ("loras", "nope", r"lora='nope' is not in --lora-dir .* it has: shift-left"),
    ("prompt", "a red circle <lora:../../etc/passwd:1>", r"lora='../../etc/passwd' is not in --lora-dir"),
]
GOOD_TXT2IMG = [("prompt", ""), ("prompt", "ein rotes Quadrat ✨\nnaïve 四角"), ("prompt", " ".join(["red"] * 100))]


def healthy(client) -> None:
    _, gallery, info = client.predict(**{**TXT2IMG, "num_inference_steps": 2}, api_name="/txt2img")
    assert len(pictures(gallery)) == 1 and "2 steps" in info


@pytest.mark.parametrize(("name", "value", "message"), BAD_TXT2IMG,
                         ids=[f"{n}={str(v)[:12]!r}" for n, v, _ in BAD_TXT2IMG])
def test_bad_txt2img_value_through_the_api_is_refused_and_the_server_stays_healthy(client, name, value, message):
    with pytest.raises(Exception, match=message):
        client.predict(**{**TXT2IMG, "num_inference_steps": 2, name: value}, api_name="/txt2img")
    healthy(client)


@pytest.mark.parametrize(("name", "value"), GOOD_TXT2IMG, ids=["empty", "unicode", "100 tokens"])
def test_unusual_but_valid_prompts_through_the_api_generate(client, name, value):
    _, gallery, _ = client.predict(**{**TXT2IMG, name: value, "num_inference_steps": 2}, api_name="/txt2img")
    assert len(pictures(gallery)) == 1


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> dict:
    from PIL import Image

    from tests.test_images import BAD_FILES, bilevel_png

    folder = tmp_path_factory.mktemp("uploads")
    files = {**BAD_FILES, "bomb.png": bilevel_png(20000, 20000)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    Image.new("RGB", (64, 64), "red").save(folder / "good.png")
    return {name: str(folder / name) for name in [*files, "good.png"]}


@pytest.mark.parametrize(("strength", "message"), [
    (-0.1, r"Value -0\.1 is less than minimum value 0\.01"), (0.0, r"Value 0\.0 is less than minimum"),
    (1.5, r"Value 1\.5 is greater than maximum value 1\.0"), (0.04, r"int\(20 x 0\.04\) = 0 steps would run")])
def test_bad_strength_through_the_api_is_refused_and_the_server_stays_healthy(client, uploads, strength, message):
    from gradio_client import handle_file

    with pytest.raises(Exception, match=message):
        client.predict(**{**TXT2IMG, "num_inference_steps": 20}, image=handle_file(uploads["good.png"]),
                       strength=strength, api_name="/img2img")
    healthy(client)


@pytest.mark.parametrize("name", ["empty.png", "truncated.png", "notes.png", "drawing.svg", "bomb.png"])
def test_a_bad_upload_through_the_api_is_refused_naming_the_file_and_the_server_stays_healthy(client, uploads, name):
    """Whichever layer finds the fault (gr.Image's decode or the studio's), the message names the
    argument, the file and the problem, never Gradio's "Could not preprocess input component"."""
    from gradio_client import handle_file

    with pytest.raises(Exception, match=rf"image='[^']*{re.escape(name)}' (could not be (read|decoded) as a picture"
                                        r"|has too many pixels)") as caught:
        client.predict(**{**TXT2IMG, "num_inference_steps": 2}, image=handle_file(uploads[name]), strength=0.5,
                       api_name="/img2img")
    assert "Could not preprocess" not in str(caught.value)
    healthy(client)


# the traversal goes from wherever the tests run up to the real /etc/passwd (CI clones at another depth)
PASSWD_UP = os.path.relpath("/etc/passwd")


@pytest.mark.parametrize(("model", "message"), [
    (PASSWD_UP, re.escape(f"model={PASSWD_UP!r} is neither a safetensors nor a pickle")),
    ("no-such/model", r"model='no-such/model' could not be loaded"),
    ("/nonexistent/model", "was not found")])
def test_a_bad_model_name_through_the_api_is_refused_and_the_model_stays(client, bundled_manager, model, message):
    assert model != PASSWD_UP or (model.startswith("..") and Path(model).is_file())
    before = bundled_manager.info
    with pytest.raises(Exception, match=message):
        client.predict(model, api_name="/load_model")
    assert bundled_manager.info == before
    healthy(client)


def test_a_prompt_with_a_lone_surrogate_sent_raw_is_refused_by_name(app_server):
    """JSON may carry "\\ud800" (gradio_client cannot even encode it); it reached the tokenizer
    and came back as a raw UnicodeEncodeError."""
    import json

    import httpx

    values = json.dumps({**TXT2IMG, "num_inference_steps": 2}).replace('"a small red circle"', '"\\ud800x"')
    url = app_server[0]
    event_id = httpx.post(f"{url}gradio_api/call/v2/txt2img", content=values,
                          headers={"Content-Type": "application/json"}, timeout=60).json()["event_id"]
    answer = httpx.get(f"{url}gradio_api/call/txt2img/{event_id}", timeout=120).text
    assert "event: error" in answer and "lone surrogate" in answer, answer[:300]
