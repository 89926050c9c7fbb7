"""The "PNG info" tab: drop a PNG, read the settings that made it, send them to txt2img or img2img.

It reads the AUTOMATIC1111 "parameters" text of our PNGs and of A1111's; studio.metadata parses
it and maps it to GenerationRequest arguments, so this module only shows fields and fills the
generation tabs. A value the studio cannot use (an unknown sampler, steps out of range) is a
warning naming the field and the value, and that control keeps what it had. `fill` also serves
the History tab's "Send to img2img". Reproduce makes a PNG's picture again here and compares
the pixels (studio.runcard says what differs); a branch's parent runs first, is branched, and
both go into History.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import gradio as gr
from PIL import Image, UnidentifiedImageError

from studio import branching, loras, metadata, runcard
from studio.errors import StudioError
from studio.fields import MAX_SIDE, PANEL
from studio.ui import cache, common, uploads

# The parameter panel's controls that a PNG fills, by their GenerationRequest names.
# A PNG's fields that the tabs have controls for (how a run was watched is not in its PNG)
SENT_FIELDS = [name for name in PANEL if name not in ("preview", "record_attention")]
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
    if manager is not None and values.get("Lora hashes"):
        notes += loras.hash_notes(values["Lora hashes"], manager.loras)
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


def verdict(path, result, index: int, values: dict[str, str]) -> str:
    """Whether the picture made again is the dropped one, and if not what differs (studio.runcard)."""
    ours = metadata.parse_parameters(metadata.format_parameters(result, result.seeds[index]))
    return runcard.compare(Image.open(path), result.images[index], values, ours)


def reproduce_here(manager, writer, branches_only: bool = False):
    """Reproduce (any PNG with parameters) and "Make this branch again" (`branches_only`)."""
    async def again(history, picture):
        text = parameters_of(picture) if picture is not None else None
        if text is None:
            raise gr.Error("image: drop a PNG with its parameters first (this studio's or AUTOMATIC1111's).")
        values = metadata.parse_parameters(text)
        if branches_only and branching.AT_STEP not in values:
            raise gr.Error(branching.NOT_A_BRANCH)
        number = str(history.next_number)  # a branch's parent's, once it is in History
        try:
            result, index, parent = await asyncio.to_thread(runcard.reproduce, manager, values, number)
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        if parent is not None:  # a branch: its parent ran first, and both go to History
            history = history.add_run(parent, await asyncio.to_thread(writer.write, parent))
            paths = await asyncio.to_thread(writer.write, result)
            history = history.add_branch(result, paths, number, result.lineage.at_step)
            made = (f"Ran the parent (#{number}) and branched it after step {result.lineage.at_step} "
                    f"(#{history.next_number - 1}); both are in History and the Denoising viewer.")
        else:
            paths = await asyncio.to_thread(writer.write, result)
            history = history.add_run(result, paths)
            made = f"Made again here as #{history.next_number - 1} (in History and the Denoising viewer)."
        info = f"{made} {verdict(picture, result, index, values)}  \n" + common.describe_result(result)
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
            with gr.Accordion("Reproduce: make it again here and compare the pixels", open=True,
                              elem_id="pnginfo-reproduce-box"):
                reproduce = gr.Button("Reproduce", elem_id="pnginfo-reproduce")
                reproduced = gr.Image(label="Made again here", interactive=False, format="png", height=256,
                                      elem_id="pnginfo-reproduced", elem_classes="studio-picture")
                reproduced_info = gr.Markdown(elem_id="pnginfo-reproduced-info")
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
    make.click(reproduce_here(manager, writer, branches_only=True), inputs=[history, image], outputs=[made, made_info, history],
               api_name="regenerate_branch", concurrency_id=common.GPU, concurrency_limit=1)
    reproduce.click(reproduce_here(manager, writer), inputs=[history, image],
                    outputs=[reproduced, reproduced_info, history], api_name="reproduce",
                    concurrency_id=common.GPU, concurrency_limit=1)
    to_txt2img.click(send_txt2img, inputs=image, outputs=[*targets(txt2img, False), tabs],
                     api_visibility="private")
    to_img2img.click(send_img2img, inputs=image, outputs=[*targets(img2img, True), tabs],
                     api_visibility="private")
    return {"image": image, "fields": fields}
