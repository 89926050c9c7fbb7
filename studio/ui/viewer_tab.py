"""The "Denoising viewer" tab: scrub every step of a run, x_t beside the predicted x0, the noise
schedule, a filmstrip, GIF and contact-sheet export, and the forward (noising) process.

Runs come from the session's history (a gr.State list of results that the generation tabs
append to). Pictures are decoded on demand from the trajectory's latents by the manager's
decoders; this module only lays out and wires events.
"""
from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

import gradio as gr

from studio import export
from studio.errors import StudioError
from studio.ui import common



def run_label(index: int, result) -> str:
    mode = "img2img" if result.request.is_img2img else "txt2img"
    prompt = result.request.prompt[:40] + ("…" if len(result.request.prompt) > 40 else "")
    return f"#{index + 1} {mode}: {prompt or '(no prompt)'} · seed {result.seeds[0]}"


def pick(runs: list, choice) -> object:
    """The chosen run: `choice` is its index in the session's history (0 is the oldest), or
    None for the newest."""
    if not runs:
        raise gr.Error("No run yet: generate in Text to image or Image to image first.")
    allowed = f"expected a run index from 0 to {len(runs) - 1} (0 is the oldest), or none for the newest"
    try:
        index = len(runs) - 1 if choice in (None, "") else int(choice)
    except (TypeError, ValueError):
        raise gr.Error(f"run={choice!r} is not allowed: {allowed}.") from None
    if not 0 <= index < len(runs):
        raise gr.Error(f"run={choice!r} is not allowed: {allowed}.")
    return runs[index]


def show_step(manager, runs, choice, step, decoder):
    """x_t, x0, the caption and the schedule chart for 1-based `step` of the chosen run."""
    trajectory = pick(runs, choice).trajectory
    if not trajectory.steps:
        raise gr.Error("This run recorded no steps.")
    number = int(step or len(trajectory.steps))
    if not 1 <= number <= len(trajectory.steps):
        raise gr.Error(f"step={step!r} is not allowed: expected 1 to {len(trajectory.steps)}.")
    entry = trajectory.steps[number - 1]
    try:
        noisy = manager.previews.decode(manager.loaded, entry.latents[:1], decoder)[0]
        clean = manager.previews.decode(manager.loaded, entry.x0[:1], decoder)[0]
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    total = trajectory.num_inference_steps
    text = (f"**Step {trajectory.start_step + number} of {total}** · timestep t = {entry.timestep:.0f} · "
            f"σ = {entry.sigma:.3f} · noise share √(1−ᾱ) = {(entry.sigma**2 / (1 + entry.sigma**2)) ** 0.5:.2f}")
    return noisy, clean, text, export.schedule_chart(trajectory, number - 1)


def load_run(manager, runs, choice, decoder):
    trajectory = pick(runs, choice).trajectory
    count = len(trajectory.steps)
    pairs = export.step_pictures(manager, trajectory, "fast")
    strip = [(clean, f"{s.index + 1}: σ={s.sigma:.2f}") for (_, clean), s in zip(pairs, trajectory.steps)]
    return (gr.update(maximum=count, value=count), *show_step(manager, runs, choice, count, decoder), strip)


def export_run(manager, runs, choice, decoder):
    result = pick(runs, choice)
    # Under the output root: the one folder the server may serve from and may write to.
    exports = manager.settings.output_root() / "viewer-exports"
    exports.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{datetime.now():%Y-%m-%d-%H%M%S}-", dir=exports))
    pairs = export.step_pictures(manager, result.trajectory, decoder)
    gif = export.animated_gif(pairs, result.trajectory.steps, folder / "trajectory.gif")
    sheet = folder / "contact_sheet.png"
    export.contact_sheet(pairs, result.trajectory.steps).save(sheet)
    return str(gif), str(sheet)


def history_choices(runs: list):
    choices = [(run_label(i, r), i) for i, r in enumerate(runs)]
    return gr.update(choices=choices, value=len(runs) - 1 if runs else None)


def build(manager, runs: gr.State, last_image: gr.State) -> dict:
    gr.Markdown("Every step of a run, after the run. **Left:** the noisy latents x_t entering the step. "
                "**Right:** what the model predicts the clean picture x0 to be at that step.")
    with gr.Row():
        choice = gr.Dropdown([], label="Run (this session)", elem_id="viewer-run", scale=4,
                             allow_custom_value=True)  # API callers pass a run index; pick() checks it
        decoder = gr.Radio(common.preview_choices(manager, with_off=False), value="fast", label="Decoder", elem_id="viewer-decoder", scale=2)
        load = gr.Button("Show last run", elem_id="viewer-load", scale=1)
    step = gr.Slider(1, 20, value=20, step=1, label="Step", elem_id="viewer-step")
    caption = gr.Markdown(elem_id="viewer-caption")
    with gr.Row():
        noisy = gr.Image(label="x_t (noisy)", interactive=False, elem_classes="studio-picture", format="png", elem_id="viewer-xt", height=256)
        clean = gr.Image(label="predicted x0", interactive=False, elem_classes="studio-picture", format="png", elem_id="viewer-x0", height=256)
        chart = gr.Image(label="Noise schedule σ (log scale)", interactive=False, format="png", elem_id="viewer-chart")
    strip = gr.Gallery(label="Filmstrip: predicted x0 at every step", columns=10, height=200,
                       format="png", elem_id="viewer-filmstrip", interactive=False, object_fit="contain")
    with gr.Row():
        export_button = gr.Button("Export GIF and contact sheet", elem_id="viewer-export")
        gif = gr.File(label="Animated GIF", elem_id="viewer-gif")
        sheet = gr.File(label="Contact sheet", elem_id="viewer-sheet")
    forward_section(manager, last_image)

    def do_load(runs_, choice_, decoder_):
        return load_run(manager, runs_, choice_, decoder_)

    def do_step(runs_, choice_, step_, decoder_):
        return show_step(manager, runs_, choice_, step_, decoder_)

    def do_export(runs_, choice_, decoder_):
        return export_run(manager, runs_, choice_, decoder_)

    shown = [step, noisy, clean, caption, chart, strip]
    gpu = dict(concurrency_id=common.GPU, concurrency_limit=1)
    runs.change(history_choices, inputs=runs, outputs=choice, api_visibility="private", queue=False)
    load.click(do_load, inputs=[runs, choice, decoder], outputs=shown, api_name="viewer_load", **gpu)
    choice.input(do_load, inputs=[runs, choice, decoder], outputs=shown, api_visibility="private", **gpu)
    step.change(do_step, inputs=[runs, choice, step, decoder], outputs=[noisy, clean, caption, chart],
                api_name="viewer_step", show_progress="hidden", **gpu)
    decoder.change(do_step, inputs=[runs, choice, step, decoder], outputs=[noisy, clean, caption, chart],
                   api_visibility="private", **gpu)
    export_button.click(do_export, inputs=[runs, choice, decoder], outputs=[gif, sheet],
                        api_name="viewer_export", **gpu)
    return {"run": choice, "decoder": decoder, "shown": shown}  # for the History tab's "Open in viewer"


def forward_section(manager, last_image: gr.State) -> None:
    gr.Markdown("### Forward process\nThe opposite direction: a clean picture noised to timestep t, "
                "the way training and img2img do it (x_t = √ᾱ·x0 + √(1−ᾱ)·ε, in latent space).")
    with gr.Row():
        source = common.PictureUpload(label="Picture", type="filepath", image_mode=None, elem_id="forward-image", height=200)
        use_last = gr.Button("Use the last result", elem_id="forward-use-last")
        timestep = gr.Slider(0, 999, value=500, step=1, label="Timestep t", elem_id="forward-timestep")
    with gr.Row():
        noised = gr.Image(label="Noised to t", interactive=False, elem_classes="studio-picture", format="png", elem_id="forward-noised", height=200)
        info = gr.Markdown(elem_id="forward-info")

    def noise_to(image, t):
        if image is None:
            raise gr.Error("image: choose a picture, or use the last result.")
        try:
            out = manager.forward_process(image, timestep=t)
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        return out.picture, f"t = {out.timestep:.0f} · σ = {out.sigma:.3f}"

    use_last.click(last_picture, inputs=last_image, outputs=source, api_visibility="private", queue=False)
    gpu = dict(concurrency_id=common.GPU, concurrency_limit=1)
    timestep.release(noise_to, inputs=[source, timestep], outputs=[noised, info], api_name="forward_process", **gpu)
    source.change(noise_to, inputs=[source, timestep], outputs=[noised, info], api_visibility="private", **gpu)


def last_picture(path):
    if not path:
        raise gr.Error("No result yet: generate a picture first.")
    return path
