"""The viewer's "why" sections: branch a run from the step shown, the CFG lens at that step, and
when the picture settled. Laid out inside the "Denoising viewer" tab, under its step slider.

The work is in the core (studio.branching, studio.lens); this module lays out and wires events.
"""
from __future__ import annotations

import asyncio
import functools

import gradio as gr

from studio import branching, export, lens, schedulers, streams
from studio.errors import StudioError
from studio.fields import MAX_GUIDANCE, MAX_SEED
from studio.history import SessionHistory
from studio.ui import cache, common, stops

AS_RUN = "(as the run)"


def layout_branch() -> dict:
    ui = {}
    with gr.Accordion("Branch from this step: keep the steps so far, change something, run the rest",
                      open=True, elem_id="viewer-branch-box"):
        gr.Markdown("Leave a box empty to keep the run's value. Only the remaining steps run; with "
                    "nothing changed the branch gives the run's own pixels.")
        with gr.Row():
            ui["prompt"] = gr.Textbox(label="Prompt", placeholder=AS_RUN, elem_id="branch-prompt", scale=3)
            ui["negative_prompt"] = gr.Textbox(label="Negative prompt", placeholder=AS_RUN,
                                               elem_id="branch-negative-prompt", scale=2)
        with gr.Row():
            # Text boxes, not gr.Number: an empty one means "as the run" (a Number sends 0)
            ui["guidance_scale"] = gr.Textbox(label="Guidance (CFG scale)", placeholder=AS_RUN,
                                              elem_id="branch-guidance")
            ui["scheduler"] = gr.Dropdown([AS_RUN, *schedulers.NAMES], value=AS_RUN, label="Sampler",
                                          elem_id="branch-sampler", info="a new one carries on from the same noise level")
            ui["seed"] = gr.Textbox(label="Seed of the noise still to come", placeholder=AS_RUN, elem_id="branch-seed",
                                    info=f"-1: random; up to {MAX_SEED}")
            ui["go"] = gr.Button("Branch from this step", variant="primary", elem_id="viewer-branch")
        ui["compare"] = gr.Image(label="The run and its branch: predicted x0 at every step", interactive=False,
                                 format="png", elem_id="viewer-branch-compare")
        ui["info"] = gr.Markdown(elem_id="viewer-branch-info")
    return ui


def layout_lens() -> dict:
    ui = {}
    with gr.Accordion("CFG lens: what guidance did at this step", open=True, elem_id="viewer-lens-box"):
        ui["note"] = gr.Markdown(elem_id="viewer-lens-note")
        picture = dict(interactive=False, format="png", height=200, elem_classes="studio-picture")
        with gr.Row():
            ui["uncond"] = gr.Image(label="x0 without the prompt (unconditional)", elem_id="lens-uncond", **picture)
            ui["cond"] = gr.Image(label="x0 with the prompt (conditional)", elem_id="lens-cond", **picture)
            ui["guided"] = gr.Image(label="x0 guided at the scale below", elem_id="lens-guided", **picture)
            ui["difference"] = gr.Image(label="where they differ", elem_id="lens-difference", **picture)
        ui["scale"] = gr.Slider(0, MAX_GUIDANCE, value=7.5, step=0.5, label="Guidance at this step",
                                info="re-mixes x0 = x0_u + s·(x0_c − x0_u) from the kept predictions: no model call",
                                elem_id="lens-scale")
    with gr.Row():
        ui["settle_chart"] = gr.Image(label="When did the picture settle", interactive=False, format="png",
                                      elem_id="viewer-settle-chart")
        ui["settled"] = gr.Markdown(elem_id="viewer-settled")
    return ui


def chosen(history: SessionHistory, choice):
    """(its label number, the Run) of the viewer's chosen run; None is the newest."""
    from studio.ui.viewer_tab import pick

    result = pick(history, choice)
    run = next(r for r in history.runs() if r.result is result)
    return run.number, result


def lens_view(manager, history, choice, step, decoder, scale):
    """The lens pictures at 1-based `step` (the guided one at `scale`), its note, and the
    convergence chart and sentence."""
    if not history.runs():
        return (gr.skip(),) * 7
    _, result = chosen(history, choice)
    steps = result.trajectory.steps
    number = common.whole_index("step", step) if step else len(steps)
    if not 1 <= number <= len(steps):
        raise gr.Error(f"step={step!r} is not allowed: expected 1 to {len(steps)}.")
    moves = lens.changes(result.trajectory)
    chart = cache.picture_file(export.convergence_chart(moves, lens.SETTLED, lens.settled_at(moves) if moves else None,
                                                        number - 1)) if moves else None
    settled = lens.settled_sentence(result.trajectory)
    reason = lens.no_lens_reason(result)
    if reason:
        return None, None, None, None, reason, chart, settled
    at = steps[number - 1]
    try:
        u, c, g = (manager.decode(latents[:1], decoder)[0] for latents in
                   (at.x0_uncond.float(), at.x0_cond.float(), lens.remix(at, float(scale), result.request.guidance_scale)))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    note = lens.unguided_note(result, at) or (
        f"Step {number}: the run used guidance {result.request.guidance_scale:g}. Move the slider to see x0 "
        "at another scale; the sampler only moves part of the way towards it at each step.")
    return (cache.picture_file(u), cache.picture_file(c), cache.picture_file(g),
            cache.picture_file(lens.difference_map(u, c)), note, chart, settled)


def run_scale(history, choice):
    """The lens slider at the chosen run's own guidance."""
    if not history.runs():
        return gr.skip()
    return chosen(history, choice)[1].request.guidance_scale


def branch_sheet(manager, parent, branch, at_step: int, decoder: str):
    from PIL import Image

    from studio.ui.viewer_tab import step_picture

    rows = [[Image.open(step_picture(manager, r.trajectory, s.index, "x0", decoder)) for s in r.trajectory.steps]
            for r in (parent, branch)]
    return export.branch_sheet(rows, at_step, ("the run", "its branch"))


def number_or_none(name: str, text, kind):
    """An empty box: None ("as the run"); else the number, or an error naming the box. API
    callers may send the number itself."""
    if text is None or str(text).strip() == "":
        return None
    try:
        return kind(str(text).strip()) if not isinstance(text, (int, float)) or isinstance(text, bool) else text
    except ValueError:
        raise gr.Error(f"{name}={text!r} is not a number; leave it empty to keep the run's.") from None


def changes_of(prompt, negative_prompt, guidance_scale, scheduler, seed) -> dict:
    """The branch's changes from the boxes: empty, or "(as the run)", keeps the run's value."""
    return {"prompt": prompt or None, "negative_prompt": negative_prompt or None,
            "guidance_scale": number_or_none("guidance_scale", guidance_scale, float),
            "scheduler": None if scheduler in (None, "", AS_RUN) else scheduler,
            "seed": number_or_none("seed", seed, int)}


def wire(manager, writer, viewer: dict, ui: dict, history: gr.State) -> None:
    gpu = dict(concurrency_id=common.GPU, concurrency_limit=1)
    choice, step, decoder = viewer["choice"], viewer["step"], viewer["decoder"]

    async def branch(history_, choice_, request: gr.Request, at_step=None, progress=gr.Progress(), **boxes):
        number, parent = chosen(history_, choice_)
        k = common.whole_index("at_step", at_step) if at_step not in (None, "") else len(parent.trajectory.steps)
        run = functools.partial(branching.branch, manager, parent, k, parent_run=number, **changes_of(**boxes))
        result = None
        with stops.run_flag(request.session_hash) as stop_flag:
            async for update in common.stream_steps(streams.stream(manager, parent.request, stop_flag, run=run),
                                                    progress, stop_flag, f"branch of #{number} · "):
                result = update.result or result
        if result is None:
            raise gr.Error("The branch was stopped before it finished.")
        paths = await asyncio.to_thread(writer.write, result)
        sheet = await asyncio.to_thread(branch_sheet, manager, parent, result, k, "fast")
        info = (f"Branch of #{number} after step {k}: ran steps {k + 1} to {len(result.trajectory.steps)}. "
                + common.describe_result(result))
        return cache.picture_file(sheet), info, history_.add_branch(result, paths, number, k)

    named = {name: ui[name] for name in ("prompt", "negative_prompt", "guidance_scale", "scheduler", "seed")}
    ran = ui["go"].click(branch, inputs=[history, choice], inputs_kwargs={"at_step": step, **named},
                         outputs=[ui["compare"], ui["info"], history], api_name="branch", **gpu)
    viewer["loaded"].append(ran.success(viewer["open_newest"], inputs=[history, decoder], outputs=viewer["shown"],
                                        api_visibility="private", **gpu))


def wire_lens(manager, viewer: dict, ui: dict, history: gr.State) -> None:
    gpu = dict(concurrency_id=common.GPU, concurrency_limit=1)
    choice, step, decoder = viewer["choice"], viewer["step"], viewer["decoder"]
    shown = [ui[name] for name in ("uncond", "cond", "guided", "difference", "note", "settle_chart", "settled")]
    view = functools.partial(lens_view, manager)
    step.change(view, inputs=[history, choice, step, decoder, ui["scale"]], outputs=shown,
                api_name="viewer_lens", show_progress="hidden", **gpu)
    ui["scale"].change(view, inputs=[history, choice, step, decoder, ui["scale"]], outputs=shown,
                        api_visibility="private", show_progress="hidden", **gpu)
    for loaded in viewer["loaded"]:  # a run opened in the viewer: the lens at its own scale
        loaded.then(run_scale, inputs=[history, choice], outputs=ui["scale"], api_visibility="private",
                    queue=False).then(view, inputs=[history, choice, step, decoder, ui["scale"]], outputs=shown,
                                      api_visibility="private", show_progress="hidden", **gpu)
