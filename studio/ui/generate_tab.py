"""The "Text to image" and "Image to image" tabs: a parameter panel, Generate and Stop, results.

Both tabs are one layout; img2img adds the input picture and the strength slider, which says how
many of the N steps will run. Event functions are thin: they build a GenerationRequest, stream
it through the manager, and show previews, the gallery and the seeds.
"""
from __future__ import annotations

import asyncio

import gradio as gr

from studio import fields
from studio.errors import StudioError
from studio.requests import GenerationRequest, batches
from studio.ui import cache, common, form, masks, stops, uploads
from studio.outputs import OutputWriter


def strength_note(steps, strength) -> str:
    run = fields.steps_to_run(int(steps), float(strength))
    if run < 1:
        return f"⚠️ int({int(steps)} × {strength:g}) = 0: no step would run. Raise the strength or the steps."
    return (f"**{run} of {int(steps)} steps will run**: the picture is noised to step "
            f"{int(steps) - run} and denoised from there. Low strength keeps more of it.")


def build(mode: str, manager, writer: OutputWriter, history: gr.State, last_image: gr.State,
          prompt: str | None = None) -> dict:
    """Lay out one generation tab and wire its events; returns its components by name for other
    tabs to use. Each finished run (each batch of a batch count) joins the session's `history`
    (a studio.history.SessionHistory)."""
    ui = layout(mode, manager, prompt)
    wire_run(mode, manager, writer, ui, history, last_image)
    if mode == "img2img":
        wire_starting_point(manager, ui)
    return ui


def layout(mode: str, manager, prompt: str | None) -> dict:
    tab, ui = mode, {"image": None, "strength": None}
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            if mode == "img2img":
                ui["image"] = uploads.PictureUpload(label="Starting picture", type="filepath", image_mode=None,
                                                    sources=["upload", "clipboard"], elem_id="img2img-image",
                                                    height=256, elem_classes="studio-picture")
                ui["strength"] = form.control(fields.FIELD["strength"], tab)
                ui["steps_note"] = gr.Markdown(strength_note(fields.FIELD["num_inference_steps"].default,
                                                             ui["strength"].value), elem_id="img2img-steps-note")
                ui["start_picture"] = gr.Image(label="Where the run starts: the picture noised by this strength",
                                               interactive=False, elem_classes="studio-picture", format="png",
                                               height=160, elem_id="img2img-start-preview")
                ui |= masks.layout(tab)
            ui["panel"] = form.parameter_panel(tab, manager.info.native_size, manager.settings.size_factor,
                                               form.preview_choices(manager), prompt=prompt, has_text=manager.info.family != "unconditional",
                                               counter=form.token_counter(manager), lora_names=manager.loras.names)
            with gr.Row():
                ui["generate"] = gr.Button("Generate", variant="primary", elem_id=f"{tab}-generate")
                ui["stop"] = gr.Button("Stop", variant="stop", elem_id=f"{tab}-stop", interactive=False)
        with gr.Column(scale=6):
            ui["preview"] = gr.Image(label="Live preview", interactive=False, elem_classes="studio-picture",
                                     elem_id=f"{tab}-live-preview", height=256, format="png")
            ui["gallery"] = gr.Gallery(label="Result", format="png", columns=4, height=420, preview=True,
                                       elem_id=f"{tab}-gallery", interactive=False, object_fit="contain")
            ui["info"] = gr.Markdown(elem_id=f"{tab}-info")
    return ui


def wire_run(mode: str, manager, writer: OutputWriter, ui: dict, history: gr.State, last_image: gr.State) -> None:
    panel, generate, stop, last_seed = ui["panel"], ui["generate"], ui["stop"], gr.State(-1)
    shown = [ui["preview"], ui["gallery"], ui["info"]]

    # The masks default to None here, so API callers may leave them out (Gradio reads the signature)
    async def run(session, request: gr.Request, progress=gr.Progress(), batch_count=1, mask_image=None,
                  mask_paint=None, **values):
        if mode == "img2img":
            values |= {"mask_image": mask_image, "mask_paint": mask_paint}
        try:
            plan = batches(request_from(mode, values), batch_count)
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        with stops.run_flag(request.session_hash) as stop_flag:
            async for outputs in run_plan(manager, writer, plan, session, stop_flag, progress,
                                          common.client_gone(request)):
                yield outputs

    # by name: the API's parameters are the request's fields (prompt, num_inference_steps, ...)
    img2img = ("image", "strength", "mask_paint", "mask_image", *masks.OPTIONS) if mode == "img2img" else ()
    named = {**panel.inputs(), **{name: ui[name] for name in img2img}, "batch_count": panel.batch_count}
    # Generate first clears the last run's picture and seed line and swaps the buttons, so a
    # second press cannot be lost silently and Stop is there only while something runs.
    running = generate.click(clear_for_run, outputs=[generate, stop, *shown], api_visibility="private",
                             queue=False).then(
        run, inputs=[history], inputs_kwargs=named, outputs=[*shown, last_seed, history, last_image],
        api_name=mode, **common.generation_queue(manager))
    running.success(open_first, outputs=ui["gallery"], api_visibility="private", queue=False)
    running.then(common.idle_buttons, outputs=[generate, stop], api_visibility="private", queue=False)
    stop.click(stop_run, api_name=f"stop_{mode}", queue=False)  # API clients: stops this session's run
    panel.reuse_seed.click(reuse, inputs=last_seed, outputs=panel.seed, api_visibility="private", queue=False)


def wire_starting_point(manager, ui: dict) -> None:
    """img2img: the strength note, and the picture noised to where the run starts."""
    image, strength, steps = ui["image"], ui["strength"], ui["panel"].num_inference_steps
    image.change(masks.canvas_of, inputs=image, outputs=ui["mask_paint"], api_visibility="private", queue=False)
    for control in (strength, steps):
        control.change(strength_note, inputs=[steps, strength], outputs=ui["steps_note"],
                       api_visibility="private", queue=False)

    def starting_point(picture, steps_, strength_):
        if picture is None or strength_note(steps_, strength_).startswith("⚠️"):
            return None
        try:
            start = manager.forward_process(picture, strength=strength_, num_inference_steps=steps_)
            return cache.picture_file(start.picture)
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc

    for trigger in (image.change, strength.release, steps.release):
        trigger(starting_point, inputs=[image, steps, strength], outputs=ui["start_picture"],
                api_visibility="private", concurrency_id=common.GPU, concurrency_limit=1)


async def run_plan(manager, writer: OutputWriter, plan: list, session, stop_flag, progress, gone):
    """Run a batch count's requests one after another; yield the tab's outputs (preview, gallery,
    info, last seed, history, last picture) as steps and batches come. Stopped: the batches done
    so far stay. Steps are awaited, not yielded: the event yields only a preview picture, as
    messages to the browser cost milliseconds each (benchmarks/RESULTS.md, section 4)."""
    finals, shown = [], []
    for k, generation in enumerate(plan):
        label = f"batch {k + 1}/{len(plan)} · " if len(plan) > 1 else ""
        final = None
        async for update in common.stream_steps(manager.stream(generation, stop_flag), progress, stop_flag,
                                                label, gone):
            if update.result is not None:
                final = update.result
            else:  # a step's preview and status line, or "Stopped at step k of N."
                lines = [common.describe_result(f) for f in finals] + [update.status]
                yield (gr.skip() if update.picture is None else cache.picture_file(update.picture), gr.skip(),
                       "  \n".join(lines), *[gr.skip()] * 3)
        if final is None:
            break
        paths = await asyncio.to_thread(writer.write, final)
        finals.append(final)
        shown += [cache.served(path) for path in paths]  # never the guessable --outputs names
        session = session.add_run(final, paths)
        # each batch shows as soon as it is done, with the ones before it
        yield (gr.skip(), shown, "  \n".join(common.describe_result(f) for f in finals), finals[0].seeds[0],
               session, shown[0])


def stop_run(request: gr.Request) -> None:
    """Stop this session's run at its next step; the run then ends normally and says so.
    (Gradio's own `cancels=` would close the generator mid-stream, which its front end
    sometimes shows as "Error".)"""
    stops.stop(request.session_hash)


def clear_for_run():
    """The buttons of a running tab, and no picture or seed line of the run before."""
    return *common.running_buttons(), None, None, "Starting…"


def open_first():
    """Open the result gallery's preview on its first picture: the picture whole, not a grid cell
    cropped to the gallery's height. A separate UI step, so /txt2img still returns a plain list."""
    return gr.Gallery(selected_index=0)


def reuse(seed: int) -> int:
    return seed


def request_from(mode: str, values: dict) -> GenerationRequest:
    """The request of a tab's controls, given by field name."""
    if mode == "img2img" and values.get("image") is None:
        raise gr.Error("image: upload a starting picture first.")
    seed = -1 if values.get("seed") is None else values["seed"]
    mask = masks.mask_of(values) if mode == "img2img" else None
    return GenerationRequest(**{**values, "seed": seed, "preview": values.get("preview") or "none"}, mask_image=mask)
