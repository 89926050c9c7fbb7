"""The "X/Y plot" tab: base settings, two axes (a parameter and its values each), one labelled grid.

The event is thin: it builds the base GenerationRequest as the generation tabs do, lets
studio.sweeps parse the axes, check every cell and run them through the manager, and shows the
grid and the single images. Stop reaches only this session's plot, between or inside cells.
"""
from __future__ import annotations

import threading

import gradio as gr

from studio import sweeps
from studio.errors import GenerationCancelled, StudioError
from studio.outputs import OutputWriter
from studio.ui import common, generate_tab

DEFAULT_PROMPT = "a small red circle at the top left on a blue background"
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
    "scheduler": "Euler, Euler a, DDIM, DPM++ 2M Karras",
    "seed": "1-4",
    "strength": "0.3-0.9 (+0.3)",
    sweeps.PROMPT_SR: "red, green, yellow",
}
# Stop flags by Gradio session, apart from the generation tabs' flags.
stops: dict[str, threading.Event] = {}


def axis_hint(kind: str):
    """A new parameter gets values of its own kind (guidance's "1, 4, 7.5, 12" is no sampler list)."""
    return gr.update(placeholder=EXAMPLES.get(kind, ""), value=DEFAULT_VALUES.get(kind, ""),
                     interactive=kind != sweeps.NOTHING)


def describe_sweep(sweep: sweeps.SweepResult) -> str:
    plan, done = sweep.plan, len(sweep.results)
    seconds = sum(r.timings["total"] for r in sweep.results)
    head = f"**{plan.columns} x {plan.rows} plot**: {done} of {len(plan.requests)} cells in {seconds:.1f} s"
    stopped = " · **stopped**, the grey cells did not run" if sweep.cancelled else ""
    return f"{head} · seed {plan.base.seed}{stopped}"


def build(manager, writer: OutputWriter, runs: gr.State, last_image: gr.State,
          run_files: gr.State | None = None) -> dict:
    """Lay out the X/Y plot tab; returns its components (and the event function, `run`) by name.

    With `run_files` (each run's PNG paths, side by side with `runs`, as generate_tab keeps them)
    the plot's cells join the session's history; without it they stay out of it, since growing
    `runs` alone would pair the history's runs with the wrong files."""
    if run_files is None:
        runs, run_files = gr.State([]), gr.State([])  # this tab's own, seen by no other tab
    gr.Markdown("Sweep one or two parameters and compare the pictures side by side. Values: "
                f"{sweeps.VALUE_SYNTAX}. At most {sweeps.MAX_CELLS} cells.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            with gr.Row():
                x_type = gr.Dropdown(AXIS_CHOICES, value="guidance_scale", label="X type", elem_id="xyplot-x-type",
                                     scale=1)
                x_values = gr.Textbox(value="1, 4, 7.5, 12", label="X values", elem_id="xyplot-x-values",
                                      placeholder=EXAMPLES["guidance_scale"], scale=2)
            with gr.Row():
                y_type = gr.Dropdown(AXIS_CHOICES, value="seed", label="Y type", elem_id="xyplot-y-type", scale=1)
                y_values = gr.Textbox(value="1-3", label="Y values", elem_id="xyplot-y-values",
                                      placeholder=EXAMPLES["seed"], scale=2)
            with gr.Row():
                generate = gr.Button("Generate plot", variant="primary", elem_id="xyplot-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="xyplot-stop", interactive=False)
            panel = common.parameter_panel("xyplot", manager.info.native_size, DEFAULT_PROMPT, batch_count=False)
            panel.preview.visible = False  # a plot shows no live preview; its runs decode none
            with gr.Accordion("Starting picture (image to image; a strength axis needs one)", open=False):
                image = common.PictureUpload(label="Starting picture", type="filepath", image_mode=None,
                                 sources=["upload", "clipboard"], elem_id="xyplot-image", height=200)
                strength = gr.Slider(0.01, 1.0, value=0.75, step=0.01, label="Strength (denoising strength)",
                                     elem_id="xyplot-strength")
        with gr.Column(scale=6):
            # not "studio-picture": the tiles are already enlarged crisply, and the labels are text
            grid = gr.Image(label="X/Y plot", interactive=False, format="png", type="filepath",
                            elem_id="xyplot-grid", height=480)
            info = gr.Markdown(elem_id="xyplot-info")
            gallery = gr.Gallery(label="Single images", format="png", columns=6, height=300, preview=False,
                                 elem_id="xyplot-gallery", interactive=False, object_fit="contain")
    last_seed = gr.State(-1)

    def run(request: gr.Request, history, files, *values, progress=gr.Progress()):
        *panel_values, picture, strength_, x_kind, x_text, y_kind, y_text = values
        stop_flag = stops.setdefault(request.session_hash, threading.Event())
        stop_flag.clear()

        def report(cell, cells, step, steps):
            progress((cell * max(steps, 1) + step, cells * max(steps, 1)),
                     desc=f"cell {cell + 1} of {cells} · step {step}/{steps}")

        try:
            base = generate_tab.request_from("txt2img", tuple(panel_values))
            base.preview = "none"
            if picture is not None:
                base.image, base.strength = picture, strength_
            plan = sweeps.plan_sweep(base, sweeps.parse_axis("X", x_kind, x_text),
                                     sweeps.parse_axis("Y", y_kind, y_text))
            sweep = sweeps.run_sweep(manager, plan, writer=writer, on_progress=report, cancel=stop_flag)
        except GenerationCancelled as exc:
            gr.Info(str(exc))
            return gr.skip(), gr.skip(), str(exc), *[gr.skip()] * 4
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        for warning in {w for result in sweep.results for w in result.warnings}:
            gr.Warning(warning)
        history = (history + sweep.results)[-generate_tab.HISTORY_LIMIT:]
        files = (files + sweep.files)[-generate_tab.HISTORY_LIMIT:]
        singles = [(path, plan.cell_label(i // plan.base.num_images_per_prompt))
                   for i, path in enumerate(sweep.paths)]
        return sweep.grid_path, singles, describe_sweep(sweep), history, files, sweep.paths[-1], plan.base.seed

    def stop_run(request: gr.Request) -> None:
        """Stop this session's plot: the running cell at its next step, and no further cells."""
        stops.setdefault(request.session_hash, threading.Event()).set()

    inputs = [runs, run_files, *panel.inputs(), image, strength, x_type, x_values, y_type, y_values]
    running = generate.click(common.running_buttons, outputs=[generate, stop], api_visibility="private",
                             queue=False).then(
        run, inputs=inputs, outputs=[grid, gallery, info, runs, run_files, last_image, last_seed],
        api_name="xy_plot", concurrency_id=common.GPU, concurrency_limit=1)
    running.then(common.idle_buttons, outputs=[generate, stop], api_visibility="private", queue=False)
    stop.click(stop_run, api_visibility="private", queue=False)
    panel.reuse_seed.click(generate_tab.reuse, inputs=last_seed, outputs=panel.seed, api_visibility="private",
                           queue=False)
    for kind, box in ((x_type, x_values), (y_type, y_values)):
        kind.change(axis_hint, inputs=kind, outputs=box, api_visibility="private", queue=False)
    return {"panel": panel, "image": image, "strength": strength, "x_type": x_type, "x_values": x_values,
            "y_type": y_type, "y_values": y_values, "grid": grid, "gallery": gallery, "info": info,
            "generate": generate, "run": run, "inputs": inputs}
