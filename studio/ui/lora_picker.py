"""The LoRA picker: pick LoRAs of --lora-dir by name, each with a weight slider.

What a run gets is the `loras` field's text box ("shift-left:0.8, other:1", studio.loras), which
a person may also type in and which PNG info fills; the picker is a view of that text. A pick or
a slider move (a person's `input`) rewrites the text, and the text's `change` redraws the picker,
so the two never disagree and no event feeds itself.
"""
from __future__ import annotations

import gradio as gr

from studio import fields, loras
from studio.errors import StudioError

SLIDER = dict(minimum=loras.WEIGHT_LOW, maximum=loras.WEIGHT_HIGH, step=0.05)


def parsed(text: str) -> list[tuple[str, float]]:
    try:
        return loras.parse_selection(text or "")
    except StudioError:
        return []  # typed text that does not parse yet: the run names the fault


def picked_names(chosen, text):
    """The dropdown's names, each keeping the weight the text gave it (new ones: 1)."""
    weights = dict(parsed(text))
    return loras.text_of([(name, weights.get(name, 1.0)) for name in chosen or []])


def moved(k: int):
    def set_weight(text, weight):
        picked = parsed(text)
        if k < len(picked) and weight is not None:
            picked[k] = (picked[k][0], float(weight))
        return loras.text_of(picked)
    return set_weight


def redraw(text, offered: list[str]):
    """The accordion (its title names the pick; a pick opens it), the dropdown's value and each
    slider (shown, named and set) for the text's LoRAs."""
    picked = parsed(text)
    box = gr.Accordion(label=f"LoRA: {loras.text_of(picked)}", open=True) if picked else gr.Accordion(label="LoRA")
    sliders = [gr.Slider(visible=k < len(picked), label=f"{picked[k][0]} weight" if k < len(picked) else "weight",
                         value=picked[k][1] if k < len(picked) else 1.0) for k in range(loras.MAX_LORAS)]
    return [box, gr.Dropdown(choices=sorted(set(offered) | {n for n, _ in picked}), value=[n for n, _ in picked]),
            *sliders]


def picker(tab: str, names) -> gr.Textbox:
    """The picker in an accordion; `names()` lists the LoRAs on offer. Returns the field's box."""
    offered = names()
    with gr.Accordion("LoRA", open=False, elem_id=f"{tab}-lora") as accordion:
        with gr.Row():
            chosen = gr.Dropdown(offered, value=[], multiselect=True, max_choices=loras.MAX_LORAS, scale=5,
                                 label="LoRAs", elem_id=f"{tab}-lora-pick",
                                 info="several at once; or <lora:name:weight> in the prompt")
            refresh = gr.Button("Refresh list", size="sm", scale=1, elem_id=f"{tab}-lora-refresh")
        sliders = [gr.Slider(**SLIDER, value=1.0, label="weight", visible=False, elem_id=f"{tab}-lora-weight-{k}")
                   for k in range(loras.MAX_LORAS)]
        field = fields.FIELD["loras"]
        box = gr.Textbox(value=field.default, label=field.label, info=field.hint, elem_id=f"{tab}-loras")
    private = dict(api_visibility="private", queue=False)
    chosen.input(picked_names, inputs=[chosen, box], outputs=box, **private)
    for k, slider in enumerate(sliders):
        slider.input(moved(k), inputs=[box, slider], outputs=box, trigger_mode="always_last", **private)
    box.change(lambda text: redraw(text, names()), inputs=box, outputs=[accordion, chosen, *sliders], **private)
    refresh.click(lambda text: redraw(text, names())[1], inputs=box, outputs=chosen, **private)
    return box
