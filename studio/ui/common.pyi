"""Widgets and event plumbing shared by the txt2img and img2img tabs.

`parameter_panel` builds the prompt, negative prompt and sampling controls under the names the
request uses; `run_stream` turns a manager stream into what a Gradio generator yields, mapping
StudioError to gr.Error. No generation logic lives here: it all goes through the manager.
"""
from __future__ import annotations

import dataclasses

import gradio as gr
from PIL import Image

from studio import schedulers
from studio.errors import GenerationCancelled, StudioError
from studio.requests import MAX_BATCH, MAX_GUIDANCE, MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE

GPU = "gpu"  # every event that runs the model shares this concurrency_id
PREVIEW_CHOICES = [("Off", "none"), ("Fast (linear)", "fast"), ("Full VAE", "full")]
TINY_CHOICE = ("Tiny VAE (TAESD)", "tiny")  # offered only when the studio has one (--tiny-vae)

from gradio.events import Dependency

class PictureUpload(gr.Image):
    """gr.Image for uploads that says what is wrong with a bad file, naming it.

    gr.Image decodes the upload before the event runs, so a zero-byte file, text named .png or a
    decompression bomb otherwise fails as "Could not preprocess input component at index N",
    which names neither the file nor the problem (for API callers too). The front end is the
    stock image widget (`is_template`)."""

    is_template = True
    argument = "image"  # the name error messages give it (Gradio builds props from __init__: not overridden)
    decode = True       # PNG info needs only the file (PngUpload)

    def get_block_name(self) -> str:  # the stock front end, for subclasses too (is_template looks one level up)
        return "image"

    get_block_class = get_block_name

    def preprocess(self, payload):
        if payload is not None and (payload.url or "").startswith("data:"):
            payload = self.inline_to_file(payload)  # Gradio would decode it before any check
        if payload is not None:
            self.check_header(payload)  # whatever route the file came by: upload, data: URL, API
        if not self.decode:
            return None if payload is None else payload.path
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Image.DecompressionBombError as exc:
            raise gr.Error(f"{self.argument}={upload_name(payload)!r} has too many pixels to decode "
                           f"safely ({exc}).") from exc
        except Exception as exc:
            raise gr.Error(f"{self.argument}={upload_name(payload)!r} could not be read as a picture "
                           f"({type(exc).__name__}: {exc}). Upload a PNG, JPEG or WebP file.") from exc


    def inline_to_file(self, payload):
        """A picture sent inline (a data: URL) as a file in the cache, its bytes as they came."""
        head, _, data = payload.url.partition(",")
        try:
            if not head.endswith(";base64"):
                raise ValueError("not base64")
            raw = base64.b64decode(data, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise gr.Error(f"{self.argument}=<data: URL> is not a base64 picture ({exc}).") from None
        return payload.model_copy(update={"path": cached_file(raw, "inline"), "url": None,
                                          "orig_name": payload.orig_name or "inline data: URL"})

    def check_header(self, payload) -> None:
        """Refuse a file that is no picture, or (when it will be decoded) one with too many
        pixels, from its header alone. A 680 KB PNG of 13376x13376 zeros, sent inline as a
        data: URL, was decoded to 4 GB before any check; now nothing is decoded to refuse it."""
        name = f"{self.argument}={upload_name(payload)!r}"
        try:
            with warnings.catch_warnings():  # PIL's bomb warning: the size is checked right here
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                picture = Image.open(payload.path)  # reads the header; no pixels yet
            with picture:
                if self.decode:
                    images.check_size(picture, name)
        except StudioError as exc:
            raise gr.Error(str(exc)) from None
        except images.READ_ERRORS as exc:
            raise gr.Error(f"{name} could not be read as a picture ({type(exc).__name__}: {exc}). "
                           "Upload a PNG, JPEG or WebP file.") from None
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


def upload_name(payload) -> str:
    """The name the person gave the upload, else the server's name for it."""
    return getattr(payload, "orig_name", None) or getattr(payload, "path", None) or "the upload"


def preview_choices(manager, with_off: bool = True) -> list[tuple[str, str]]:
    """The live-preview / viewer decoders this studio can use: tiny only with --tiny-vae."""
    choices = PREVIEW_CHOICES[:2] + ([TINY_CHOICE] if manager.settings.tiny_vae else []) + PREVIEW_CHOICES[2:]
    return choices if with_off else choices[1:]


@dataclasses.dataclass
class ParameterPanel:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    num_inference_steps: gr.Slider
    guidance_scale: gr.Slider
    width: gr.Slider
    height: gr.Slider
    scheduler: gr.Dropdown
    num_images_per_prompt: gr.Slider
    seed: gr.Number
    preview: gr.Radio

    def inputs(self) -> list:
        """In GenerationRequest order, as event functions take them."""
        return [self.prompt, self.negative_prompt, self.num_inference_steps, self.guidance_scale,
                self.width, self.height, self.scheduler, self.num_images_per_prompt, self.seed,
                self.preview]


def parameter_panel(tab: str, native_size: int, default_prompt: str,
                    previews: list[tuple[str, str]] | None = None) -> ParameterPanel:
    prompt = gr.Textbox(label="Prompt", value=default_prompt, lines=2, elem_id=f"{tab}-prompt")
    negative = gr.Textbox(label="Negative prompt", lines=1, elem_id=f"{tab}-negative-prompt",
                          placeholder="what the picture should not have")
    with gr.Row():
        steps = gr.Slider(1, MAX_STEPS, value=20, step=1, label="Steps", elem_id=f"{tab}-steps",
                          info="denoising steps: more is slower, usually finer")
        guidance = gr.Slider(0, MAX_GUIDANCE, value=7.5, step=0.5, label="Guidance (CFG scale)",
                             elem_id=f"{tab}-guidance", info="how strongly to follow the prompt")
    with gr.Row():
        width = gr.Slider(MIN_SIDE, MAX_SIDE, value=native_size, step=8, label="Width", elem_id=f"{tab}-width")
        height = gr.Slider(MIN_SIDE, MAX_SIDE, value=native_size, step=8, label="Height", elem_id=f"{tab}-height")
    with gr.Row():
        scheduler = gr.Dropdown(schedulers.NAMES, value=schedulers.DEFAULT, label="Sampler",
                                elem_id=f"{tab}-scheduler", info="Default: the model's own")
        batch = gr.Slider(1, MAX_BATCH, value=1, step=1, label="Batch size", elem_id=f"{tab}-batch")
    with gr.Row():
        seed = gr.Number(value=-1, precision=0, minimum=-1, maximum=MAX_SEED, label="Seed (-1: random)",
                         elem_id=f"{tab}-seed")
        random_seed = gr.Button("Random", size="sm", elem_id=f"{tab}-random-seed")
        reuse_seed = gr.Button("Reuse last", size="sm", elem_id=f"{tab}-reuse-seed")
    preview = gr.Radio(previews or PREVIEW_CHOICES, value="fast", label="Live preview", elem_id=f"{tab}-preview")
    panel = ParameterPanel(prompt, negative, steps, guidance, width, height, scheduler, batch, seed, preview)
    random_seed.click(random_seed_value, outputs=seed, api_visibility="private", queue=False)
    panel.reuse_seed = reuse_seed
    return panel


def random_seed_value() -> int:
    return -1


def run_stream(stream, progress: gr.Progress):
    """Yield (preview, result) pairs from a manager stream; user errors become gr.Error."""
    try:
        for event in stream:
            if event[0] == "step":
                _, step, total, previews = event
                progress((step, total), desc=f"step {step}/{total}")
                yield (previews[0] if previews else None), None
            else:
                for warning in event[1].warnings:
                    gr.Warning(warning)
                yield None, event[1]
    except GenerationCancelled as exc:
        gr.Info(str(exc))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    finally:
        stream.close()


def describe_result(result) -> str:
    seeds = ", ".join(str(s) for s in result.seeds)
    t = result.timings
    return (f"**Seed{'s' if len(result.seeds) > 1 else ''}:** {seeds} · {t['steps']} steps in "
            f"{t['total']:.2f} s ({1 / max(t['seconds_per_step'], 1e-9):.1f} steps/s) · "
            f"{result.request.width}x{result.request.height} · {result.scheduler_name}")
class SizeSlider(gr.Slider):
    """A width or height slider whose out-of-range error names the argument, its value and the
    loaded model's bound (Gradio's own says only "Value 500 is greater than maximum value 256"),
    for API callers too. The front end is the stock slider."""

    is_template = True

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            name = str(self.label).lower()
            raise gr.Error(f"{name}={payload!r} is not allowed: expected {int(self.minimum)} to "
                           f"{int(self.maximum)} for the loaded model (--size-factor times its native size).") from None
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component

    
class PngUpload(PictureUpload):
    """The PNG info tab's upload: the file itself, never decoded (its text is all it needs), so
    a picture of any size can be read."""

    is_template = True
    decode = False
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component

    
class WholeNumber(gr.Number):
    """gr.Number(precision=0) rounds what it is given: seed 1.5 ran as seed 2. This one refuses
    a value with a fraction, naming it (API callers pass any number). Stock front end."""

    is_template = True

    def preprocess(self, payload):
        if isinstance(payload, float) and not payload.is_integer():
            raise gr.Error(f"{str(self.label).split(' (')[0].lower()}={payload!r} is not allowed: "
                           "expected a whole number.")
        return super().preprocess(payload)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component

    