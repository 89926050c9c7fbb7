"""The "History" tab: this session's pictures, newest first, and what to do with one of them.

The session keeps its runs (results with their trajectories) in the `runs` gr.State and the PNG
paths the writer gave each run in `run_files`, side by side, up to generate_tab.HISTORY_LIMIT.
Each picture offers: send to img2img (picture and settings, read back from its PNG), reuse its
seed in txt2img, open its run in the Denoising viewer, and download its PNG with the metadata.
Nothing here generates; the viewer decodes through its own functions.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from studio.ui import common, pnginfo_tab, viewer_tab


def entries(runs: list, run_files: list) -> list[tuple[int, int]]:
    """(run index, image index) of every picture in the history, newest run first."""
    return [(r, i) for r in reversed(range(min(len(runs), len(run_files))))
            for i in range(len(run_files[r]))]


def entry(runs: list, run_files: list, selected) -> tuple[int, int]:
    """The selected picture's (run, image); nothing selected means the newest picture."""
    pictures = entries(runs, run_files)
    if not pictures:
        raise gr.Error("No run yet: generate in Text to image or Image to image first.")
    index = 0 if selected is None else int(selected)
    if not 0 <= index < len(pictures):
        raise gr.Error(f"picture={selected!r} is not in this session's history (0 to {len(pictures) - 1}).")
    return pictures[index]


def describe(runs: list, run_files: list, selected) -> str:
    run, image = entry(runs, run_files, selected)
    result = runs[run]
    r = result.request
    mode = f"img2img, strength {r.strength:g}" if r.is_img2img else "txt2img"
    return (f"**{viewer_tab.run_label(run, result)}** · picture {image + 1} of {len(result.seeds)}  \n"
            f"seed {result.seeds[image]} · {r.num_inference_steps} steps · CFG {r.guidance_scale:g} · "
            f"{r.width}x{r.height} · {result.scheduler_name} · {mode}  \n"
            f"Prompt: {r.prompt or '(none)'}" + (f"  \nNegative: {r.negative_prompt}" if r.negative_prompt else ""))


def show(runs: list, run_files: list):
    """The gallery, no selection, and the newest picture's details and download."""
    pictures = entries(runs, run_files)
    items = [(run_files[r][i], f"#{r + 1} · seed {runs[r].seeds[i]}") for r, i in pictures]
    if not pictures:
        return items, None, "No run yet.", gr.DownloadButton(value=None, interactive=False)
    return items, None, describe(runs, run_files, None), download(runs, run_files, None)


def select(runs: list, run_files: list, event: gr.SelectData):
    return event.index, describe(runs, run_files, event.index), download(runs, run_files, event.index)


def download(runs: list, run_files: list, selected) -> gr.DownloadButton:
    run, image = entry(runs, run_files, selected)
    path = run_files[run][image]
    return gr.DownloadButton(f"Download {Path(path).name}", value=path, interactive=True)


def build(manager, runs: gr.State, run_files: gr.State, txt2img: dict, img2img: dict, viewer: dict,
          tabs: gr.Tabs) -> None:
    gr.Markdown("This session's pictures, newest first (the last 12 runs). Click one, then use it.")
    selected = gr.State(None)  # index into entries(); None: the newest picture
    gallery = gr.Gallery(label="History", columns=6, fit_columns=False, height=300, format="png",
                         interactive=False, allow_preview=False, object_fit="contain", elem_id="history-gallery")
    details = gr.Markdown("No run yet.", elem_id="history-details")
    with gr.Row():
        to_img2img = gr.Button("Send to img2img", elem_id="history-to-img2img")
        reuse_seed = gr.Button("Reuse seed in txt2img", elem_id="history-reuse-seed")
        open_viewer = gr.Button("Open in viewer", elem_id="history-open-viewer")
        save = gr.DownloadButton("Download PNG", interactive=False, elem_id="history-download")

    def send_img2img(runs_, files_, selected_):
        run, image = entry(runs_, files_, selected_)
        return pnginfo_tab.fill(files_[run][image], "img2img", with_picture=True)

    def seed_to_txt2img(runs_, files_, selected_):
        run, image = entry(runs_, files_, selected_)
        return runs_[run].seeds[image], gr.Tabs(selected="txt2img")

    def viewer_run(runs_, files_, selected_):
        run, _ = entry(runs_, files_, selected_)
        return gr.update(value=run), gr.Tabs(selected="viewer")

    def load_in_viewer(runs_, choice, decoder):
        return viewer_tab.load_run(manager, runs_, choice, decoder)

    private = dict(api_visibility="private")  # queued, so gr.Error and gr.Warning reach the browser
    state = [runs, run_files, selected]
    run_files.change(show, inputs=[runs, run_files], outputs=[gallery, selected, details, save], **private)
    gallery.select(select, inputs=[runs, run_files], outputs=[selected, details, save], **private)
    to_img2img.click(send_img2img, inputs=state, outputs=[*pnginfo_tab.targets(img2img, True), tabs], **private)
    reuse_seed.click(seed_to_txt2img, inputs=state, outputs=[txt2img["panel"].seed, tabs], **private)
    open_viewer.click(viewer_run, inputs=state, outputs=[viewer["run"], tabs], **private).success(
        load_in_viewer, inputs=[runs, viewer["run"], viewer["decoder"]], outputs=viewer["shown"],
        concurrency_id=common.GPU, concurrency_limit=1, **private)
