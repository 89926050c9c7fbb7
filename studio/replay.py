"""A run's every frame for the step player (studio/player.js), and the replay page: one
self-contained HTML file with the frames, the charts, the parameters and, where they were
recorded, the attention maps. No network, no external script: everything is inlined.

The viewer sends `frames()` to the browser when a run opens, so its slider swaps pictures there;
`page()` wraps the same frames, the same player and the run's charts into a file to share.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from studio import attention, export, inpainting, lens, metadata

HERE = Path(__file__).resolve().parent
PLAYER_JS, PLAYER_CSS = HERE / "player.js", HERE / "player.css"
MAX_SIDE = 256     # frames larger than this are scaled down (a 512x512 run's page stays small)
PNG_UP_TO = 128    # frames up to this side are PNG (crisp); larger ones JPEG
MAP_FLOOR = 0.2    # a word's map is drawn over x0 from 20% (no attention) to 100% (its most)


def encoded(picture: Image.Image, kind: str) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format=kind.upper(), **({"optimize": True} if kind == "png" else {"quality": 88}))
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def data_uri(picture: Image.Image) -> str:
    """A frame: scaled down past MAX_SIDE, PNG up to PNG_UP_TO (and maps), JPEG above."""
    picture = picture.convert("RGB") if picture.mode not in ("RGB", "L") else picture
    scale = MAX_SIDE / max(picture.size)
    if scale < 1:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)),
                                 Image.Resampling.LANCZOS)
    return encoded(picture, "png" if max(picture.size) <= PNG_UP_TO or picture.mode == "L" else "jpeg")


def attention_maps(trajectory, index: int) -> dict[str, str]:
    """Each word's map at step `index` as a small grayscale picture (latent size; the browser
    scales it smoothly), from MAP_FLOOR to white, for mix-blend-mode: multiply over x0."""
    maps = attention.maps_at(trajectory, index)
    names = dict.fromkeys(w.text for w in attention.run_words(trajectory))
    size = tuple(maps.shape[-1:-3:-1])
    out = {}
    for name in names:
        heat = attention.heat(maps, attention.find_word(trajectory, name), size, stretch=True)
        out[name] = data_uri(Image.fromarray(np.round(255 * (MAP_FLOOR + (1 - MAP_FLOOR) * heat)).astype(np.uint8), "L"))
    return out


def frames(manager, result, decoder: str = "fast") -> dict:
    """The player's data for the first picture of `result`: x_t and x0 at every step decoded by
    `decoder`, the captions, and the words' maps if attention was recorded; an inpainting run's
    mask is outlined on both."""
    trajectory = result.trajectory
    recorded, mask = attention.recorded(trajectory), inpainting.run_mask(result.request)
    steps = []
    for step, (noisy, clean) in zip(trajectory.steps, export.step_pictures(manager, trajectory, decoder)):
        entry = {"caption": export.step_caption(trajectory, step.index + 1).replace("**", ""),
                 "xt": data_uri(inpainting.outlined(noisy, mask)), "x0": data_uri(inpainting.outlined(clean, mask))}
        if recorded:
            entry["attention"] = attention_maps(trajectory, step.index)
        steps.append(entry)
    data = {"decoder": DECODER_NAMES.get(decoder, decoder), "steps": steps, "words": []}
    if recorded:
        data["words"] = list(dict.fromkeys(w.text for w in attention.run_words(trajectory)))
        data["word"] = attention.most_focused(attention.maps_at(trajectory, None), trajectory)
    return data


DECODER_NAMES = {"fast": "the fast decoder (a linear map of the latents)", "tiny": "the tiny VAE (TAESD)",
                 "full": "the full VAE"}


def page(manager, result, decoder: str = "full") -> str:
    """The replay page of `result` as one HTML string."""
    data = frames(manager, result, decoder)
    r = result.request
    moves = lens.changes(result.trajectory)
    charts = [("Noise schedule σ (log scale)", export.schedule_chart(result.trajectory))]
    if moves:
        charts.append(("When the picture settled",
                       export.convergence_chart(moves, lens.SETTLED, lens.settled_at(moves))))
    title = f"{'img2img' if r.is_img2img else 'txt2img'}: {r.prompt or '(no prompt)'}"
    parameters = metadata.format_parameters(result, result.seeds[0])
    payload = json.dumps(data).replace("<", "\\u003c")  # no "</script>" can end the data early
    # charts keep their size (drawn at a readable one) and stay PNG
    chart_html = "".join(f'<figure><img alt="{html.escape(label)}" src="{encoded(chart.convert("RGB"), "png")}">'
                         f"<figcaption>{html.escape(label)}</figcaption></figure>" for label, chart in charts)
    return TEMPLATE.format(
        title=html.escape(title), css=PLAYER_CSS.read_text(), js=PLAYER_JS.read_text(), data=payload,
        parameters=html.escape(parameters), charts=chart_html,
        settled=html.escape(lens.settled_sentence(result.trajectory)))


def write(manager, result, path: Path, decoder: str = "full") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(manager, result, decoder), encoding="utf-8")
    return path


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title} · Diffusion Studio replay</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;max-width:60em;color:#222}}
pre{{white-space:pre-wrap;background:#f4f4f4;padding:.8em;border-radius:6px}}
.charts{{display:flex;flex-wrap:wrap;gap:1em}} figure{{margin:0}}
{css}</style></head>
<body>
<h1>{title}</h1>
<p>Every step of one run in Diffusion Studio's denoising viewer: drag the
slider, use the arrow keys, or press Play. Left: the noisy latents x_t entering the step; right: what the model
predicts the clean picture x0 to be.</p>
<div id="player"></div>
<h2>The run</h2>
<div class="charts">{charts}</div>
<p>{settled}</p>
<h2>Parameters</h2>
<pre id="parameters">{parameters}</pre>
<script>{js}</script>
<script>studioPlayer(document.getElementById("player"), {data});</script>
</body></html>
"""
