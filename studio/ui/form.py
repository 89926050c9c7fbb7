"""The parameter panel: a control for each request field of studio.fields.PANEL, laid out by the
table's rows, bound to events by field name."""
from __future__ import annotations

import contextlib
import itertools

import gradio as gr

from studio import fields, weighting
from studio.ui import lora_picker
from studio.requests import SIZE_FACTOR, size_bound


PREVIEW_CHOICES = [("Off", "none"), ("Fast (linear)", "fast"), ("Full VAE", "full")]


TINY_CHOICE = ("Tiny VAE (TAESD)", "tiny")  # offered only when the studio has one (--tiny-vae)


class WholeNumber(gr.Number):
    """gr.Number(precision=0) rounds what it is given: seed 1.5 ran as seed 2. This one refuses
    a value with a fraction, naming it (API callers pass any number). Stock front end."""

    is_template = True

    def preprocess(self, payload):
        if isinstance(payload, float) and not payload.is_integer():
            raise gr.Error(f"{str(self.label).split(' (')[0].lower()}={payload!r} is not allowed: "
                           "expected a whole number.")
        return super().preprocess(payload)


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
    if field.kind is bool:
        return gr.Checkbox(value=value, **{"info": field.hint or None, **common, **options})
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
                    prompt: str | None = None, has_text: bool = True, counter=None, lora_names=list) -> ParameterPanel:
    """The controls of studio.fields.PANEL, a row per the table's `row`. With `batch_count`, also a
    "Batch count" slider (`panel.batch_count`, not in `inputs()`: events that run batches add it).
    `counter(text)` (token_counter), if given, shows "12/75" under the prompt and negative prompt;
    `lora_names()` lists the LoRAs the picker offers (studio.ui.lora_picker)."""
    bound, size_hint = size_bound(native_size, size_factor), size_info(native_size, size_factor)
    special = {"preview": dict(choices=previews), "prompt": {} if prompt is None else dict(value=prompt),
               "width": dict(maximum=bound, value=native_size, info=size_hint, kind=SizeSlider),
               "height": dict(maximum=bound, value=native_size, info=size_hint, kind=SizeSlider),
               "record_attention": attention_toggle(has_text)}
    controls, count, extras = {}, None, {}
    for row, names in itertools.groupby(fields.PANEL, key=lambda name: fields.FIELD[name].row):
        with gr.Row() if row else contextlib.nullcontext():
            for name in names:
                if name == "loras":
                    controls[name] = lora_picker.picker(tab, lora_names)
                    continue
                controls[name] = control(fields.FIELD[name], tab, **special.get(name, {}))
                if name in ("prompt", "negative_prompt") and counter is not None:
                    show_token_count(controls[name], counter, f"{tab}-{name.replace('_', '-')}-tokens")
                if name == "num_images_per_prompt" and batch_count:
                    count = gr.Slider(1, fields.MAX_BATCH_COUNT, value=1, step=1, label="Batch count",
                                      elem_id=f"{tab}-batch-count", info="runs one after another; seeds continue")
                if name == "seed":
                    extras["random"] = gr.Button("Random", size="sm", elem_id=f"{tab}-random-seed")
                    extras["reuse"] = gr.Button("Reuse last", size="sm", elem_id=f"{tab}-reuse-seed")
    extras["random"].click(random_seed_value, outputs=controls["seed"], api_visibility="private", queue=False)
    return ParameterPanel(controls, extras["reuse"], count)


def token_counter(manager):
    """"12/75": the prompt's tokens and what its chunks hold (A1111's counter; studio.weighting),
    for the loaded model's tokenizer. A prompt past one chunk is encoded in chunks, not cut."""
    def count(text) -> str:
        tokenizer = getattr(manager.loaded.txt2img, "tokenizer", None)
        if tokenizer is None:
            return ""
        used, room = weighting.token_count(tokenizer, text or "")
        return f"{used}/{room} tokens" + (" · in chunks" if used > tokenizer.model_max_length - 2 else "")
    return count


def show_token_count(box: gr.Textbox, counter, elem_id: str) -> None:
    shown = gr.Markdown(counter(box.value), elem_id=elem_id, elem_classes="studio-token-count")
    box.change(counter, inputs=box, outputs=shown, api_visibility="private", queue=False, trigger_mode="always_last")


def attention_toggle(has_text: bool) -> dict:
    """The Record attention box's options: an unconditional model has no text to attend to."""
    if has_text:
        return dict(interactive=True, info=fields.FIELD["record_attention"].hint)
    return dict(interactive=False, value=False, info="this model is unconditional: it has no text, so no attention to words")


def random_seed_value() -> int:
    return -1
