"""The load command's requests: each session's calls (its own sampler, prompts and seeds), the
pictures they must give (made alone in this process), and reading the pictures back."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
from PIL import Image

from studio.config import DEFAULT_MODEL


SAMPLERS = ["Default", "Euler a", "DPM++ 2M", "DDIM", "UniPC", "Euler", "Heun", "DPM++ 2M Karras"]


SHAPES = ["circle", "square", "triangle"]


COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]


@dataclasses.dataclass(frozen=True)
class Call:
    client: int
    index: int
    kind: str                 # txt2img, img2img or viewer
    prompt: str = ""
    seed: int = 0
    scheduler: str = "Default"
    steps: int = 8
    strength: float = 0.75

    def arguments(self, start_image: str | None) -> dict:
        """The API call's inputs, by field name: the same request `request` builds."""
        from gradio_client import handle_file

        from studio import fields

        request = self.request(start_image)
        named = {name: getattr(request, name) for name in fields.PANEL}
        return named | ({"image": handle_file(start_image), "strength": self.strength} if self.kind == "img2img" else {})

    def request(self, start_image: str | None):
        from studio.requests import GenerationRequest

        return GenerationRequest(prompt=self.prompt, num_inference_steps=self.steps, guidance_scale=7.5,
                                 width=64, height=64, scheduler=self.scheduler, seed=self.seed,
                                 image=start_image if self.kind == "img2img" else None, strength=self.strength)


def plan(clients: int, requests: int, steps: int, kinds: tuple = ("txt2img", "img2img", "viewer")) -> list[list[Call]]:
    """Each session: its own sampler; calls of `kinds` in turn (txt2img, img2img and viewer); unique seeds."""
    sessions = []
    for c in range(clients):
        calls = []
        for j in range(requests):
            kind = kinds[j % len(kinds)]
            prompt = f"a {COLOURS[(c + j) % len(COLOURS)]} {SHAPES[j % len(SHAPES)]} on a white background"
            calls.append(Call(c, j, kind, prompt, seed=1000 * c + j, scheduler=SAMPLERS[c % len(SAMPLERS)],
                              steps=steps))
        sessions.append(calls)
    return sessions


def start_image(folder: Path, client: int) -> str:
    """Each session's own img2img starting picture."""
    path = folder / f"start-{client}.png"
    picture = Image.new("RGB", (64, 64), COLOURS[client % len(COLOURS)])
    picture.paste((255, 255, 255), (16, 16, 48, 48))
    picture.save(path)
    return str(path)


def references(sessions: list[list[Call]], starts: dict[int, str], threads: int) -> dict:
    """(client, index) -> (picture, viewer x0 of the last step): each generation run alone."""
    import torch

    from studio.config import Settings
    from studio.manager import PipelineManager

    torch.set_num_threads(threads)
    manager = PipelineManager(Settings(model=DEFAULT_MODEL))
    manager.load()
    expected = {}
    for call in (c for calls in sessions for c in calls if c.kind != "viewer"):
        result = manager.generate(call.request(starts[call.client]))
        # the viewer's "full" decoder: the fast one is a least-squares fit, equal only to rounding
        last_x0 = manager.previews.decode(manager.loaded, result.trajectory.steps[-1].x0[:1], "full")[0]
        expected[call.client, call.index] = (np.asarray(result.images[0]), np.asarray(last_x0.convert("RGB")))
    return expected


def pictures(gallery) -> list:
    """The gallery's pictures, whether the API returns them bare or inside an update."""
    return gallery["value"] if isinstance(gallery, dict) else gallery


def pixels(file) -> np.ndarray:
    """A picture's pixels: a downloaded file's path, or an output the client did not download
    (`download_files=False`: a dict with the file's URL), fetched from the server."""
    if isinstance(file, dict):
        import httpx

        response = httpx.get(file["url"], timeout=60)
        response.raise_for_status()
        file = io.BytesIO(response.content)
    return np.asarray(Image.open(file).convert("RGB"))
