"""The viewer tab's event functions: what a person reads and sees, and pictures served whole."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from studio import export
from studio.history import SessionHistory
from studio.requests import GenerationRequest
from studio.ui import cache, viewer_tab


@pytest.fixture(scope="module")
def img2img_run(bundled_manager):
    """An img2img run at strength 0.3 of 20 steps: 6 steps ran, the first 14 were skipped."""
    start = bundled_manager.generate(GenerationRequest(prompt="a large red circle", num_inference_steps=8, seed=5))
    return bundled_manager.generate(GenerationRequest(prompt="a large blue square", image=start.images[0],
                                                      strength=0.3, num_inference_steps=20, seed=5))


def test_a_picture_shown_again_is_served_from_the_same_file_not_rewritten():
    picture = Image.new("RGB", (64, 64), (200, 30, 30))
    first = Path(cache.picture_file(picture))
    inode = first.stat().st_ino
    again = Path(cache.picture_file(picture.copy()))
    assert again == first and again.stat().st_ino == inode  # Gradio's own PIL path truncates and rewrites
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(picture))
    assert cache.picture_file(Image.new("RGB", (64, 64), "blue")) != str(first)
    assert not [p for p in os.listdir(first.parent) if p.startswith(".")]  # no half-written staging file


def test_a_picture_the_cache_pruning_took_is_written_again_and_a_kept_one_marked_in_use():
    picture = Image.new("RGB", (64, 64), (30, 200, 30))
    first = Path(cache.picture_file(picture))
    os.utime(first, (0, 0))
    assert Path(cache.picture_file(picture)) == first and first.stat().st_mtime > 1e9  # touched: in use
    first.unlink()  # the pruning took it, as it may between a look and the touch
    assert cache.touch(first) is False  # not FileNotFoundError out of the request
    assert Path(cache.picture_file(picture)) == first
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(picture))


def test_the_header_and_the_slider_count_the_steps_that_ran(bundled_manager, img2img_run):
    runs = SessionHistory().add_run(img2img_run, ())
    slider, noisy, clean, caption, chart, strip, frames = viewer_tab.load_run(bundled_manager, runs, None, "fast")
    assert slider["maximum"] == slider["value"] == 6 and len(strip) == 6
    # the browser's scrub gets every step that ran, captioned as the header is
    steps = json.loads(frames)["steps"]
    assert len(steps) == 6 and steps[0]["caption"].startswith("Step 1 of the 6 that ran (15 of 20 scheduled")
    assert all(s["x0"].startswith("data:image/png;base64,") and s["xt"] != s["x0"] for s in steps)
    assert caption.startswith("**Step 6 of the 6 that ran** (20 of 20 scheduled; strength skipped the first 14)")
    _, _, first, _ = viewer_tab.show_step(bundled_manager, runs, None, 1, "fast")
    assert first.startswith("**Step 1 of the 6 that ran** (15 of 20 scheduled")


def test_a_full_run_says_step_k_of_n(bundled_manager):
    run = bundled_manager.generate(GenerationRequest(prompt="a small red circle", num_inference_steps=4, seed=1))
    _, _, caption, _ = viewer_tab.show_step(bundled_manager, SessionHistory().add_run(run, ()), None, 2, "fast")
    assert caption.startswith("**Step 2 of 4** ·")


def test_another_decoder_redecodes_the_filmstrip_too(bundled_manager, img2img_run):
    runs = SessionHistory().add_run(img2img_run, ())
    *_, fast_strip, _ = viewer_tab.load_run(bundled_manager, runs, None, "fast")
    noisy, clean, caption, chart, full_strip = viewer_tab.redecode(bundled_manager, runs, None, 3, "full")
    assert "Step 3 of the 6" in caption  # the slider stays where it was
    assert full_strip[2][0] == clean  # the strip shows what the viewer shows
    assert [path for path, _ in full_strip] != [path for path, _ in fast_strip]
    full = viewer_tab.redecode(bundled_manager, runs, None, 3, "full")
    assert full[:2] == (noisy, clean)  # decoded once: a scrub back serves the same files


def test_sigma_is_drawn_with_a_font_that_has_it():
    assert isinstance(export.font(), ImageFont.FreeTypeFont)  # DejaVu Sans (fonts-dejavu-core)
    assert export.sigma_sign() == "σ"
    assert "σ=" in export.caption(type("Step", (), {"index": 0, "timestep": 999.0, "sigma": 4096.0})())


def test_the_gif_plays_at_150_ms_a_frame_and_lingers_on_the_last(bundled_manager, img2img_run, tmp_path):
    pairs = export.step_pictures(bundled_manager, img2img_run.trajectory, "fast")
    gif = export.animated_gif(pairs, img2img_run.trajectory.steps, tmp_path / "run.gif")
    durations = []
    with Image.open(gif) as animation:
        for frame in range(animation.n_frames):
            animation.seek(frame)
            durations.append(animation.info["duration"])
    assert durations == [export.GIF_MS_PER_FRAME] * 5 + [export.GIF_MS_PER_FRAME * 8]
