"""The "X/Y plot" tab: base settings, two axes (a parameter and its values each), one labelled grid.

The event is thin: it builds the base GenerationRequest as the generation tabs do, lets
studio.sweeps parse the axes, check every cell and run them through the manager, and shows the
grid and the single images. Stop reaches only this session's plot, between or inside cells.
"""
from __future__ import annotations

import gradio as gr

from studio import fields, schedulers, sweeps
from studio.errors import GenerationCancelled, StudioError
from studio.outputs import OutputWriter
from studio.ui import cache, common, form, generate_tab, stops, uploads

DEFAULT_SAMPLERS = ["Euler", "Euler a", "DDIM", "DPM++ 2M Karras"]  # the sampler axis's first pick
AXIS_CHOICES = [(label, kind) for kind, label in sweeps.KINDS.items()]
EXAMPLES = {  # what the values box suggests for each parameter
    sweeps.NOTHING: "(no values: one row or column)",
    "num_inference_steps": "5, 10, 20   or   10-30 (+10)",
    "guidance_scale": "1, 4, 7.5, 12   or   1-13 [4]",
    "scheduler": "Euler, Euler a, DDIM, DPM++ 2M Karras",
    "seed": "1-4   or   7, 42, 1234",
    "strength": "0.3-0.9 (+0.3)   (needs a starting picture)",
    sweeps.PROMPT_SR: "red, green, yellow   (the first is searched for in the prompt)",
}
DEFAULT_VALUES = {  # what the values box holds when its parameter is picked (the first example)
    sweeps.NOTHING: "",
    "num_inference_steps": "5, 10, 20",
    "guidance_scale": "1, 4, 7.5, 12",
    "scheduler": ", ".join(DEFAULT_SAMPLERS),
    "seed": "1-4",
    "strength": "0.3-0.9 (+0.3)",
    sweeps.PROMPT_SR: "red, green, yellow",
}


def reporter(progress, stop_flag, gone):
    """run_sweep's on_progress: Gradio's progress bar, and a client that went away stops the plot."""
    def report(cell, cells, step, steps):
        if gone():  # no more steps, no more cells
            stop_flag.set()
        progress((cell * max(steps, 1) + step, cells * max(steps, 1)),
                 desc=f"cell {cell + 1} of {cells} · step {step}/{steps}")

    return report


def axis_hint(kind: str):
    """A new parameter gets values of its own kind (guidance's "1, 4, 7.5, 12" is no sampler list).
    Samplers are picked from a list instead of typed: the text box gives way to it."""
    picked, spread = kind == "scheduler", spread_values(kind)
    text = gr.update(placeholder=EXAMPLES.get(kind, spread), value="" if picked else DEFAULT_VALUES.get(kind, spread),
                     interactive=kind != sweeps.NOTHING, visible=not picked)
    return text, gr.update(visible=picked, value=DEFAULT_SAMPLERS)


def spread_values(kind: str) -> str:
    """Five values over a numeric field's range ("0-1 [5]"), for an axis with no example of its own."""
    field = fields.FIELD.get(kind)
    return f"{field.low:g}-{field.high:g} [5]" if field is not None and field.kind in (int, float) else ""


def axis_text(kind: str, text: str, samplers) -> str:
    """The axis's values as sweeps.parse_axis reads them: for the sampler, the pick list's, or
    the text an API caller gave ("Euler, DDIM")."""
    return ", ".join(samplers) if kind == "scheduler" and samplers else text


def sampler_picker(axis: str) -> gr.Dropdown:
    return gr.Dropdown(schedulers.NAMES, value=DEFAULT_SAMPLERS, multiselect=True, visible=False,
                       label=f"{axis} samplers", elem_id=f"xyplot-{axis.lower()}-samplers", scale=2)


def plan_title(plan: sweeps.SweepPlan) -> str:
    """"Sampler x Steps": the plot's axes, for its History entry."""
    names = [sweeps.KINDS[a.kind] for a in (plan.x, plan.y) if a.kind != sweeps.NOTHING]
    return " x ".join(names) or "the base settings"


def describe_sweep(sweep: sweeps.SweepResult) -> str:
    plan, done = sweep.plan, len(sweep.results)
    seconds = sum(r.timings["total"] for r in sweep.results)
    head = f"**{plan.columns} x {plan.rows} plot**: {done} of {len(plan.requests)} cells in {seconds:.1f} s"
    stopped = " · **stopped**, the grey cells did not run" if sweep.cancelled else ""
    return f"{head} · seed {plan.base.seed}{stopped}"


def build(manager, writer: OutputWriter, history: gr.State, last_image: gr.State) -> dict:
    """Lay out the X/Y plot tab and wire it; returns its components (and the event function, `run`)
    by name. A finished plot joins the session's `history` as one entry, its cells as runs #n.1, ..."""
    gr.Markdown("Sweep one or two parameters and compare the pictures side by side. Values: "
                f"{sweeps.VALUE_SYNTAX}. At most {sweeps.MAX_CELLS} cells.")
    ui = layout(manager)
    ui["run"] = wire(manager, writer, ui, history, last_image)
    return ui


def axis_row(name: str, kind: str) -> dict:
    """An axis's type, its values box and (for samplers) its pick list, in one row."""
    low = name.lower()
    with gr.Row():
        return {f"{low}_type": gr.Dropdown(AXIS_CHOICES, value=kind, label=f"{name} type",
                                           elem_id=f"xyplot-{low}-type", scale=1),
                f"{low}_values": gr.Textbox(value=DEFAULT_VALUES[kind], label=f"{name} values",
                                            elem_id=f"xyplot-{low}-values", placeholder=EXAMPLES[kind], scale=2),
                f"{low}_samplers": sampler_picker(name)}


def layout(manager) -> dict:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            ui = {**axis_row("X", "guidance_scale"), **axis_row("Y", "seed")}
            with gr.Row():
                ui["generate"] = gr.Button("Generate plot", variant="primary", elem_id="xyplot-generate")
                ui["stop"] = gr.Button("Stop", variant="stop", elem_id="xyplot-stop", interactive=False)
            ui["panel"] = form.parameter_panel("xyplot", manager.info.native_size, manager.settings.size_factor,
                                               batch_count=False, has_text=manager.info.family != "unconditional",
                                               counter=form.token_counter(manager), lora_names=manager.loras.names)
            ui["panel"].preview.visible = False  # a plot shows no live preview; its runs decode none
            with gr.Accordion("Starting picture (image to image; a strength axis needs one)", open=False):
                ui["image"] = uploads.PictureUpload(label="Starting picture", type="filepath", image_mode=None,
                                                    sources=["upload", "clipboard"], elem_id="xyplot-image",
                                                    height=200)
                ui["strength"] = form.control(fields.FIELD["strength"], "xyplot")
        with gr.Column(scale=6):
            # not "studio-picture": the tiles are already enlarged crisply, and the labels are text
            ui["grid"] = gr.Image(label="X/Y plot", interactive=False, format="png", type="filepath",
                                  elem_id="xyplot-grid", height=480)
            ui["info"] = gr.Markdown(elem_id="xyplot-info")
            ui["gallery"] = gr.Gallery(label="Single images", format="png", columns=4, height=None, preview=False,
                                       elem_id="xyplot-gallery", interactive=False, object_fit="contain")
    return ui


AXIS_INPUTS = ("image", "strength", "x_type", "x_values", "y_type", "y_values", "x_samplers", "y_samplers")


def wire(manager, writer: OutputWriter, ui: dict, history: gr.State, last_image: gr.State):
    panel, generate, stop, last_seed = ui["panel"], ui["generate"], ui["stop"], gr.State(-1)

    def run(session, request: gr.Request, progress=gr.Progress(), image=None, strength=None, x_type=sweeps.NOTHING,
            x_values="", y_type=sweeps.NOTHING, y_values="", x_samplers=None, y_samplers=None, **values):
        try:
            picture = {} if image is None else {"image": image, "strength": strength}
            base = generate_tab.request_from("txt2img", {**values, **picture, "preview": "none"})
            plan = sweeps.plan_sweep(base, sweeps.parse_axis("X", x_type, axis_text(x_type, x_values, x_samplers)),
                                     sweeps.parse_axis("Y", y_type, axis_text(y_type, y_values, y_samplers)))
            with stops.run_flag(request.session_hash) as stop_flag:
                sweep = sweeps.run_sweep(manager, plan, writer=writer, cancel=stop_flag,
                                         on_progress=reporter(progress, stop_flag, common.client_gone(request)))
        except GenerationCancelled as exc:
            gr.Info(str(exc))
            return gr.skip(), gr.skip(), str(exc), *[gr.skip()] * 3
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        return shown(plan, sweep, session)

    # by name; API callers may leave the pick lists out and give samplers as text
    named = {**panel.inputs(), **{name: ui[name] for name in AXIS_INPUTS}}
    running = generate.click(common.running_buttons, outputs=[generate, stop], api_visibility="private",
                             queue=False).then(
        run, inputs=[history], inputs_kwargs=named,
        outputs=[ui["grid"], ui["gallery"], ui["info"], history, last_image, last_seed],
        api_name="xy_plot", **common.generation_queue(manager))
    running.then(common.idle_buttons, outputs=[generate, stop], api_visibility="private", queue=False)
    stop.click(generate_tab.stop_run, api_visibility="private", queue=False)
    panel.reuse_seed.click(generate_tab.reuse, inputs=last_seed, outputs=panel.seed, api_visibility="private",
                           queue=False)
    for axis in ("x", "y"):
        ui[f"{axis}_type"].change(axis_hint, inputs=ui[f"{axis}_type"],
                                  outputs=[ui[f"{axis}_values"], ui[f"{axis}_samplers"]],
                                  api_visibility="private", queue=False)
    return run


def shown(plan, sweep, session) -> tuple:
    """What a finished plot shows: the grid, the singles, the summary; the plot joins History."""
    for warning in {w for result in sweep.results for w in result.warnings}:
        gr.Warning(warning)
    if sweep.results:
        session = session.add_plot(sweep.results, sweep.files, sweep.grid_path, plan_title(plan))
    singles = [(cache.served(path), plan.cell_label(i // plan.base.num_images_per_prompt))
               for i, path in enumerate(sweep.paths)]
    return cache.served(sweep.grid_path), singles, describe_sweep(sweep), session, singles[-1][0], plan.base.seed
