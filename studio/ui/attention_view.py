"""The viewer's "which word painted which pixels" section: pick a word of the prompt to see its
attention over x0 at the step shown (or over all steps), click the picture to rank the words at
that pixel. The maps are recorded by the run (studio.attention); this module lays out and wires.
"""
from __future__ import annotations

import functools

import gradio as gr
from PIL import Image

from studio import attention
from studio.errors import StudioError
from studio.ui import cache, common

SHOWN = 256  # the overlay's side on screen; the map is upscaled smoothly to it
NOT_RECORDED = ("This run did not record attention. Tick **Record attention** in the generation panel "
                "(or pass `record_attention`) and run it again to see which word painted which pixels.")


class WordChoice(gr.Radio):
    """The shown run's words, which differ from session to session: the server's copy of the
    choices cannot check a pick, so `view` does (studio.attention.find_word names a word that is
    not in the prompt). Stock front end."""

    is_template = True

    def preprocess(self, payload):
        return payload


def layout() -> dict:
    ui = {}
    with gr.Accordion("Which word painted which pixels: the prompt's attention", open=True,
                      elem_id="viewer-attention-box"):
        ui["note"] = gr.Markdown(elem_id="viewer-attention-note")
        with gr.Row():
            ui["word"] = WordChoice([], label="Word", elem_id="viewer-attention-word", scale=3,
                                  info="its cross-attention, over x0 (brighter: more attention)")
            ui["all"] = gr.Checkbox(False, label="All steps", elem_id="viewer-attention-all", scale=1,
                                    info="the mean over every step, over the final x0")
        with gr.Row():
            picture = dict(interactive=False, format="png", height=SHOWN, elem_classes="studio-picture")
            ui["overlay"] = gr.Image(label="x0 lit by the word (click: the words there)",
                                     elem_id="viewer-attention-overlay", **picture)
            ui["map"] = gr.Image(label="The map alone (black: its least, white: its most)", elem_id="viewer-attention-map",
                                 **picture)
            ui["ranking"] = gr.Markdown(elem_id="viewer-attention-ranking")
    return ui


def view(manager, history, choice, step, decoder, word, every: bool, strict: bool = True):
    """(words, x0 lit by the word's map, the map, note) for the chosen run at 1-based `step`, or
    over all steps. Not `strict` (a new run or step, the word picked for the last run): a word
    not in this run's prompt gives way to its most focused word."""
    from studio.ui.understand import chosen
    from studio.ui.viewer_tab import step_picture

    if not history.runs():
        return (gr.skip(),) * 4
    _, result = chosen(history, choice)
    trajectory = result.trajectory
    if not attention.recorded(trajectory):
        reason = next((w for w in result.warnings if w == attention.NO_TEXT), NOT_RECORDED)
        return gr.update(choices=[], value=None), None, None, reason
    number = common.whole_index("step", step) if step else len(trajectory.steps)
    if not 1 <= number <= len(trajectory.steps):
        raise gr.Error(f"step={step!r} is not allowed: expected 1 to {len(trajectory.steps)}.")
    maps = attention.maps_at(trajectory, None if every else number - 1)
    names = list(dict.fromkeys(w.text for w in attention.run_words(trajectory)))
    if word in (None, "") or (word not in names and not strict):
        word = attention.most_focused(maps, trajectory)
    try:
        found = attention.find_word(trajectory, word)
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    under = Image.open(step_picture(manager, trajectory, len(trajectory.steps) - 1 if every else number - 1, "x0", decoder))
    heat = attention.heat(maps, found, (SHOWN, SHOWN), stretch=True)
    lit = attention.spotlight(under.resize((SHOWN, SHOWN), Image.Resampling.BICUBIC), heat)
    where = "averaged over all steps, over the final x0" if every else f"at step {number}, over its x0"
    note = f"The attention of **{word}** {where}. Click the picture to rank the words at a pixel."
    return gr.update(choices=names, value=word), cache.picture_file(lit), cache.picture_file(attention.hot(heat)), note


def rank(history, choice, step, every: bool, evt: gr.SelectData):
    """The words ranked by their share of the attention at the clicked pixel."""
    from studio.ui.understand import chosen

    if not history.runs() or evt is None or evt.index is None:
        return gr.skip()
    _, result = chosen(history, choice)
    if not attention.recorded(result.trajectory):
        return NOT_RECORDED
    number = common.whole_index("step", step) if step else len(result.trajectory.steps)
    x, y = (min(max(float(v) / SHOWN, 0.0), 1.0) for v in evt.index[:2])
    maps = attention.maps_at(result.trajectory, None if every else number - 1)
    ranked = attention.ranking(maps, result.trajectory, x, y)
    rest = max(0.0, 1 - sum(share for _, share in ranked))
    where = "over all steps" if every else f"at step {number}"
    lines = [f"**At ({x:.0%} across, {y:.0%} down), {where}:**", ""]
    lines += [f"{i}. {word}: {share:.0%}" for i, (word, share) in enumerate(ranked, 1)]
    lines.append(f"\nThe rest ({rest:.0%}) goes to the start, end and padding tokens, which take what no word claims.")
    return "\n".join(lines)


def wire(manager, viewer: dict, ui: dict, history: gr.State) -> None:
    gpu = dict(concurrency_id=common.GPU, concurrency_limit=1)
    choice, step, decoder = viewer["choice"], viewer["step"], viewer["decoder"]
    inputs = [history, choice, step, decoder, ui["word"], ui["all"]]
    shown = [ui["word"], ui["overlay"], ui["map"], ui["note"]]
    show, follow = functools.partial(view, manager), functools.partial(view, manager, strict=False)
    ui["word"].input(show, inputs=inputs, outputs=shown, api_name="viewer_attention", show_progress="hidden", **gpu)
    step.change(follow, inputs=inputs, outputs=shown, api_visibility="private", show_progress="hidden", **gpu)
    ui["all"].input(follow, inputs=inputs, outputs=shown, api_visibility="private", show_progress="hidden", **gpu)
    ui["overlay"].select(rank, inputs=[history, choice, step, ui["all"]], outputs=ui["ranking"],
                         api_visibility="private", queue=False)
    for loaded in viewer["loaded"]:
        loaded.then(follow, inputs=inputs, outputs=shown, api_visibility="private", show_progress="hidden", **gpu)
