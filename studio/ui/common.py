"""Widgets and event plumbing shared by the txt2img and img2img tabs.

`parameter_panel` builds the prompt, negative prompt and sampling controls under the names the
request uses; `run_stream` turns a manager stream into what a Gradio generator yields, mapping
StudioError to gr.Error. No generation logic lives here: it all goes through the manager.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import io
import os
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import gradio as gr
from gradio.processing_utils import hash_bytes
from gradio.utils import get_upload_folder
from PIL import Image

from studio import fields, images
from studio.errors import GenerationCancelled, StudioError
from studio.manager import Step
from studio.requests import SIZE_FACTOR, size_bound

GPU = "gpu"  # every event that runs the model shares this concurrency_id
PREVIEW_CHOICES = [("Off", "none"), ("Fast (linear)", "fast"), ("Full VAE", "full")]
TINY_CHOICE = ("Tiny VAE (TAESD)", "tiny")  # offered only when the studio has one (--tiny-vae)


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
            with images.open_header(payload.path) as picture:  # no pixels yet
                if self.decode:
                    images.check_size(picture, name)
        except StudioError as exc:
            raise gr.Error(str(exc)) from None
        except images.READ_ERRORS as exc:
            raise gr.Error(f"{name} could not be read as a picture ({type(exc).__name__}: {exc}). "
                           "Upload a PNG, JPEG or WebP file.") from None


class PngUpload(PictureUpload):
    """The PNG info tab's upload: the file itself, never decoded (its text is all it needs), so
    a picture of any size can be read."""

    is_template = True
    decode = False


class WholeNumber(gr.Number):
    """gr.Number(precision=0) rounds what it is given: seed 1.5 ran as seed 2. This one refuses
    a value with a fraction, naming it (API callers pass any number). Stock front end."""

    is_template = True

    def preprocess(self, payload):
        if isinstance(payload, float) and not payload.is_integer():
            raise gr.Error(f"{str(self.label).split(' (')[0].lower()}={payload!r} is not allowed: "
                           "expected a whole number.")
        return super().preprocess(payload)


def whole_index(name: str, value) -> int:
    """An index an API caller sent (a run, a step, a picture) as an int, or gr.Error naming it:
    1.5 became 1 and "0.5" became 0, silently; "abc" was a raw ValueError."""
    if isinstance(value, bool):
        raise gr.Error(f"{name}={value!r} is not allowed: expected a whole number.")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise gr.Error(f"{name}={value!r} is not allowed: expected a whole number.")


def picture_file(image: Image.Image) -> str:
    """`image` as a PNG in Gradio's cache under its content's (seeded, unguessable) hash, written
    whole and only once; return this path instead of the PIL image.

    Gradio writes a returned PIL image to <cache>/<hash>/image.png on every return, truncating the
    file first. A picture shown twice (a settled step's x0 is also a filmstrip frame) was then
    served while being rewritten: h11's "Too little data for declared Content-Length" and a
    broken image that stayed broken. Files already in the cache are served as they are."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return cached_file(buffer.getvalue(), "image.png")


def served(path: str | None) -> str | None:
    """The copy of a file of the studio's own (a saved PNG, a grid, a viewer export) that the
    browser may fetch: in Gradio's cache under a folder named by the file's seeded content hash,
    with the file's own name (downloads keep it), made once and remade if pruned.

    The --outputs folder itself is never served: its names (00012-5.png) can be guessed, and
    another visitor would fetch them. A cached copy's URL can only be known to the session that
    was given it."""
    if path is None:
        return None
    source = Path(path)
    if is_cached(source):
        return str(source)
    # History re-serves every picture it lists at each change: read and hash a file only once
    stat = source.stat()
    key = (str(source.resolve()), stat.st_size, stat.st_mtime_ns)
    known = SERVED.get(key)
    if known is not None and Path(known).exists():
        os.utime(known)  # in use: the cache pruning ages files by their time
        SERVED.move_to_end(key)
        return known
    SERVED[key] = copy = cached_file(source.read_bytes(), source.name)
    while len(SERVED) > SERVED_MEMO:
        SERVED.popitem(last=False)
    return copy


SERVED: OrderedDict = OrderedDict()  # (path, size, mtime) -> its cached copy, newest last
SERVED_MEMO = 4096


def is_cached(path: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(get_upload_folder()).resolve())


def cached_file(data: bytes, name: str) -> str:
    """`data` as <Gradio cache>/<seeded hash of data>/<name>, written whole, only once."""
    path = Path(get_upload_folder()) / hash_bytes(data) / name
    if path.exists():
        os.utime(path)  # the studio's cache pruning ages files by their time: this one is in use
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.")
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.replace(staging, path)  # whole or not at all, even with another writer at the same time
    return str(path)


def upload_name(payload) -> str:
    """The name the person gave the upload, else the server's name for it."""
    return getattr(payload, "orig_name", None) or getattr(payload, "path", None) or "the upload"


def preview_choices(manager, with_off: bool = True) -> list[tuple[str, str]]:
    """The live-preview / viewer decoders this studio can use: tiny only with --tiny-vae."""
    choices = PREVIEW_CHOICES[:2] + ([TINY_CHOICE] if manager.settings.tiny_vae else []) + PREVIEW_CHOICES[2:]
    return choices if with_off else choices[1:]


class ParameterPanel:
    """The controls of a request's fields (studio.fields.PANEL), by field name: `panel.seed`.
    `inputs()` is what events bind by name (`inputs_kwargs`), so the API's parameters carry the
    fields' names."""

    def __init__(self, controls: dict, reuse_seed, batch_count):
        self.controls, self.reuse_seed, self.batch_count = controls, reuse_seed, batch_count

    def __getattr__(self, name: str):
        try:
            return self.__dict__["controls"][name]
        except KeyError:
            raise AttributeError(name) from None

    def inputs(self) -> dict:
        return dict(self.controls)


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


def size_info(native_size: int, factor: float = SIZE_FACTOR) -> str:
    return f"up to {factor:g}x the {native_size}px it learned; larger repeats the subject"


def control(field: fields.Field, tab: str, **options):
    """The Gradio control of one request field, its label, hint, range and value from the table."""
    common = dict(label=field.label, elem_id=f"{tab}-{ELEM_IDS.get(field.name, field.name.replace('_', '-'))}")
    value = options.pop("value", field.shown)
    if field.name in ("prompt", "negative_prompt"):
        return gr.Textbox(value=value, lines=2 if field.name == "prompt" else 1, placeholder=field.hint or None,
                          **common, **options)
    if field.choices and field.name == "preview":
        return gr.Radio(options.pop("choices", None) or PREVIEW_CHOICES, value=value, **common, **options)
    if field.choices:
        return gr.Dropdown(list(field.choices), value=value, info=field.hint or None, **common, **options)
    if field.kind is int and field.high >= fields.MAX_SEED:
        return WholeNumber(value=value, precision=0, minimum=field.low, maximum=field.high, info=field.hint or None,
                           **common, **options)
    kind = options.pop("kind", gr.Slider)
    low = field.low + field.step if field.low_open else field.low  # strength: its first step above 0
    return kind(options.pop("minimum", low), options.pop("maximum", field.high), value=value, step=field.step,
                info=options.pop("info", field.hint or None), **common, **options)


ELEM_IDS = {"num_inference_steps": "steps", "guidance_scale": "guidance", "num_images_per_prompt": "batch"}


def parameter_panel(tab: str, native_size: int, size_factor: float = SIZE_FACTOR,
                    previews: list[tuple[str, str]] | None = None, batch_count: bool = True,
                    prompt: str | None = None) -> ParameterPanel:
    """The controls of studio.fields.PANEL, a row per the table's `row`. With `batch_count`, also a
    "Batch count" slider (`panel.batch_count`, not in `inputs()`: events that run batches add it)."""
    bound, size_hint = size_bound(native_size, size_factor), size_info(native_size, size_factor)
    special = {"preview": dict(choices=previews), "prompt": {} if prompt is None else dict(value=prompt),
               "width": dict(maximum=bound, value=native_size, info=size_hint, kind=SizeSlider),
               "height": dict(maximum=bound, value=native_size, info=size_hint, kind=SizeSlider)}
    controls, count, extras = {}, None, {}
    for row, names in itertools.groupby(fields.PANEL, key=lambda name: fields.FIELD[name].row):
        with gr.Row() if row else contextlib.nullcontext():
            for name in names:
                controls[name] = control(fields.FIELD[name], tab, **special.get(name, {}))
                if name == "num_images_per_prompt" and batch_count:
                    count = gr.Slider(1, fields.MAX_BATCH_COUNT, value=1, step=1, label="Batch count",
                                      elem_id=f"{tab}-batch-count", info="runs one after another; seeds continue")
                if name == "seed":
                    extras["random"] = gr.Button("Random", size="sm", elem_id=f"{tab}-random-seed")
                    extras["reuse"] = gr.Button("Reuse last", size="sm", elem_id=f"{tab}-reuse-seed")
    extras["random"].click(random_seed_value, outputs=controls["seed"], api_visibility="private", queue=False)
    return ParameterPanel(controls, extras["reuse"], count)


def random_seed_value() -> int:
    return -1


class Update(NamedTuple):
    """One thing a run has to show: a preview picture, the finished result, a status line."""
    picture: object = None
    result: object = None
    status: str | None = None
    step: bool = False  # a step's progress, which may be skipped when a newer one comes soon


STATUS_EVERY = 0.25  # seconds between status lines that carry no preview picture


def run_stream(stream, progress: gr.Progress, label: str = ""):
    """Yield Updates from a manager stream; user errors become gr.Error. `label` goes before the
    step count ("batch 2/3 · "). A Stop ends it with the status "Stopped at step k of N."."""
    started = time.perf_counter()
    try:
        for event in stream:
            if isinstance(event, Step):
                step, total = event.number, event.total
                progress((step, total), desc=f"{label}step {step}/{total}")
                rate = step / max(time.perf_counter() - started, 1e-9)
                status = f"{label}step {step} of {total} · {rate:.1f} steps/s" + (f" · {event.note}" if event.note else "")
                yield Update(picture=event.previews[0] if event.previews else None, status=status, step=True)
            else:
                for warning in event.result.warnings:
                    gr.Warning(warning)
                yield Update(result=event.result)
    except GenerationCancelled as exc:
        gr.Info(str(exc))
        yield Update(status=f"**{label}{exc}**")
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    finally:
        stream.close()


def client_gone(request: gr.Request):
    """A check of whether the client of the running event went away (its page closed, its
    gradio_client killed, its raw SSE stream dropped).

    Gradio notices a dropped event stream and marks the session's jobs dead (Queue.clean_events),
    but an event that is between two yields learns of it only at its next one, and the run went
    on for 31 minutes. This reads that mark, which is Gradio's internals (pinned gradio 6.31;
    test_security's abandoned-job test fails if it moves)."""
    from gradio.context import LocalContext

    blocks, session = LocalContext.blocks.get(None), request.session_hash

    def gone() -> bool:
        queue = getattr(blocks, "_queue", None)
        jobs = [job for jobs in getattr(queue, "active_jobs", None) or [] if jobs for job in jobs
                if job.session_hash == session]
        return bool(jobs) and not any(job.alive for job in jobs)

    return gone


async def stream_steps(stream, progress: gr.Progress, stop_flag, label: str = "", gone=None):
    """`run_stream` for async event functions: each step is awaited in a worker thread, so the
    event yields only what it has to show (a preview, or a status line every STATUS_EVERY s),
    not once a step.

    Gradio stops an event by cancelling its task (an API client's cancel, a closed page). A sync
    generator learns of that only at its next yield; here the await raises at once, and
    `stop_flag` makes the manager end the run after the step under way. `gone` (client_gone)
    is asked at every step: a client that went away stops its run within a step."""
    steps = run_stream(stream, progress, label)
    shown = 0.0
    try:
        while (item := await asyncio.to_thread(next, steps, None)) is not None:
            if gone is not None and gone():
                stop_flag.set()
            if item.step and item.picture is None and time.monotonic() - shown < STATUS_EVERY:
                continue
            shown = time.monotonic()
            yield item
    except asyncio.CancelledError:
        stop_flag.set()  # the abandoned thread sees the flag and finishes the stream itself
        raise
    except GeneratorExit:  # closed at a yield: no thread is inside `steps`
        stop_flag.set()
        steps.close()
        raise


def running_buttons():
    """While a run goes: Generate waits for it, Stop can stop it."""
    return gr.Button(interactive=False), gr.Button(interactive=True)


def idle_buttons():
    """No run: Generate can start one, Stop has nothing to stop."""
    return gr.Button(interactive=True), gr.Button(interactive=False)


def describe_result(result) -> str:
    seeds = ", ".join(str(s) for s in result.seeds)
    t = result.timings
    return (f"**Seed{'s' if len(result.seeds) > 1 else ''}:** {seeds} · {t['steps']} steps in "
            f"{t['total']:.2f} s ({1 / max(t['seconds_per_step'], 1e-9):.1f} steps/s) · "
            f"{result.request.width}x{result.request.height} · {result.scheduler_name}")
