"""The "Denoising viewer" tab: scrub every step of a run, x_t beside the predicted x0, the noise
schedule, a filmstrip, GIF and contact-sheet export, and the forward (noising) process.

Runs come from the session's history (a studio.history.SessionHistory in a gr.State: each run,
and each cell of an X/Y plot, under the number History shows). Pictures are decoded on demand from the trajectory's latents by the manager's
decoders; this module only lays out and wires events.
"""
from __future__ import annotations

import functools
import shutil
import tempfile
import weakref
from collections import OrderedDict
from datetime import datetime
from pathlib import Path

import gradio as gr

from studio import export, inpainting, replay, runs
from studio.errors import StudioError
from studio.history import SessionHistory
from studio.ui import attention_view, cache, common, form, player, understand, uploads



def run_label(number, result) -> str:
    """"#7 txt2img: a red circle · seed 3": `number` is the session's ("7", or "7.2" for a plot's cell)."""
    mode = "img2img" if result.request.is_img2img else "txt2img"
    prompt = result.request.prompt[:40] + ("…" if len(result.request.prompt) > 40 else "")
    lineage = getattr(result, "lineage", None)
    if lineage is not None:
        mode += f", branch of #{lineage.parent_run} after step {lineage.at_step}"
    return f"#{number} {mode}: {prompt or '(no prompt)'} · seed {result.seeds[0]}"


def pick(history: SessionHistory, choice) -> object:
    """The chosen run's result: `choice` is its index among the session's runs (0 is the oldest;
    a plot's cells are runs), or None for the newest."""
    runs = [run.result for run in history.runs()]
    if not runs:
        raise gr.Error("No run yet: generate in Text to image or Image to image first.")
    allowed = f"expected a run index from 0 to {len(runs) - 1} (0 is the oldest), or none for the newest"
    try:
        index = len(runs) - 1 if choice in (None, "") else common.whole_index("run", choice)
    except gr.Error:
        raise gr.Error(f"run={choice!r} is not allowed: {allowed}.") from None
    if not 0 <= index < len(runs):
        raise gr.Error(f"run={choice!r} is not allowed: {allowed}.")
    return runs[index]


# Decoded pictures by (trajectory, step, latents or x0, decoder): a scrub back and forth decodes
# each step once (a full-VAE decode of a Stable Diffusion-size step takes seconds on a CPU).
DECODED_LIMIT = 4096
decoded: OrderedDict[tuple, tuple[weakref.ref, str]] = OrderedDict()


def step_picture(manager, trajectory, index: int, which: str, decoder: str, mask=None) -> str:
    """The file of step `index`'s x_t ("latents") or x0, decoded with `decoder`, first image;
    an inpainting run's `mask` (studio.inpainting.run_mask) outlined on it."""
    key = (id(trajectory), index, which, decoder, mask is not None)
    known = decoded.get(key)
    if known is not None and known[0]() is trajectory and Path(known[1]).exists():
        decoded.move_to_end(key)
        return known[1]
    latents = getattr(trajectory.steps[index], which)[:1]
    try:
        path = cache.picture_file(inpainting.outlined(manager.decode(latents, decoder)[0], mask))
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    decoded[key] = (weakref.ref(trajectory), path)
    while len(decoded) > DECODED_LIMIT:
        decoded.popitem(last=False)
    return path


def show_step(manager, history, choice, step, decoder):
    """x_t, x0, the caption and the schedule chart for 1-based `step` of the chosen run."""
    result = pick(history, choice)
    trajectory, mask = result.trajectory, inpainting.run_mask(result.request)
    if not trajectory.steps:
        raise gr.Error("This run recorded no steps.")
    number = common.whole_index("step", step) if step else len(trajectory.steps)
    if not 1 <= number <= len(trajectory.steps):
        raise gr.Error(f"step={step!r} is not allowed: expected 1 to {len(trajectory.steps)}.")
    clean = step_picture(manager, trajectory, number - 1, "x0", decoder, mask)  # x0 first: it is what people look at
    noisy = step_picture(manager, trajectory, number - 1, "latents", decoder, mask)
    chart = cache.picture_file(export.schedule_chart(trajectory, number - 1))
    return noisy, clean, export.step_caption(trajectory, number), chart


def filmstrip(manager, trajectory, decoder: str) -> list[tuple[str, str]]:
    """Predicted x0 at every step, decoded as the viewer decodes them."""
    return [(step_picture(manager, trajectory, s.index, "x0", decoder), f"{s.index + 1}: σ={s.sigma:.2f}")
            for s in trajectory.steps]


def load_run(manager, history, choice, decoder):
    """The run's last step, its filmstrip, and every step's frames for the browser's scrub."""
    result = pick(history, choice)
    count = len(result.trajectory.steps)
    return (gr.update(maximum=count, value=count), *show_step(manager, history, choice, count, decoder),
            filmstrip(manager, result.trajectory, decoder), player.frames(manager, result))


def redecode(manager, history, choice, step, decoder):
    """Another decoder: the shown step and the filmstrip again, the slider where it is."""
    return (*show_step(manager, history, choice, step, decoder),
            filmstrip(manager, pick(history, choice).trajectory, decoder))


def export_folder(root: Path) -> Path:
    """A new folder for one export under `root`'s viewer-exports (the app's output folder)."""
    exports = Path(root) / "viewer-exports"
    exports.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{datetime.now():%Y-%m-%d-%H%M%S}-", dir=exports))


def export_run(manager, history, choice, decoder, root: Path):
    """The run's GIF and contact sheet, written under `root` (the app's output folder, where
    the studio writes), handed to the browser as cached copies (cache.served)."""
    result = pick(history, choice)
    folder = export_folder(root)
    pairs = export.step_pictures(manager, result.trajectory, decoder)
    gif = export.animated_gif(pairs, result.trajectory.steps, folder / "trajectory.gif")
    sheet = folder / "contact_sheet.png"
    export.contact_sheet(pairs, result.trajectory.steps).save(sheet)
    return cache.served(gif), cache.served(sheet)


def export_replay(manager, history, choice, decoder, root: Path):
    """The run's replay page (studio.replay), written under `root` like the other exports."""
    result = pick(history, choice)
    folder = export_folder(root)
    try:
        path = replay.write(manager, result, folder / "replay.html", decoder)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return cache.served(path)


def open_saved(manager, history: SessionHistory, files, root: Path) -> SessionHistory:
    """A run saved by `--trajectory DIR` (its run.json and run.safetensors, and its pictures if
    given), added to the session's history as a run of its own, so the viewer shows it."""
    names = sorted(Path(f).name for f in files or [])
    if not {runs.DESCRIPTION, runs.TENSORS} <= set(names):
        raise gr.Error(f"files={names!r}: upload the {runs.DESCRIPTION} and {runs.TENSORS} of a run "
                       "(the folder --trajectory DIR wrote; add its picture-*.png to see them in History).")
    opened = Path(root) / "opened-runs"
    opened.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{datetime.now():%Y-%m-%d-%H%M%S}-", dir=opened))
    for path in files:
        shutil.copyfile(path, folder / Path(path).name)
    try:
        result = runs.load(folder)
        manager.check_same_model(result)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    return history.add_run(result, [str(p) for p in sorted(folder.glob("picture-*.png"))])


def history_choices(history: SessionHistory):
    runs = history.runs()
    choices = [(run_label(run.number, run.result), i) for i, run in enumerate(runs)]
    return gr.update(choices=choices, value=len(runs) - 1 if runs else None)


def build(manager, history: gr.State, last_image: gr.State, writer) -> dict:
    """Lay out the viewer tab and wire it; its exports are written under `writer.root`, its
    branches' pictures by `writer`."""
    gr.Markdown("Every step of a run, after the run. **Left:** the noisy latents x_t entering the step. "
                "**Right:** what the model predicts the clean picture x0 to be at that step.")
    ui = layout(manager)
    branch, lens = understand.layout_branch(), understand.layout_lens()
    words = attention_view.layout()
    forward_section(manager, last_image)
    ui["loaded"] = wire(manager, ui, history, writer.root)
    ui["shown"] = shown_of(ui)
    ui["open_newest"] = lambda history_, decoder_: load_run(manager, history_, None, decoder_)
    understand.wire(manager, writer, ui, branch, history)
    understand.wire_lens(manager, ui, lens, history)
    attention_view.wire(manager, ui, words, history)
    return {"run": ui["choice"], "decoder": ui["decoder"], "shown": shown_of(ui)}  # History's "Open in viewer"


def layout(manager) -> dict:
    ui = {}
    with gr.Row():
        ui["choice"] = gr.Dropdown([], label="Run (this session)", elem_id="viewer-run", scale=4,
                                   allow_custom_value=True)  # API callers pass a run index; pick() checks it
        ui["decoder"] = gr.Radio(form.preview_choices(manager, with_off=False), value="fast", label="Decoder",
                                 elem_id="viewer-decoder", scale=2)
        ui["load"] = gr.Button("Show last run", elem_id="viewer-load", scale=1)
    with gr.Accordion("Open a saved run (the run.json and run.safetensors that --trajectory DIR writes)",
                      open=False):
        ui["saved"] = gr.File(label="Saved run files", file_count="multiple", type="filepath",
                              file_types=[".json", ".safetensors", ".png"], elem_id="viewer-saved-run")
    ui["step"] = gr.Slider(1, 20, value=20, step=1, label="Step", elem_id="viewer-step",
                           info="the step the pictures and tools below show, by the chosen decoder; "
                                "the player under it scrubs in your browser and sets this where you stop")
    ui["player"] = player.component()
    ui["caption"] = gr.Markdown(elem_id="viewer-caption")
    picture = dict(interactive=False, format="png", height=256, elem_classes="studio-picture")
    with gr.Row():
        ui["noisy"] = gr.Image(label="x_t (noisy), by the decoder above", elem_id="viewer-xt", **picture)
        ui["clean"] = gr.Image(label="predicted x0, by the decoder above", elem_id="viewer-x0", **picture)
        ui["chart"] = gr.Image(label="Noise schedule σ (log scale)", interactive=False, format="png",
                               elem_id="viewer-chart")
    ui["strip"] = gr.Gallery(label="Filmstrip: predicted x0 at every step", columns=10, height="auto",
                             format="png", elem_id="viewer-filmstrip", interactive=False, object_fit="contain")
    with gr.Row():
        with gr.Column(scale=1):
            ui["export"] = gr.Button("Export GIF and contact sheet", elem_id="viewer-export")
            ui["gif"] = gr.File(label="Animated GIF", elem_id="viewer-gif", interactive=False)
            ui["sheet"] = gr.File(label="Contact sheet", elem_id="viewer-sheet", interactive=False)
            ui["replay"] = gr.Button("Export replay page", elem_id="viewer-replay")
            ui["replay_file"] = gr.File(label="Replay page: one HTML file, works offline", elem_id="viewer-replay-file",
                                        interactive=False)
        ui["gif_view"] = gr.Image(label="The run as an animation: x_t | predicted x0", interactive=False,
                                  type="filepath", elem_id="viewer-gif-view", scale=2)
    return ui


def shown_of(ui: dict) -> list:
    return [ui[name] for name in ("step", "noisy", "clean", "caption", "chart", "strip", "player")]


def wire(manager, ui: dict, history: gr.State, root: Path) -> None:
    choice, decoder, step, shown = ui["choice"], ui["decoder"], ui["step"], shown_of(ui)
    picked, pictures = [history, choice, decoder], shown[1:5]
    gpu = dict(concurrency_id=common.GPU, concurrency_limit=1)

    def redecode_any(history_, choice_, step_, decoder_):
        if not history_.runs():  # a decoder picked before any run: nothing to decode yet
            return (gr.skip(),) * 5
        return redecode(manager, history_, choice_, step_, decoder_)

    history.change(history_choices, inputs=history, outputs=choice, api_visibility="private", queue=False)
    loaded = [ui["load"].click(functools.partial(load_run, manager), inputs=picked, outputs=shown,
                               api_name="viewer_load", **gpu)]
    loaded.append(ui["saved"].upload(functools.partial(open_saved, manager, root=root), inputs=[history, ui["saved"]],
                                     outputs=history, api_name="viewer_open_run").success(
        lambda history_, decoder_: load_run(manager, history_, None, decoder_), inputs=[history, decoder], outputs=shown,
        api_visibility="private", **gpu))
    loaded.append(choice.input(functools.partial(load_run, manager), inputs=picked, outputs=shown,
                               api_visibility="private", **gpu))
    step.change(functools.partial(show_step, manager), inputs=[history, choice, step, decoder], outputs=pictures,
                api_name="viewer_step", show_progress="hidden", **gpu)
    decoder.change(redecode_any, inputs=[history, choice, step, decoder], outputs=[*pictures, ui["strip"]],
                   api_visibility="private", **gpu)
    ui["export"].click(functools.partial(export_run, manager, root=root), inputs=picked,
                       outputs=[ui["gif"], ui["sheet"]], api_name="viewer_export", **gpu).success(
        show_animation, inputs=ui["gif"], outputs=ui["gif_view"], api_visibility="private", queue=False)
    ui["replay"].click(functools.partial(export_replay, manager, root=root), inputs=picked,
                       outputs=ui["replay_file"], api_name="viewer_replay", **gpu)
    return loaded  # the events that open a run in the viewer


def forward_section(manager, last_image: gr.State) -> None:
    gr.Markdown("### Forward process\nThe opposite direction: a clean picture noised to timestep t, "
                "the way training and img2img do it (x_t = √ᾱ·x0 + √(1−ᾱ)·ε, in latent space).")
    with gr.Row():
        source = uploads.PictureUpload(label="Picture", type="filepath", image_mode=None, elem_id="forward-image", height=200)
        use_last = gr.Button("Use the last result", elem_id="forward-use-last")
        timestep = gr.Slider(0, 999, value=500, step=1, label="Timestep t", elem_id="forward-timestep")
    with gr.Row():
        noised = gr.Image(label="Noised to t", interactive=False, elem_classes="studio-picture", format="png", elem_id="forward-noised", height=200)
        info = gr.Markdown(elem_id="forward-info")

    def noise_to(image, timestep):
        if image is None:
            raise gr.Error("image: choose a picture, or use the last result.")
        try:
            out = manager.forward_process(image, timestep=timestep)
        except StudioError as exc:
            raise gr.Error(str(exc)) from exc
        return cache.picture_file(out.picture), f"t = {out.timestep:.0f} · σ = {out.sigma:.3f}"

    use_last.click(last_picture, inputs=last_image, outputs=source, api_visibility="private", queue=False)
    gpu = dict(concurrency_id=common.GPU, concurrency_limit=1)
    timestep.release(noise_to, inputs=[source, timestep], outputs=[noised, info], api_name="forward_process", **gpu)
    source.change(noise_to, inputs=[source, timestep], outputs=[noised, info], api_visibility="private", **gpu)


def show_animation(gif_file):
    """The exported GIF, shown playing (the File box above only offers it as a download)."""
    return gif_file


def last_picture(path):
    if not path:
        raise gr.Error("No result yet: generate a picture first.")
    return path
