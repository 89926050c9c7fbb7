"""Generation on Ray Serve replicas (studio.scale), on a local Ray instance with 2 replicas of the
bundled model at 1 thread each: the same pixels as the in-process manager, cancel through
gradio_client within a step, a replica killed mid-run, a model switch on every replica.

Bounded: one Ray start for the module (about 30 s on a busy 2-core machine), every wait on Ray's
own state with a ceiling, and Serve and Ray shut down at the end.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from studio.config import Settings
from studio.errors import GenerationCancelled, StudioError
from studio.requests import GenerationRequest
from tests.conftest import free_port, serve

CEILING = 300  # seconds: a ceiling for Ray's own state to change, never a measure of speed
PROMPT = "a large red circle on a blue background"


@pytest.fixture(scope="module")
def ray_manager(tmp_path_factory, one_torch_thread):
    import ray
    from ray import serve as ray_serve

    from studio.scale.backend import RayManager

    settings = Settings(outputs=str(tmp_path_factory.mktemp("outputs")), port=free_port(), ray="local", replicas=2)
    manager = RayManager(settings, replicas=2, threads=1)
    manager.load()
    yield manager
    ray_serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(one_torch_thread):
    from studio.manager import PipelineManager

    manager = PipelineManager(Settings())
    manager.load()
    return manager


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0])


def replica_actors() -> list:
    import ray

    return [ray.get_actor(a["name"], namespace=a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True)
            if "SERVE_REPLICA" in a["name"]]


def running_replicas() -> int:
    from ray import serve as ray_serve

    from studio.scale import APP

    app = ray_serve.status().applications.get(APP)
    if app is None:
        return 0
    return sum(d.replica_states.get("RUNNING", 0) for d in app.deployments.values())


def wait_until(condition, what: str):
    deadline = time.monotonic() + CEILING
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_the_ray_backend_gives_the_in_process_pixels_txt2img_and_img2img(ray_manager, in_process):
    request = GenerationRequest(prompt=PROMPT, seed=3)
    remote = ray_manager.generate(request)
    assert np.array_equal(pixels(remote), pixels(in_process.generate(request)))
    assert len(remote.trajectory.steps) == 20  # the viewer's trajectory comes back too
    img2img = GenerationRequest(prompt="a large yellow square on a blue background", seed=3,
                                image=remote.images[0], strength=0.6)
    assert np.array_equal(pixels(ray_manager.generate(img2img)), pixels(in_process.generate(img2img)))


def test_two_requests_at_once_run_on_two_replicas(ray_manager, in_process):
    asks = [GenerationRequest(prompt=f"a large {c} square on a white background", seed=s, num_inference_steps=30)
            for c, s in (("green", 1), ("blue", 2))]
    started, results = [], [None, None]

    def run(k):
        results[k] = ray_manager.generate(asks[k], on_step=lambda step, total, _: started.append(k) if step == 1 else None)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(CEILING)
    for ask, result in zip(asks, results):
        assert np.array_equal(pixels(result), pixels(in_process.generate(ask)))


def test_a_bad_value_is_the_replicas_own_message_and_the_next_run_works(ray_manager):
    with pytest.raises(StudioError, match="lora='nope' is not in --lora-dir"):
        ray_manager.generate(GenerationRequest(prompt=PROMPT, loras="nope"))
    assert ray_manager.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=2)).images


def test_a_cancel_reaches_the_replica_and_stops_the_run_within_a_step(ray_manager):
    cancel, seen = threading.Event(), []

    def on_step(step, total, _):
        seen.append(step)
        if step == 3:
            cancel.set()

    # 256x256 (4x the native side) makes a step long against the cancel's way to the replica
    request = GenerationRequest(prompt=PROMPT, seed=1, num_inference_steps=40, width=256, height=256)
    with pytest.raises(GenerationCancelled, match=r"Stopped at step (\d+) of 40") as stopped:
        ray_manager.generate(request, on_step=on_step, cancel=cancel)
    assert int(str(stopped.value).split()[3]) - 3 <= 1
    assert ray_manager.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=2)).images


def test_cancel_through_gradio_client_stops_the_replicas_run_within_a_step_and_the_next_request_works(ray_manager):
    from gradio_client import Client

    stops, last_before_cancel = [], [0]
    original = ray_manager.generate

    def recorded(request, on_step=None, cancel=None, start=None):
        def step(number, total, previews):
            if not cancel.is_set() and total == 150:  # the long run's, not the check after it
                last_before_cancel[0] = number
            on_step(number, total, previews)

        try:
            return original(request, on_step=step, cancel=cancel, start=start)
        except GenerationCancelled as exc:
            stops.append(int(str(exc).split()[3]))
            raise

    ray_manager.generate = recorded
    try:
        with serve(ray_manager, ray_manager.settings) as url:
            client = Client(url, verbose=False)
            job = client.submit(prompt=PROMPT, num_inference_steps=150, width=256, height=256, api_name="/txt2img")
            wait_until(lambda: last_before_cancel[0] >= 3, "three steps")
            job.cancel()
            wait_until(lambda: stops, "the replica's stop")
            _, gallery, info = client.predict(prompt=PROMPT, num_inference_steps=2, api_name="/txt2img")
            assert "2 steps" in info
    finally:
        ray_manager.generate = original
    assert stops[0] - last_before_cancel[0] <= 1, (stops, last_before_cancel)


def test_a_replica_killed_mid_run_ends_that_request_clearly_and_ray_replaces_it(ray_manager, in_process):
    import ray

    failure, reached = [], threading.Event()

    def run():
        try:
            ray_manager.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=150, width=256, height=256),
                                 on_step=lambda step, total, _: reached.set() if step == 2 else None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert reached.wait(CEILING)
    replicas = replica_actors()
    assert len(replicas) == 2
    killed_at = time.monotonic()
    for actor in replicas:  # both: the one running it among them
        ray.kill(actor, no_restart=False)
    worker.join(CEILING)
    assert len(failure) == 1 and isinstance(failure[0], StudioError), failure
    assert "stopped mid-run" in str(failure[0]) and "Try again" in str(failure[0])
    request = GenerationRequest(prompt=PROMPT, seed=5, num_inference_steps=6)
    assert np.array_equal(pixels(ray_manager.generate(request)), pixels(in_process.generate(request)))
    served = time.monotonic() - killed_at  # the next request waited for a new replica
    killed = {a._actor_id for a in replicas}
    wait_until(lambda: running_replicas() == 2 and len({a._actor_id for a in replica_actors()} - killed) == 2,
               "Serve to replace both replicas")
    print(f"after the kill: next request served at {served:.1f} s, both replicas replaced at "
          f"{time.monotonic() - killed_at:.1f} s")


def test_a_model_switch_reaches_every_replica_and_a_failed_one_keeps_the_model(ray_manager, tiny_dirs):
    from ray import serve as ray_serve

    from studio.scale import APP

    def replica_models():
        from studio.scale.backend import off_loop

        handle = off_loop(ray_serve.get_app_handle, APP)
        return {off_loop(lambda: handle.model.remote().result(timeout_s=CEILING)) for _ in range(6)}

    with pytest.raises(StudioError):
        ray_manager.load("no/such-model-here")
    assert ray_manager.info.name == Settings().model and replica_models() == {Settings().model}
    try:
        ray_manager.load(str(tiny_dirs["sd1"]))
        assert replica_models() == {str(tiny_dirs["sd1"])}
        assert ray_manager.generate(GenerationRequest(prompt="a cat", num_inference_steps=2)).images
    finally:
        ray_manager.load(Settings().model)


def test_a_switch_the_replicas_refuse_after_the_front_end_loaded_it_keeps_the_model_everywhere(ray_manager, tiny_dirs):
    deploy = ray_manager._deploy

    def refused():
        raise RuntimeError("the cluster has no room for the new replicas")

    ray_manager._deploy = refused
    try:
        with pytest.raises(StudioError, match=r"model='.*sd1.*' loaded here, but Ray Serve could not deploy it .*no room"):
            ray_manager.load(str(tiny_dirs["sd1"]))
    finally:
        ray_manager._deploy = deploy
    assert ray_manager.info.name == ray_manager.settings.model == Settings().model
    result = ray_manager.generate(GenerationRequest(prompt=PROMPT, seed=3, num_inference_steps=4))
    assert result.images and ray_manager.info.name == Settings().model


def test_the_a1111_api_and_a_ui_session_work_through_the_replicas_and_a_kill_loses_no_session(ray_manager, in_process):
    """`--api` over the Ray backend gives the in-process pixels; a UI session's History is the
    front end's, so it outlives replicas killed under it."""
    import base64
    import dataclasses
    import io

    import ray
    import requests
    from gradio_client import Client
    from PIL import Image

    from tests.conftest import serve_with_api

    settings = dataclasses.replace(ray_manager.settings, api=True, port=free_port())
    with serve_with_api(ray_manager, settings) as (url, _):
        answer = requests.post(url + "sdapi/v1/txt2img", json={"prompt": PROMPT, "seed": 8, "steps": 6},
                               timeout=CEILING).json()
        alone = in_process.generate(GenerationRequest(prompt=PROMPT, seed=8, num_inference_steps=6))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB")),
                              pixels(alone))
        client = Client(url, verbose=False)
        client.predict(prompt=PROMPT, seed=9, num_inference_steps=4, api_name="/txt2img")
        for actor in replica_actors():
            ray.kill(actor, no_restart=False)
        _, gallery, info = client.predict(prompt=PROMPT, seed=10, num_inference_steps=4, api_name="/txt2img")
        assert "Seed:** 10" in info  # served once Serve had replaced them
        for index in (0, 1):  # the session still has both of its runs, the one before the kill too
            assert client.predict(index, "fast", api_name="/viewer_load")[0]["maximum"] == 4  # its 4 steps
        with pytest.raises(Exception, match="expected a run index from 0 to 1"):
            client.predict(2, "fast", api_name="/viewer_load")
