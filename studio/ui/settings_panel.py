"""The "Model and settings" panel: which model, device, precision and memory options are in use,
and a box to switch model (in public mode, only to the configured list).
"""
from __future__ import annotations

import gradio as gr

from studio import models
from studio.errors import StudioError
from studio.requests import size_bound
from studio.ui import common, form


def describe(manager) -> str:
    info = manager.info
    memory = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in info.memory.items())
    return (f"**Model:** `{info.name}` ({info.family}, native {info.native_size}px) · "
            f"**Device:** {info.device} · **Precision:** {info.dtype}  \n**Memory options:** {memory}")


def build(manager, settings):
    """Lay out the panel; returns the model switch's event, for the tabs to follow it."""
    with gr.Accordion("Model and settings", open=False, elem_id="settings-panel"):
        status = gr.Markdown(describe(manager), elem_id="settings-status")
        choices = models.offered(settings)
        with gr.Row():
            model = gr.Dropdown(choices, value=settings.model, allow_custom_value=not settings.public,
                                label="Model (Hub id, diffusers folder or .safetensors file)",
                                elem_id="settings-model", scale=4)
            load = gr.Button("Load", elem_id="settings-load", scale=1)

    def switch(name: str) -> str:
        try:
            models.check_allowed(settings, name)
            manager.load(name)
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        return describe(manager)

    return load.click(switch, inputs=model, outputs=status, api_name="load_model",
                      concurrency_id=common.GPU, concurrency_limit=1)


def fit_sizes(manager, panels: list) -> list:
    """After a model switch: every panel's width and height bounded by the new model and set to
    its native size, and its Record attention box on only for a model with text. The sliders themselves change too, as Gradio checks every session's and
    API caller's value against them on the server; open pages see the new range on reload."""
    native, factor = manager.info.native_size, manager.settings.size_factor
    updates = []
    for panel in panels:
        for slider in (panel.width, panel.height):
            slider.maximum = size_bound(native, factor)
            updates.append(gr.update(maximum=slider.maximum, value=native, info=form.size_info(native, factor)))
        updates.append(gr.update(**form.attention_toggle(manager.info.family != "unconditional")))
    return updates
