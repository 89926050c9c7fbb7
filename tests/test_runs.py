"""A run saved to disk (run.safetensors + run.json, no pickle) and opened again: the same steps,
pictures and request; a damaged or foreign file is refused by name; the CLI writes and inspects it."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from studio import runs
from studio.errors import StudioError
from studio.requests import GenerationRequest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved(bundled_manager, tmp_path_factory):
    result = bundled_manager.generate(GenerationRequest(prompt="a small red circle at the top left on a blue background",
                                                        num_inference_steps=6, seed=8, num_images_per_prompt=2))
    folder = tmp_path_factory.mktemp("run")
    runs.save(result, folder)
    return result, folder


def test_a_saved_run_opens_again_with_every_step_picture_and_field(saved):
    result, folder = saved
    back = runs.load(folder)
    assert back.request == result.request and back.seeds == result.seeds == [8, 9]
    assert (back.model_hash, back.scheduler_name) == (result.model_hash, result.scheduler_name)
    for a, b in zip(result.trajectory.steps, back.trajectory.steps, strict=True):
        assert (a.timestep, a.sigma) == (b.timestep, b.sigma)
        assert torch.equal(a.latents, b.latents) and torch.equal(a.x0, b.x0)
    assert torch.equal(result.trajectory.final, back.trajectory.final)
    assert [np.asarray(i).tolist() for i in back.images] == [np.asarray(i).tolist() for i in result.images]
    described = json.loads((folder / runs.DESCRIPTION).read_text())
    assert {"diffusers", "torch", "diffusion-studio"} <= set(described["versions"])


def test_an_img2img_run_keeps_its_starting_picture(bundled_manager, tmp_path):
    start = Image.new("RGB", (64, 64), "red")
    result = bundled_manager.generate(GenerationRequest(prompt="a blue square", image=start, strength=0.5,
                                                        num_inference_steps=6))
    runs.save(result, tmp_path)
    back = runs.load(tmp_path)
    assert back.request.is_img2img and back.request.strength == 0.5 and len(back.trajectory.steps) == 3
    assert np.asarray(back.request.image).tolist() == np.asarray(start).tolist()


@pytest.mark.parametrize(("damage", "named"), [
    (lambda f: (f / runs.DESCRIPTION).unlink(), "has no run.json"),
    (lambda f: (f / runs.TENSORS).write_bytes(b"\x00" * 64), "could not be read"),
    (lambda f: (f / runs.DESCRIPTION).write_text("{not json"), "could not be read"),
    (lambda f: edit(f, format=99), "format=99 is not a run format"),
    (lambda f: edit(f, request={"prompt": "x", "eval": "rm -rf"}), "does not know: ['eval']"),
    (lambda f: edit(f, request={"prompt": "x", "num_inference_steps": 1e9}), "num_inference_steps=1000000000.0"),
    (lambda f: edit(f, seeds=[1]), "one seed per picture"),
    (lambda f: edit(f, trajectory={"steps": [{"timestep": 1, "sigma": 1}]}), "one per step"),
    (lambda f: edit(f, trajectory={"steps": [{"timestep": "x", "sigma": 1}] * 6}), "wrong kind"),
])
def test_a_damaged_run_is_refused_naming_what_is_wrong(saved, tmp_path, damage, named):
    for path in saved[1].iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    damage(tmp_path)
    with pytest.raises(StudioError, match=re_escape(named)):
        runs.load(tmp_path)


def edit(folder, **changes) -> None:
    path = folder / runs.DESCRIPTION
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_the_cli_writes_the_run_and_inspect_opens_it(tmp_path):
    folder = tmp_path / "traj"
    made = subprocess.run([sys.executable, "-m", "studio", "generate", "--prompt", "a large green triangle",
                           "--steps", "5", "--seed", "4", "--out", str(tmp_path / "out.png"),
                           "--trajectory", str(folder)], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    assert (folder / runs.DESCRIPTION).is_file() and (folder / runs.TENSORS).is_file()
    shown = subprocess.run([sys.executable, "-m", "studio", "inspect", str(folder), "--step", "5",
                            "--out", str(tmp_path / "step5.png")], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "seeds [4], 5 steps" in shown.stdout
    frame = Image.open(tmp_path / "step5.png")  # x_t | x0 side by side, captioned, as the GIF's frames
    from studio.export import CAPTION, CELL

    assert frame.size == (2 * CELL, CELL + CAPTION)
    refused = subprocess.run([sys.executable, "-m", "studio", "inspect", str(folder), "--step", "9"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "step=9 is not allowed: expected 1 to 5" in refused.stderr


def test_the_viewer_opens_a_saved_run_through_the_api(app_server, saved):
    from gradio_client import Client, handle_file

    client = Client(app_server[0], verbose=False)
    names = [runs.DESCRIPTION, runs.TENSORS, "picture-0.png"]
    client.predict(files=[handle_file(str(saved[1] / n)) for n in names], api_name="/viewer_open_run")
    slider, noisy, clean, caption, chart, strip, _frames = client.predict(None, "full", api_name="/viewer_load")
    assert "Step 6 of 6" in caption and len(strip) == 6
    with pytest.raises(Exception, match="upload the run.json and run.safetensors"):
        client.predict(files=[handle_file(str(saved[1] / "picture-0.png"))], api_name="/viewer_open_run")
