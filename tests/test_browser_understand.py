"""Real-browser tests of the viewer's "why" sections: branch from a step and see the run and its
branch side by side; move the CFG lens slider and see x0 change; the convergence chart.
Same browser and server as tests/test_browser.py (Debian's chromium, never downloaded)."""
from __future__ import annotations

import re

import numpy as np
from playwright.sync_api import expect

from tests.test_browser import (GENERATION_SECONDS, browser, expect_loaded_image, generate_in_txt2img, page,  # noqa: F401
                                picture_pixels, set_number)


def open_in_viewer(page, steps: int) -> None:
    page.click("#tab-viewer-button")
    page.click("#viewer-load")
    expect(page.locator("#viewer-caption")).to_contain_text(f"Step {steps} of {steps}")


def test_branching_from_a_step_shows_the_run_and_its_branch_side_by_side(page, artifacts):
    generate_in_txt2img(page, "a large red circle on a blue background", steps=12, seed=5)
    open_in_viewer(page, 12)
    set_number(page, "viewer-step", 6)
    expect(page.locator("#viewer-caption")).to_contain_text("Step 6 of 12")
    page.fill("#branch-prompt textarea", "a large yellow square on a blue background")
    page.click("#viewer-branch")
    info = page.locator("#viewer-branch-info")
    expect(info).to_contain_text("Branch of #1 after step 6: ran steps 7 to 12", timeout=GENERATION_SECONDS * 1000)
    expect_loaded_image(page, "#viewer-branch-compare")
    # the viewer now shows the branch, a run of its own in History's numbering
    expect(page.locator("#viewer-run input")).to_have_value(
        re.compile(r"^#2 txt2img, branch of #1 after step 6: a large yellow square .*· seed 5$"))
    expect(page.locator("#viewer-caption")).to_contain_text("Step 12 of 12")
    sheet = picture_pixels(page, "#viewer-branch-compare").astype(float)
    page.locator("#viewer-branch-box").scroll_into_view_if_needed()
    page.screenshot(path=artifacts / "viewer-branch.png", full_page=True)
    # two rows of 12 x0 pictures: the last columns differ (red circle above, yellow square below)
    height, width = sheet.shape[:2]
    top, bottom = sheet[16:16 + 48, 80:], sheet[16 + 48 + 16:16 + 2 * 48 + 16, 80:]
    last_top, last_bottom = top[:, -48:], bottom[:, -48:]
    assert np.abs(last_top - last_bottom).mean() > 20
    yellow = np.array([250, 220, 30.0])
    assert (np.abs(last_bottom - yellow).sum(-1) < 120).mean() > (np.abs(last_top - yellow).sum(-1) < 120).mean() + 0.1


def test_the_lens_slider_re_mixes_x0_and_the_convergence_plot_says_when_it_settled(page, artifacts):
    generate_in_txt2img(page, "a large green triangle on a white background", steps=10, seed=7)
    open_in_viewer(page, 10)
    set_number(page, "viewer-step", 3)
    expect(page.locator("#viewer-lens-note")).to_contain_text("Step 3: the run used guidance 7.5")
    for name in ("lens-uncond", "lens-cond", "lens-guided", "lens-difference", "viewer-settle-chart"):
        page.locator(f"#{name}").scroll_into_view_if_needed()  # its picture loads lazily, once in view
        expect_loaded_image(page, f"#{name}")
    expect(page.locator("#viewer-settled")).to_contain_text("The picture")
    at_run_scale = picture_pixels(page, "#lens-guided").astype(float)
    before = page.locator("#lens-guided img").first.get_attribute("src")
    set_number(page, "lens-scale", 1)
    expect(page.locator("#lens-guided img").first).not_to_have_attribute("src", before)
    expect_loaded_image(page, "#lens-guided")
    at_one = picture_pixels(page, "#lens-guided").astype(float)
    conditional = picture_pixels(page, "#lens-cond").astype(float)
    page.locator("#viewer-lens-box").scroll_into_view_if_needed()
    page.screenshot(path=artifacts / "viewer-lens.png", full_page=True)
    assert np.abs(at_one - at_run_scale).mean() > 5       # the slider changed x0
    assert np.abs(at_one - conditional).mean() < 3        # at 1 the guided x0 is the conditional one
