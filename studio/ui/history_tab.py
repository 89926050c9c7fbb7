"""The "History" tab: this session's pictures, newest first, and what to do with one of them.

The session keeps its runs and X/Y plots in one studio.history.SessionHistory (a gr.State), up to
HISTORY_LIMIT entries; a plot is one entry, shown as its grid. Each picture offers: send to img2img
(picture and settings, read back from its PNG), reuse its seed in txt2img, open its run in the
Denoising viewer, and download its PNG with the metadata. With --api, "Add the API's runs" brings
the runs A1111 clients made (studio.a1111) into this session, to open in the viewer.
Nothing here generates; the viewer decodes through its own functions.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from studio.history import HISTORY_LIMIT, Picture, SessionHistory

API_ORIGIN = "A1111 API"
from studio.ui import cache, common, pnginfo_tab, viewer_tab


def entry(history: SessionHistory, selected) -> Picture:
    """The selected picture; nothing selected means the newest."""
    pictures = history.pictures()
    if not pictures:
        raise gr.Error("No run yet: generate in Text to image, Image to image or X/Y plot first.")
    index = 0 if selected is None else common.whole_index("picture", selected)
    if not 0 <= index < len(pictures):
        raise gr.Error(f"picture={selected!r} is not in this session's history (0 to {len(pictures) - 1}).")
    return pictures[index]


def caption(picture: Picture) -> str:
    e = picture.entry
    if e.is_plot:
        return f"#{e.number} · X/Y plot: {e.title}"
    return f"#{e.number} · seed {e.results[0].seeds[picture.image]}" + (f" · {e.origin}" if e.origin else "")


def describe(history: SessionHistory, selected) -> str:
    picture = entry(history, selected)
    e = picture.entry
    if e.is_plot:
        first = e.results[0].request
        return (f"**#{e.number} X/Y plot: {e.title}** · {len(e.results)} cells · seed {first.seed}  \n"
                f"Open in viewer shows its cells as runs #{e.number}.1 to #{e.number}.{len(e.results)}; "
                "Send to img2img and Reuse seed take its first cell.  \n"
                f"Prompt: {first.prompt or '(none)'}")
    result = e.results[0]
    r = result.request
    mode = f"img2img, strength {r.strength:g}" if r.is_img2img else "txt2img"
    made = f" · made through the {e.origin}" if e.origin else ""
    return (f"**{viewer_tab.run_label(e.number, result)}** · picture {picture.image + 1} of {len(result.seeds)}{made}  \n"
            f"seed {result.seeds[picture.image]} · {r.num_inference_steps} steps · CFG {r.guidance_scale:g} · "
            f"{r.width}x{r.height} · {result.scheduler_name} · {mode}  \n"
            f"Prompt: {r.prompt or '(none)'}" + (f"  \nNegative: {r.negative_prompt}" if r.negative_prompt else ""))


def show(history: SessionHistory):
    """The gallery, no selection, and the newest picture's details and download."""
    pictures = history.pictures()
    items = [(cache.served(p.path), caption(p)) for p in pictures]
    if not pictures:
        return items, None, "No run yet.", gr.DownloadButton(value=None, interactive=False)
    return items, None, describe(history, None), download(history, None)


def select(history: SessionHistory, event: gr.SelectData):
    return event.index, describe(history, event.index), download(history, event.index)


def download(history: SessionHistory, selected) -> gr.DownloadButton:
    path = entry(history, selected).path
    return gr.DownloadButton(f"Download {Path(path).name}", value=cache.served(path), interactive=True)


def picture_run(picture: Picture) -> tuple[object, str]:
    """The result and the PNG a picture's actions use: its own, or a plot's first cell's."""
    image = picture.image or 0
    return picture.entry.results[picture.result], picture.entry.files[picture.result][image]


def take_api_runs(history: SessionHistory, api_runs) -> SessionHistory:
    """This session's history with the A1111 API's runs made since the last time added."""
    history, added = history.take_from(api_runs(), API_ORIGIN)
    gr.Info(f"Added {added} run{'s' * (added != 1)} made through /sdapi/v1." if added
            else "No new runs through /sdapi/v1 since the last time.")
    return history


def build(manager, history: gr.State, txt2img: dict, img2img: dict, viewer: dict, tabs: gr.Tabs,
          api_runs=None) -> None:
    gr.Markdown(f"This session's pictures, newest first (the last {HISTORY_LIMIT} runs or plots). "
                "Click one, then use it.")
    selected = gr.State(None)  # index into history.pictures(); None: the newest picture
    gallery = gr.Gallery(label="History", columns=6, fit_columns=False, height=300, format="png",
                         interactive=False, allow_preview=False, object_fit="contain", elem_id="history-gallery")
    details = gr.Markdown("No run yet.", elem_id="history-details")
    with gr.Row():
        to_img2img = gr.Button("Send to img2img", elem_id="history-to-img2img")
        reuse_seed = gr.Button("Reuse seed in txt2img", elem_id="history-reuse-seed")
        open_viewer = gr.Button("Open in viewer", elem_id="history-open-viewer")
        save = gr.DownloadButton("Download PNG", interactive=False, elem_id="history-download")
        from_api = gr.Button("Add the API's runs", visible=api_runs is not None, elem_id="history-from-api")

    def send_img2img(history_, selected_):
        _, path = picture_run(entry(history_, selected_))
        return pnginfo_tab.fill(path, "img2img", with_picture=True, max_side=img2img["panel"].width.maximum)

    def seed_to_txt2img(history_, selected_):
        picture = entry(history_, selected_)
        result, _ = picture_run(picture)
        return result.seeds[picture.image or 0], gr.Tabs(selected="txt2img")

    def viewer_run(history_, selected_):
        picture = entry(history_, selected_)
        index = next(i for i, run in enumerate(history_.runs())
                     if run.entry is picture.entry and (run.cell or 0) == picture.result)
        return gr.update(value=index), gr.Tabs(selected="viewer")

    def load_in_viewer(history_, choice, decoder):
        return viewer_tab.load_run(manager, history_, choice, decoder)

    private = dict(api_visibility="private")  # queued, so gr.Error and gr.Warning reach the browser
    state = [history, selected]
    history.change(show, inputs=history, outputs=[gallery, selected, details, save], **private)
    gallery.select(select, inputs=history, outputs=[selected, details, save], **private)
    to_img2img.click(send_img2img, inputs=state, outputs=[*pnginfo_tab.targets(img2img, True), tabs], **private)
    reuse_seed.click(seed_to_txt2img, inputs=state, outputs=[txt2img["panel"].seed, tabs], **private)
    def add_api_runs(history_):
        return take_api_runs(history_, api_runs)

    if api_runs is not None:  # --api: runs made by A1111 clients, in a session of their own
        from_api.click(add_api_runs, inputs=history, outputs=history, **private)
    open_viewer.click(viewer_run, inputs=state, outputs=[viewer["run"], tabs], **private).success(
        load_in_viewer, inputs=[history, viewer["run"], viewer["decoder"]], outputs=viewer["shown"],
        concurrency_id=common.GPU, concurrency_limit=1, **private)
