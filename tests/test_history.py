"""The History tab's bookkeeping: which picture an entry is, and what its actions send.

The session's SessionHistory numbers runs and plots once; the gallery lists every picture, newest
entry first, and a plot once, as its grid. Browser tests in test_browser.py drive the tab itself.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from studio.outputs import OutputWriter
from studio.requests import GenerationRequest
from studio.history import SessionHistory
from studio.ui import cache, history_tab, pnginfo_tab, viewer_tab


@pytest.fixture(scope="module")
def history(bundled_manager, tmp_path_factory) -> SessionHistory:
    """Two runs as the generation tabs record them: a batch of 2 (seeds 5, 6), then one picture."""
    writer = OutputWriter(tmp_path_factory.mktemp("history"))
    session = SessionHistory()
    for request in (GenerationRequest(prompt="a red circle", num_inference_steps=2, seed=5, num_images_per_prompt=2),
                    GenerationRequest(prompt="a blue square", num_inference_steps=3, seed=9)):
        result = bundled_manager.generate(request)
        session = session.add_run(result, writer.write(result))
    return session


def files(session: SessionHistory) -> list:
    return [e.files[0] for e in session.entries]


def test_the_gallery_lists_every_picture_newest_run_first(history):
    assert [(p.entry.number, p.image) for p in history.pictures()] == [(2, 0), (1, 0), (1, 1)]
    items, selected, details, _ = history_tab.show(history)
    assert [caption for _, caption in items] == ["#2 · seed 9", "#1 · seed 5", "#1 · seed 6"]
    assert selected is None and "seed 9" in details  # nothing picked: the newest picture


def test_nothing_selected_means_the_newest_picture_and_a_bad_index_is_a_clear_error(history):
    assert history_tab.entry(history, None).entry.number == 2
    with pytest.raises(gr.Error, match="picture=3 is not in this session's history"):
        history_tab.entry(history, 3)
    with pytest.raises(gr.Error, match="No run yet"):
        history_tab.entry(SessionHistory(), None)


def test_the_download_is_the_selected_pictures_png(history):
    button = history_tab.download(history, 2)  # the batch's second picture
    batch = files(history)[0]
    assert batch[1].endswith("-6.png") and button.label == f"Download {Path(batch[1]).name}"
    assert Path(button.value["path"]).read_bytes() == Path(batch[1]).read_bytes()  # metadata and all


def test_a_plot_is_one_entry_shown_as_its_grid_and_its_cells_are_runs_for_the_viewer(history):
    """An 8-cell X/Y plot used to count as 8 runs and push the earlier pictures out."""
    first = history.entries[0]
    cells = [first.results[0]] * 8
    grid = first.files[0][0]  # any PNG stands in for the grid
    session = history.add_plot(cells, [first.files[0][:1]] * 8, grid, "Sampler x Steps")
    assert len(session) == 3 and session.entries[-1].number == 3
    assert [(p.path, p.image) for p in session.pictures()][0] == (grid, None)
    assert len(session.pictures()) == len(history.pictures()) + 1
    items, *_ = history_tab.show(session)
    assert items[0] == (cache.served(grid), "#3 · X/Y plot: Sampler x Steps")
    assert [run.number for run in session.runs()] == ["1", "2"] + [f"3.{i}" for i in range(1, 9)]
    assert "#3 X/Y plot: Sampler x Steps" in history_tab.describe(session, 0)


def test_numbers_stay_with_their_runs_when_old_ones_are_dropped(history):
    """History and the viewer once numbered runs by their place in the list, which shifts."""
    result, paths = history.entries[1].results[0], history.entries[1].files[0]
    session = SessionHistory(limit=3)
    for _ in range(5):
        session = session.add_run(result, paths)
    assert [e.number for e in session.entries] == [3, 4, 5]
    assert [caption for _, caption in history_tab.show(session)[0]] == ["#5 · seed 9", "#4 · seed 9", "#3 · seed 9"]
    assert [viewer_tab.history_choices(session)["choices"][i][0][:3] for i in range(3)] == ["#3 ", "#4 ", "#5 "]


def test_send_to_img2img_from_a_batch_sends_that_pictures_own_seed(history, monkeypatch):
    monkeypatch.setattr(gr, "Warning", pytest.fail)  # our own PNGs need no warning
    batch = files(history)[0]
    *values, picture, strength, tabs = pnginfo_tab.fill(batch[1], "img2img", with_picture=True)
    sent = dict(zip(pnginfo_tab.SENT_FIELDS, values))
    assert (sent["prompt"], sent["seed"], sent["num_images_per_prompt"]) == ("a red circle", 6, 2)
    assert picture == cache.served(batch[1]) and tabs.selected == "img2img"
    assert isinstance(strength, type(gr.skip()))  # a txt2img run has no denoising strength


def test_the_history_is_bounded_in_bytes_as_well_as_in_entries(history):
    """By count alone, 12 runs at 2048x2048, batch 8, 150 steps would keep about 56 GiB."""
    result, paths = history.entries[1].results[0], history.entries[1].files[0]
    size = result.trajectory.nbytes()
    session = SessionHistory(max_bytes=3 * size)
    for _ in range(5):
        session = session.add_run(result, paths)
    assert len(session) == 3 and session.nbytes() == 3 * size <= session.max_bytes
    assert [e.number for e in session.entries] == [3, 4, 5]
    huge = SessionHistory(max_bytes=size // 2).add_run(result, paths)
    assert len(huge) == 1  # the newest run always stays, however large


def test_a_branch_is_a_run_of_its_own_with_its_parent_and_step(bundled_manager, history, tmp_path):
    from studio import branching

    parent = history.entries[1].results[0]
    branch = branching.branch(bundled_manager, parent, 1, parent_run="2", prompt="a green triangle")
    session = history.add_branch(branch, OutputWriter(tmp_path).write(branch), "2", 1)
    entry = session.entries[-1]
    assert (entry.number, entry.parent, entry.at_step) == (3, "2", 1)
    label = viewer_tab.history_choices(session)["choices"][-1][0]
    assert label.startswith("#3 txt2img, branch of #2 after step 1: a green triangle")
