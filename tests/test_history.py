"""The History tab's bookkeeping: which picture an entry is, and what its actions send.

The session's `runs` (results) and `run_files` (their PNGs) are kept side by side; the gallery
lists every picture, newest run first. Browser tests in test_browser.py drive the tab itself.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from studio.outputs import OutputWriter
from studio.requests import GenerationRequest
from studio.ui import history_tab, pnginfo_tab


@pytest.fixture(scope="module")
def history(bundled_manager, tmp_path_factory):
    """Two runs as the generation tabs record them: a batch of 2 (seeds 5, 6), then one picture."""
    writer = OutputWriter(tmp_path_factory.mktemp("history"))
    runs = [bundled_manager.generate(GenerationRequest(prompt="a red circle", num_inference_steps=2, seed=5,
                                                       num_images_per_prompt=2)),
            bundled_manager.generate(GenerationRequest(prompt="a blue square", num_inference_steps=3, seed=9))]
    return runs, [writer.write(run) for run in runs]


def test_the_gallery_lists_every_picture_newest_run_first(history):
    runs, files = history
    assert history_tab.entries(runs, files) == [(1, 0), (0, 0), (0, 1)]
    items, selected, details, _ = history_tab.show(runs, files)
    assert [caption for _, caption in items] == ["#2 · seed 9", "#1 · seed 5", "#1 · seed 6"]
    assert selected is None and "seed 9" in details  # nothing picked: the newest picture


def test_nothing_selected_means_the_newest_picture_and_a_bad_index_is_a_clear_error(history):
    runs, files = history
    assert history_tab.entry(runs, files, None) == (1, 0)
    with pytest.raises(gr.Error, match="picture=3 is not in this session's history"):
        history_tab.entry(runs, files, 3)
    with pytest.raises(gr.Error, match="No run yet"):
        history_tab.entry([], [], None)


def test_the_download_is_the_selected_pictures_png(history):
    runs, files = history
    button = history_tab.download(runs, files, 2)  # the batch's second picture
    assert files[0][1].endswith("-6.png") and button.label == f"Download {Path(files[0][1]).name}"
    assert Path(button.value["path"]).read_bytes() == Path(files[0][1]).read_bytes()  # metadata and all


def test_send_to_img2img_from_a_batch_sends_that_pictures_own_seed(history, monkeypatch):
    runs, files = history
    monkeypatch.setattr(gr, "Warning", pytest.fail)  # our own PNGs need no warning
    *values, picture, strength, tabs = pnginfo_tab.fill(files[0][1], "img2img", with_picture=True)
    sent = dict(zip(pnginfo_tab.SENT_FIELDS, values))
    assert (sent["prompt"], sent["seed"], sent["num_images_per_prompt"]) == ("a red circle", 6, 2)
    assert picture == files[0][1] and tabs.selected == "img2img"
    assert isinstance(strength, type(gr.skip()))  # a txt2img run has no denoising strength
