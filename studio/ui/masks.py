"""The Image to image tab's inpainting panel: paint the area to repaint on the starting picture
(gr.ImageEditor), or upload a mask; and the mask options (studio.fields' inpaint fields).

What is painted is the mask: every pixel of a painted layer that is not transparent, whatever
its colour. An uploaded mask (white: repaint) wins over a painted one. No mask: plain image to
image. The inpainting itself is the core's (studio.inpainting).
"""
from __future__ import annotations

import numpy as np
import gradio as gr
from PIL import Image

from studio import fields
from studio.ui import form, uploads

OPTIONS = [f.name for f in fields.FIELDS if f.inpaint]  # mask_blur, masked_content, inpaint_only_masked


def layout(tab: str) -> dict:
    """The panel's components: `mask_paint` (the editor), `mask_image` (an upload) and the options."""
    ui = {}
    with gr.Accordion("Inpaint: paint the area to repaint (or upload a mask)", open=False, elem_id=f"{tab}-inpaint"):
        ui["mask_paint"] = gr.ImageEditor(
            label="Paint over the picture: what you paint is repainted, the rest is kept", type="pil",
            image_mode="RGBA", sources=[], layers=False, transforms=(), elem_id=f"{tab}-mask-paint",
            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=6), height=320,
            elem_classes="studio-picture")
        ui["mask_image"] = uploads.PictureUpload(label="…or upload a mask (white: repaint, black: keep)",
                                                 type="filepath", image_mode=None, sources=["upload"],
                                                 elem_id=f"{tab}-mask-upload", height=160, elem_classes="studio-picture")
        with gr.Row():
            for name in OPTIONS:
                ui[name] = form.control(fields.FIELD[name], tab)
    return ui


def canvas_of(picture) -> dict | None:
    """The editor's value for a new starting picture: it, with nothing painted on it yet."""
    return None if picture is None else {"background": picture, "layers": [], "composite": None}


def painted(editor) -> Image.Image | None:
    """The mask the person painted (white where any layer is not transparent), or None."""
    layers = [layer for layer in (editor or {}).get("layers") or [] if layer is not None]
    if not layers:
        return None
    alpha = np.any([np.asarray(layer.convert("RGBA"))[..., 3] > 0 for layer in layers], axis=0)
    return Image.fromarray((alpha * 255).astype(np.uint8), "L") if alpha.any() else None


def mask_of(values: dict):
    """Take the panel's editor value out of the tab's named values; the mask the run gets."""
    drawn = painted(values.pop("mask_paint", None))
    return values.pop("mask_image", None) or drawn
