"""The "PNG info" tab: drop a PNG, read the settings that made it, send them to txt2img or img2img.

It reads the AUTOMATIC1111 "parameters" text of our PNGs and of A1111's; studio.metadata parses
it and maps it to GenerationRequest arguments, so this module only shows fields and fills the
generation tabs. A value the studio cannot use (an unknown sampler, steps out of range) is a
warning naming the field and the value, and that control keeps what it had. `fill` also serves
the History tab's "Send to img2img". A branch's PNG (studio.branching) can be made again: its
parent runs from the recorded values, is branched, and both go into History.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image, UnidentifiedImageError

from studio import branching, metadata
from studio.errors import StudioError
from studio.fields import MAX_SIDE, PANEL
from studio.ui import cache, common, uploads

# The parameter panel's controls that a PNG fills, by their GenerationRequest names.
SENT_FIELDS = [name for name in PANEL if name != "preview"]  # a PNG's fields that the tabs have controls for
HEADERS = ["Field", "Value"]


def parameters_of(path) -> str | None:
    """The parameters text of the picture at `path`, or None; gr.Error if it is not a picture."""
    try:
        return metadata.parameters_in_file(path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise gr.Error(f"image={Path(path).name!r} is not a picture this studio can open ({exc}).") from exc


def png_info(path, manager=None):
    """(parameters text, [[field, value], ...], notes) for the PNG at `path`."""
    if path is None:
        return "", [], ""
    text = parameters_of(path)
    if text is None:
        return "", [], "This picture carries no `parameters` text (A1111 or Diffusion Studio settings)."
    values = metadata.parse_parameters(text)
    _, notes = metadata.request_fields(values)
    if manager is not None and values.get("Model"):
        loaded = Path(manager.info.name).name
        if values["Model"] != loaded:
            notes.append(f"Made with the model {values['Model']!r}; the studio has {loaded!r} loaded, so "
                         "the same settings will give a different picture.")
    return text, [[k, v] for k, v in values.items()], "\n".join(f"- ⚠️ {note}" for note in notes)


def fill(path, target: str, with_picture: bool, max_side: int = MAX_SIDE) -> list:
    """Values for the `target` tab's controls (SENT_FIELDS, then picture and strength if
    `with_picture`), then the Tabs update that switches to it. Unusable values: gr.Warning, skipped;
    so is a size above `max_side`, the target's slider bound for the loaded model."""
    if path is None:
        raise gr.Error("image: drop or upload a PNG first.")
    text = parameters_of(path)
    if text is not None:
        fields, notes = metadata.request_fields(metadata.parse_parameters(text))
    elif with_picture:
        fields, notes = {}, ["This picture carries no parameters text: only the picture was sent."]
    else:
        raise gr.Error(f"image={Path(path).name!r} carries no parameters text: nothing to send.")
    if max(fields.get("width", 0), fields.get("height", 0)) > max_side:
        notes.append(f"Size: '{fields.pop('width')}x{fields.pop('height')}' is larger than the loaded model "
                     f"takes here (up to {max_side} a side): the size was kept.")
    for note in notes:
        gr.Warning(note)
    if fields.get("clip_skip") is not None:
        gr.Warning(f"Clip skip: {fields['clip_skip']} has no control in this UI (the CLI has --clip-skip); "
                   "runs from here use the model's own text encoder output.")
    values = [fields.get(name, gr.skip()) for name in SENT_FIELDS]
    if with_picture:
        values += [cache.served(path), fields.get("strength", gr.skip())]
    return [*values, gr.Tabs(selected=target)]


def targets(tab: dict, with_picture: bool) -> list:
    """The controls `fill` writes, in its order, from a generation tab's components."""
    controls = [getattr(tab["panel"], name) for name in SENT_FIELDS]
    return controls + ([tab["image"], tab["strength"]] if with_picture else [])


def is_branch(path):
    """Show "make it again" only for a branch's PNG (`read` reports a file that is not one)."""
    try:
        text = parameters_of(path) if path is not None else None
    except gr.Error:
        text = None
    return gr.Column(visible=text is not None and branching.AT_STEP in metadata.parse_parameters(text))


def seed_index(result, seed: str | None) -> int:
    """Which of a batch's pictures has the PNG's seed (the first if none)."""
    return next((i for i, s in enumerate(result.seeds) if str(s) == seed), 0)


def same_pixels(path, made) -> str:
    """Whether the dropped picture and the one made again are the same pixels."""
    dropped = np.asarray(Image.open(path).convert("RGB"), dtype=int)
    made = np.asarray(made.convert("RGB"), dtype=int)
    if dropped.shape != made.shape:
        return f"It is {made.shape[1]}x{made.shape[0]}, the dropped picture {dropped.shape[1]}x{dropped.shape[0]}."
    worst = int(np.abs(dropped - made).max())
    return ("It is the dropped picture, pixel for pixel." if worst == 0 else
            f"It differs from the dropped picture by up to {worst}/255 (another model, device or version?).")


def make_again(manager, writer):
    async def again(history, picture):
        text = parameters_of(picture) if picture is not None else None
        if text is None:
            raise gr.Error("image: drop a branch's PNG first.")
        values = metadata.parse_parameters(text)
        number = str(history.next_number)  # the parent's, once it is in History
        try:
            parent, result = await asyncio.to_thread(branching.regenerate, manager, values, number)
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        history = history.add_run(parent, await asyncio.to_thread(writer.write, parent))
        k = result.lineage.at_step
        paths = await asyncio.to_thread(writer.write, result)
        history = history.add_branch(result, paths, number, k)
        index = seed_index(result, values.get("Seed"))
        info = (f"Ran the parent (#{number}) and branched it after step {k} (#{history.next_number - 1}); both are "
                f"in History and the Denoising viewer. {same_pixels(picture, result.images[index])}  \n"
                + common.describe_result(result))
        return cache.served(paths[index]), info, history

    return again


def build(manager, writer, history: gr.State, txt2img: dict, img2img: dict, tabs: gr.Tabs) -> dict:
    gr.Markdown("Drop a PNG made by this studio or by AUTOMATIC1111 to read the settings that made it, "
                "then send them to a generation tab.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            image = uploads.PngUpload(label="PNG", type="filepath", image_mode=None, sources=["upload"],
                             elem_id="pnginfo-image", elem_classes="studio-picture", height=256)
            with gr.Row():
                to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo-to-txt2img")
                to_img2img = gr.Button("Send to img2img", elem_id="pnginfo-to-img2img")
            with gr.Column(visible=False, elem_id="pnginfo-branch-box") as branch_box:
                gr.Markdown("This picture is a **branch** of another run. Sending it to txt2img starts afresh "
                            "from the branch's settings, which is another picture; this runs the parent "
                            "and branches it again.")
                make = gr.Button("Make this branch again", variant="primary", elem_id="pnginfo-regenerate")
                made = gr.Image(label="Made again", interactive=False, format="png", height=256,
                                elem_id="pnginfo-regenerated", elem_classes="studio-picture")
                made_info = gr.Markdown(elem_id="pnginfo-regenerated-info")
        with gr.Column(scale=6):
            fields = gr.Dataframe(headers=HEADERS, label="Parameters", interactive=False, wrap=True,
                                  column_widths=["30%", "70%"], elem_id="pnginfo-fields")
            notes = gr.Markdown(elem_id="pnginfo-notes")
            text = gr.Textbox(label="Parameters text", lines=4, interactive=False, elem_id="pnginfo-text")

    def read(picture):  # the API's parameter name
        return png_info(picture, manager)

    def send_txt2img(path):
        return fill(path, "txt2img", with_picture=False, max_side=txt2img["panel"].width.maximum)

    def send_img2img(path):
        return fill(path, "img2img", with_picture=True, max_side=img2img["panel"].width.maximum)

    # Queued (the default), not queue=False: only queued events show gr.Warning in the browser.
    image.change(read, inputs=image, outputs=[text, fields, notes], api_name="png_info")
    image.change(is_branch, inputs=image, outputs=branch_box, api_visibility="private")
    make.click(make_again(manager, writer), inputs=[history, image], outputs=[made, made_info, history],
               api_name="regenerate_branch", concurrency_id=common.GPU, concurrency_limit=1)
    to_txt2img.click(send_txt2img, inputs=image, outputs=[*targets(txt2img, False), tabs],
                     api_visibility="private")
    to_img2img.click(send_img2img, inputs=image, outputs=[*targets(img2img, True), tabs],
                     api_visibility="private")
    return {"image": image, "fields": fields}
