"""The Gradio Blocks UI. `build_demo(manager, settings)` lays out the tabs; it does not launch.

One module per tab; each tab's events only call the PipelineManager. All events that run the
model share one concurrency_id, so the server runs one generation at a time and queues the rest.
"""
from __future__ import annotations

import gradio as gr

from studio.config import Settings
from studio.history import SessionHistory
from studio.outputs import OutputWriter
from studio.ui import generate_tab, history_tab, pnginfo_tab, settings_panel, stops, sweep_tab, viewer_tab

TITLE = "Diffusion Studio"
# Small models make small pictures: show them enlarged with crisp pixels, not blurred.
CSS = """
.studio-picture img { image-rendering: pixelated; object-fit: contain; width: 100%; height: 100%; }
#txt2img-gallery img, #img2img-gallery img, #viewer-filmstrip img, #history-gallery img { image-rendering: pixelated; object-fit: contain !important; max-height: 100%; }
/* X/Y single images and History: the whole caption ("Sampler: DPM++ 2M Karras · Steps: 8"), wrapped */
#xyplot-gallery .caption-label, #history-gallery .caption-label { white-space: normal; max-width: 100%; left: 0; }
/* galleries as tall as their pictures: Gradio gives every gallery a 320-450 px floor */
#viewer-filmstrip .fixed-height, #xyplot-gallery .fixed-height { min-height: 0; }
/* the prompt's token count, small and to the right under its box, as A1111 shows it */
.studio-token-count { text-align: right; font-size: 0.8em; opacity: 0.75; margin-top: -0.6em; }
"""


def build_demo(manager, settings: Settings, writer: OutputWriter | None = None, api_runs=None) -> gr.Blocks:
    """`writer`: where PNGs go (one for the whole server); `api_runs()`, if given, is the A1111
    API's session history (studio.a1111), which History can take into the browser's session."""
    writer = writer or OutputWriter(settings.output_root(), temporary=settings.no_save)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nWatch noise turn into a picture. Hover a control to see what it does.")
        switched = settings_panel.build(manager, settings)
        history = gr.State(SessionHistory())  # this session's runs and plots, for History and the viewer
        last_image = gr.State(None)  # path of the newest picture, for "use the last result"
        with gr.Tabs() as tabs:
            with gr.Tab("Text to image", id="txt2img", elem_id="tab-txt2img"):
                txt2img = generate_tab.build("txt2img", manager, writer, history, last_image)
            with gr.Tab("Image to image", id="img2img", elem_id="tab-img2img"):
                img2img = generate_tab.build("img2img", manager, writer, history, last_image,
                                             prompt="a large blue square in the center")
            with gr.Tab("X/Y plot", id="xyplot", elem_id="tab-xyplot"):
                xyplot = sweep_tab.build(manager, writer, history, last_image)
            with gr.Tab("Denoising viewer", id="viewer", elem_id="tab-viewer"):
                viewer = viewer_tab.build(manager, history, last_image, writer)
            with gr.Tab("History", id="history", elem_id="tab-history"):
                history_tab.build(manager, history, txt2img, img2img, viewer, tabs, api_runs)
            with gr.Tab("PNG info", id="pnginfo", elem_id="tab-pnginfo"):
                pnginfo_tab.build(manager, writer, history, txt2img, img2img, tabs)
        panels = [txt2img["panel"], img2img["panel"], xyplot["panel"]]
        switched.success(lambda: settings_panel.fit_sizes(manager, panels),
                         outputs=[s for p in panels for s in (p.width, p.height, p.record_attention)], api_visibility="private")
        demo.unload(page_closed)
    # api_open=False: Gradio's REST routes (/run/<name>) would otherwise run an event directly,
    # beside the queue and past its one-generation-at-a-time limit (Gradio opens them off Spaces).
    demo.queue(max_size=settings.max_queue, default_concurrency_limit=1, api_open=False)
    return demo


def page_closed(request: gr.Request) -> None:
    """A closed page stops its session's runs after the step under way."""
    stops.stop(request.session_hash)
