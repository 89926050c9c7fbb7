"""Real-browser tests: Debian's chromium, driven by Playwright, uses the studio like a person would.

The studio runs on 127.0.0.1 (conftest's `app_server`, the bundled tiny-shapes model); elements
are found by the `elem_id`s the UI sets (role-based locators time out with Gradio 6). Screenshots
go to tests/artifacts/. The browser is the system's /usr/bin/chromium: nothing is downloaded
(never `playwright install`), and without it these tests fail, they do not skip.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from playwright.sync_api import Page, expect, sync_playwright

from benchmarks.browser import CHROMIUM, CHROMIUM_ARGS
from studio import branching, metadata
from studio.outputs import OutputWriter
from studio.requests import GenerationRequest

VIEWPORT = {"width": 1280, "height": 1000}
PAGE_READY_SECONDS = 20
# A ceiling for waits on the page's own state (the seed line, the picture), never a measure of
# speed: a loaded 2-core machine once took over 20 s for one 20-step picture here.
GENERATION_SECONDS = 180
SEED_TEXT = re.compile(r"Seed:\s*\d+")


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
                    "(apt-get install chromium). They never download a browser.", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_server) -> Page:
    """A fresh page (own cookies, own Gradio session) on the studio, ready to use."""
    url, _ = app_server
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(url)
    page.wait_for_selector("#txt2img-generate", timeout=PAGE_READY_SECONDS * 1000)
    yield page
    context.close()


def set_number(page: Page, elem_id: str, value) -> None:
    """Type into a slider's number box and press Enter, as a person would."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    expect(page.locator(f"#{elem_id} input[type=range]")).to_have_value(str(value))


def choose(page: Page, elem_id: str, option: str) -> None:
    """Open a dropdown and click one of its options."""
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id} [role=option][aria-label='{option}']").click()
    expect(page.locator(f"#{elem_id} input")).to_have_value(option)


def expect_loaded_image(page: Page, selector: str) -> None:
    """An <img> under `selector` is shown and its picture really arrived from the server."""
    image = page.locator(f"{selector} img").first
    expect(image).to_be_visible(timeout=GENERATION_SECONDS * 1000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())


def test_page_shows_title_tabs_and_the_model_on_the_cpu(page, app_server):
    _, settings = app_server
    expect(page).to_have_title("Diffusion Studio")
    expect(page.locator("h1")).to_have_text("Diffusion Studio")
    expect(page.locator("#tab-txt2img-button")).to_have_text("Text to image")
    expect(page.locator("#tab-img2img-button")).to_have_text("Image to image")
    expect(page.locator("#tab-history-button")).to_have_text("History")
    expect(page.locator("#tab-pnginfo-button")).to_have_text("PNG info")

    page.locator("#settings-panel").get_by_text("Model and settings").click()
    status = page.locator("#settings-status")
    expect(status).to_be_visible()
    expect(status).to_contain_text("cpu")
    expect(status).to_contain_text(Path(settings.model).name)


def test_txt2img_generate_shows_the_picture_and_its_seed(page, artifacts):
    page.fill("#txt2img-prompt textarea", "a small red circle at the top left on a blue background")
    page.click("#txt2img-generate")

    expect(page.locator("#txt2img-info")).to_contain_text(SEED_TEXT, timeout=GENERATION_SECONDS * 1000)
    expect_loaded_image(page, "#txt2img-gallery")
    expect(page.locator("#txt2img-info")).to_contain_text("20 steps")
    expect(page.locator("#txt2img-live-preview img")).to_be_visible()
    page.screenshot(path=artifacts / "txt2img.png", full_page=True)


def test_img2img_strength_says_how_many_steps_run_and_generates(page, artifacts, tmp_path):
    start = tmp_path / "start.png"
    picture = Image.new("RGB", (64, 64), (220, 40, 40))  # a red field with a blue square
    picture.paste((40, 60, 220), (20, 20, 44, 44))
    picture.save(start)

    page.click("#tab-img2img-button")
    expect(page.locator("#img2img-image")).to_be_visible()
    note = page.locator("#img2img-steps-note")
    expect(note).to_contain_text("15 of 20 steps")  # the default strength, 0.75
    page.set_input_files("#img2img-image input[type=file]", start)
    expect(page.locator("#img2img-image img").first).to_be_visible()

    set_number(page, "img2img-strength", 0.5)
    expect(note).to_contain_text("10 of 20 steps")
    set_number(page, "img2img-steps", 30)
    expect(note).to_contain_text("15 of 30 steps")
    set_number(page, "img2img-steps", 20)
    expect(note).to_contain_text("10 of 20 steps")

    page.click("#img2img-generate")
    expect_loaded_image(page, "#img2img-gallery")
    expect(page.locator("#img2img-info")).to_contain_text(SEED_TEXT)
    expect(page.locator("#img2img-info")).to_contain_text("10 steps")
    page.screenshot(path=artifacts / "img2img.png", full_page=True)


def test_stop_ends_a_long_run_says_where_and_the_next_generate_works(page, artifacts):
    # 150 steps at 256x256 take over a minute here: if Stop left the run going, the next
    # generation would wait for it (one generation at a time) and miss the bound below.
    set_number(page, "txt2img-steps", 150)
    set_number(page, "txt2img-width", 256)
    set_number(page, "txt2img-height", 256)
    page.click("#txt2img-generate")
    expect(page.locator("#txt2img-live-preview img")).to_be_visible(timeout=GENERATION_SECONDS * 1000)

    info, generate, stop = (page.locator(f"#txt2img-{name}") for name in ("info", "generate", "stop"))
    expect(info).to_contain_text(re.compile(r"step \d+ of 150 · [\d.]+ steps/s"), timeout=GENERATION_SECONDS * 1000)
    expect(generate).to_be_disabled()  # a second press cannot be lost silently
    page.screenshot(path=artifacts / "txt2img-running.png", full_page=True)

    stop.click()
    expect(info).to_contain_text(re.compile(r"Stopped at step \d+ of 150"), timeout=GENERATION_SECONDS * 1000)
    stopped_at = int(re.search(r"Stopped at step (\d+)", info.inner_text()).group(1))
    assert stopped_at < 150
    expect(info).not_to_contain_text(SEED_TEXT)
    expect(page.locator("#txt2img-gallery img")).to_have_count(0)
    expect(generate).to_be_enabled()
    expect(stop).to_be_disabled()  # nothing runs, so nothing to stop
    for output in ("txt2img-gallery", "txt2img-live-preview"):
        tracker = page.locator(f"#{output} [data-testid=status-tracker]")
        expect(tracker).not_to_have_class(re.compile(r"\bgenerating\b"))
    page.screenshot(path=artifacts / "txt2img-stopped.png", full_page=True)

    # The stopped run let go of the model: the next one runs.
    set_number(page, "txt2img-steps", 5)
    page.click("#txt2img-generate")
    expect(info).to_contain_text("5 steps", timeout=GENERATION_SECONDS * 1000)
    expect_loaded_image(page, "#txt2img-gallery")
    expect(page.locator("#txt2img-gallery [data-testid=status-tracker]")).to_have_class(re.compile(r"\bhide\b"))


def test_closing_the_page_stops_its_run_even_without_previews(page, bundled_manager):
    """With the live preview off the event sends nothing until the end, so only the page's
    unload (Gradio's heartbeat) can tell the studio that nobody is waiting for the picture."""
    set_number(page, "txt2img-steps", 150)
    set_number(page, "txt2img-width", 256)
    set_number(page, "txt2img-height", 256)
    page.locator("#txt2img-preview label", has_text="Off").click()
    page.click("#txt2img-generate")
    # the run under way (on a loaded machine its first step comes after expect's default 5 s)
    expect(page.locator("#txt2img-gallery [data-testid=status-tracker]")).to_contain_text(
        "/150", timeout=GENERATION_SECONDS * 1000)
    assert bundled_manager._running_cancel is not None
    page.context.close()
    # the whole run takes over a minute here; stopped, it ends after the step under way
    assert bundled_manager._lock.acquire(timeout=GENERATION_SECONDS), "the run went on after the page closed"
    bundled_manager._lock.release()


def test_batch_count_fills_the_gallery_batch_by_batch(page, artifacts):
    set_number(page, "txt2img-steps", 4)
    set_number(page, "txt2img-batch", 2)
    set_number(page, "txt2img-batch-count", 2)
    seed_box = page.locator("#txt2img-seed input")
    seed_box.fill("21")
    seed_box.press("Enter")
    page.click("#txt2img-generate")
    expect(page.locator("#txt2img-info")).to_contain_text("Seeds: 23, 24", timeout=GENERATION_SECONDS * 1000)
    expect(page.locator("#txt2img-info")).to_contain_text("Seeds: 21, 22")
    page.locator("#txt2img-gallery button[aria-label='Close']").first.click()  # the grid, not the first picture
    expect(page.locator("#txt2img-gallery .thumbnail-item img, #txt2img-gallery .grid-wrap img")).to_have_count(4)
    page.screenshot(path=str(artifacts / "txt2img-batch-count.png"), full_page=True)


def drop_file(page: Page, selector: str, path: Path, mime: str = "image/png") -> None:
    """Drag a file from the desktop onto `selector`, as a person would: a real `drop` event."""
    data = list(path.read_bytes())
    transfer = page.evaluate_handle(
        "([name, bytes, mime]) => { const t = new DataTransfer();"
        " t.items.add(new File([new Uint8Array(bytes)], name, {type: mime})); return t; }",
        [path.name, data, mime])
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def picture_pixels(page: Page, selector: str) -> np.ndarray:
    """The pixels of the picture an <img> under `selector` shows, fetched as the browser did."""
    image = page.locator(f"{selector} img").first
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    response = page.request.get(image.get_attribute("src"))
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


def expect_tab_selected(page: Page, tab: str) -> None:
    expect(page.locator(f"#tab-{tab}-button")).to_have_attribute("aria-selected", "true")


def generate_in_txt2img(page: Page, prompt: str, steps: int, seed: int) -> None:
    page.fill("#txt2img-prompt textarea", prompt)
    set_number(page, "txt2img-steps", steps)
    seed_box = page.locator("#txt2img-seed input")
    seed_box.fill(str(seed))
    seed_box.press("Enter")
    page.click("#txt2img-generate")
    expect_loaded_image(page, "#txt2img-gallery")
    expect(page.locator("#txt2img-info")).to_contain_text(f"Seed:** {seed}".replace("**", ""))


def test_a_studio_png_dropped_on_png_info_fills_txt2img(page, bundled_manager, artifacts, tmp_path):
    made = bundled_manager.generate(GenerationRequest(
        prompt="a large green square at the bottom right", negative_prompt="red", num_inference_steps=13,
        guidance_scale=5.5, scheduler="Euler a", seed=4321))
    [png] = OutputWriter(tmp_path).write(made)

    page.click("#tab-pnginfo-button")
    drop_file(page, "#pnginfo-image button[aria-label*=Drop]", Path(png))
    fields = page.locator("#pnginfo-fields")
    expect(fields).to_contain_text("a large green square at the bottom right")
    expect(fields).to_contain_text("Euler a")
    expect(page.locator("#pnginfo-text textarea")).to_have_value(re.compile(r"Seed: 4321"))
    expect(page.locator("#pnginfo-regenerate")).to_be_hidden()  # not a branch
    page.screenshot(path=artifacts / "pnginfo.png", full_page=True)

    page.click("#pnginfo-to-txt2img")
    expect_tab_selected(page, "txt2img")
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a large green square at the bottom right")
    expect(page.locator("#txt2img-negative-prompt textarea")).to_have_value("red")
    expect(page.locator("#txt2img-seed input")).to_have_value("4321")
    expect(page.locator("#txt2img-steps input[type=number]")).to_have_value("13")
    expect(page.locator("#txt2img-guidance input[type=number]")).to_have_value("5.5")
    expect(page.locator("#txt2img-scheduler input")).to_have_value("Euler a")
    page.screenshot(path=artifacts / "pnginfo-sent-to-txt2img.png", full_page=True)


def test_a_branchs_png_dropped_on_png_info_is_made_again_pixel_for_pixel(page, bundled_manager, artifacts,
                                                                        tmp_path):
    parent = bundled_manager.generate(GenerationRequest(
        prompt="a large yellow circle on a blue background", num_inference_steps=10, scheduler="DPM++ 2M", seed=21))
    made = branching.branch(bundled_manager, parent, 4, prompt="a large red triangle on a blue background",
                            guidance_scale=5.0)
    [png] = OutputWriter(tmp_path).write(made)

    page.click("#tab-pnginfo-button")
    drop_file(page, "#pnginfo-image button[aria-label*=Drop]", Path(png))
    expect(page.locator("#pnginfo-fields")).to_contain_text("Parent prompt")
    page.click("#pnginfo-regenerate")
    expect(page.locator("#pnginfo-regenerated-info")).to_contain_text("Identical: every pixel is the dropped picture's.")
    expect(page.locator("#pnginfo-regenerated-info")).to_contain_text("Ran the parent (#1) and branched it after step 4 (#2)")
    expect_loaded_image(page, "#pnginfo-regenerated")
    assert (picture_pixels(page, "#pnginfo-regenerated") == np.asarray(made.images[0].convert("RGB"))).all()
    page.screenshot(path=artifacts / "pnginfo-branch-made-again.png", full_page=True)
    page.click("#tab-viewer-button")
    expect(page.locator("#viewer-run input")).to_have_value(re.compile(r"#2 .*branch of #1 after step 4"))


def test_reproduce_makes_a_png_again_and_says_it_is_identical(page, bundled_manager, artifacts, tmp_path):
    made = bundled_manager.generate(GenerationRequest(
        prompt="a small purple triangle at the bottom left on an orange background", num_inference_steps=12,
        scheduler="UniPC", seed=77))
    [png] = OutputWriter(tmp_path).write(made)
    page.click("#tab-pnginfo-button")
    drop_file(page, "#pnginfo-image button[aria-label*=Drop]", Path(png))
    expect(page.locator("#pnginfo-fields")).to_contain_text("RNG")  # the run card, in the parameters
    page.click("#pnginfo-reproduce")
    info = page.locator("#pnginfo-reproduced-info")
    expect(info).to_contain_text("Identical: every pixel is the dropped picture's.", timeout=GENERATION_SECONDS * 1000)
    expect(info).to_contain_text("Made again here as #1")
    expect_loaded_image(page, "#pnginfo-reproduced")
    assert (picture_pixels(page, "#pnginfo-reproduced") == np.asarray(made.images[0].convert("RGB"))).all()
    page.locator("#pnginfo-reproduce-box").scroll_into_view_if_needed()
    page.screenshot(path=artifacts / "pnginfo-reproduce.png", full_page=True)


def drag_slider_to(page: Page, elem_id: str, fraction: float) -> int:
    """Scrub: press on the slider's track and drag to `fraction` of its width; the value it shows."""
    track = page.locator(f"#{elem_id} input[type=range]")
    box = track.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.5, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * fraction, y, steps=8)
    page.mouse.up()
    return int(page.locator(f"#{elem_id} input[type=number]").input_value())


def test_scrubbing_the_viewer_slider_shows_other_steps(page, artifacts):
    generate_in_txt2img(page, "a small red circle at the top left on a blue background", steps=12, seed=3)
    page.click("#tab-viewer-button")
    page.click("#viewer-load")
    caption = page.locator("#viewer-caption")
    expect(caption).to_contain_text("Step 12 of 12")
    fast_src = page.locator("#viewer-xt img").first.get_attribute("src")
    page.locator("#viewer-decoder").get_by_text("Full VAE").click()  # x_t as the VAE decodes it
    expect(page.locator("#viewer-xt img").first).not_to_have_attribute("src", fast_src)
    last = picture_pixels(page, "#viewer-xt")

    shown = []
    for fraction, name in ((0.15, "viewer-scrub-early.png"), (0.6, "viewer-scrub-middle.png")):
        step = drag_slider_to(page, "viewer-step", fraction)
        expect(caption).to_contain_text(f"Step {step} of 12")
        expect(page.locator("#viewer-xt [data-testid=status-tracker]")).to_have_class(re.compile(r"\bhide\b"))
        shown.append((step, picture_pixels(page, "#viewer-xt")))
        page.screenshot(path=artifacts / name, full_page=True)
    (early, early_xt), (middle, middle_xt) = shown
    assert early < middle < 12, (early, middle)
    # Scrubbing toward the end shows x_t with less noise: closer to the last step's picture.
    distance = [np.abs(xt.astype(float) - last).mean() for xt in (early_xt, middle_xt)]
    assert distance[0] > distance[1] > 0, distance


def open_picked_in_viewer(page: Page, label: str, steps: int, shot: Path) -> None:
    """History's "Open in viewer" on the picked picture: the viewer shows that run (`label`, a
    pattern of its name in the run box) at its last step, and its x_t picture arrived."""
    page.click("#history-open-viewer")
    expect_tab_selected(page, "viewer")
    expect(page.locator("#viewer-run input")).to_have_value(re.compile(label))
    expect(page.locator("#viewer-caption")).to_contain_text(f"Step {steps} of {steps}")
    expect_loaded_image(page, "#viewer-xt")
    page.screenshot(path=shot, full_page=True)


def test_a_history_picture_opens_in_the_viewer_and_goes_to_img2img(page, artifacts):
    generate_in_txt2img(page, "a large yellow triangle on a purple background", steps=6, seed=11)
    generate_in_txt2img(page, "a small red circle at the top left on a blue background", steps=4, seed=22)

    page.click("#tab-history-button")
    thumbnails = page.locator("#history-gallery .thumbnail-item")
    expect(thumbnails).to_have_count(2)
    thumbnails.nth(1).click()  # newest first: the older run, 6 steps, seed 11
    expect(page.locator("#history-details")).to_contain_text("seed 11")
    page.screenshot(path=artifacts / "history.png", full_page=True)

    open_picked_in_viewer(page, r"^#1 txt2img: a large yellow", 6, artifacts / "history-open-in-viewer.png")

    page.click("#tab-history-button")
    page.click("#history-to-img2img")
    expect_tab_selected(page, "img2img")
    expect_loaded_image(page, "#img2img-image")
    expect(page.locator("#img2img-prompt textarea")).to_have_value("a large yellow triangle on a purple background")
    expect(page.locator("#img2img-seed input")).to_have_value("11")
    expect(page.locator("#img2img-steps input[type=number]")).to_have_value("6")
    page.screenshot(path=artifacts / "history-sent-to-img2img.png", full_page=True)


def test_an_xy_plot_of_picked_samplers_is_one_history_entry_with_whole_captions(page, artifacts):
    page.click("#tab-xyplot-button")
    choose(page, "xyplot-x-type", "Sampler")
    expect(page.locator("#xyplot-x-values")).to_be_hidden()  # samplers are picked, not typed
    picker = page.locator("#xyplot-x-samplers")
    expect(picker).to_contain_text("DPM++ 2M Karras")
    choose(page, "xyplot-y-type", "Nothing")
    set_number(page, "xyplot-steps", 3)
    page.click("#xyplot-generate")
    expect(page.locator("#xyplot-info")).to_contain_text("4 of 4 cells", timeout=GENERATION_SECONDS * 1000)
    captions = page.locator("#xyplot-gallery .caption-label")
    expect(captions).to_have_count(4)
    expect(captions.nth(3)).to_have_text("Sampler: DPM++ 2M Karras")
    clipped = captions.nth(3).evaluate("e => e.scrollWidth > e.clientWidth")
    assert not clipped  # the whole caption shows, not "Sampler: ..."
    page.screenshot(path=artifacts / "xyplot-samplers.png", full_page=True)

    page.click("#tab-history-button")
    expect(page.locator("#history-gallery .thumbnail-item")).to_have_count(1)  # the plot, not its 4 cells
    expect(page.locator("#history-details")).to_contain_text("#1 X/Y plot: Sampler · 4 cells")
    page.screenshot(path=artifacts / "history-xyplot.png", full_page=True)
    page.click("#history-open-viewer")
    expect_tab_selected(page, "viewer")
    expect(page.locator("#viewer-run input")).to_have_value(re.compile(r"^#1\.1 txt2img: "))
    expect(page.locator("#viewer-caption")).to_contain_text("Step 3 of 3")


def test_a_history_picture_downloads_with_its_parameters_and_its_seed_is_reused(page, tmp_path):
    generate_in_txt2img(page, "a large blue square in the center", steps=5, seed=77)
    page.click("#txt2img-random-seed")
    expect(page.locator("#txt2img-seed input")).to_have_value("-1")

    page.click("#tab-history-button")
    expect(page.locator("#history-gallery .thumbnail-item")).to_have_count(1)
    with page.expect_download() as download:
        page.click("#history-download")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name.endswith("-77.png")
    with Image.open(saved) as png:
        parameters = metadata.parse_parameters(metadata.read_parameters(png))
    assert parameters["Prompt"] == "a large blue square in the center"
    assert (parameters["Seed"], parameters["Steps"]) == ("77", "5")

    page.click("#history-reuse-seed")
    expect_tab_selected(page, "txt2img")
    expect(page.locator("#txt2img-seed input")).to_have_value("77")


def test_a_foreign_png_with_unusable_values_warns_and_fills_the_rest(page, artifacts, tmp_path):
    png = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text(metadata.KEY, "a cat on a sofa\nNegative prompt: blurry\nSteps: 500, Sampler: Restart, "
                                "CFG scale: 6, Seed: 987, Size: 512x768, Model: sd15, Version: v1.10.1")
    Image.new("RGB", (64, 96), (90, 90, 200)).save(png, pnginfo=info)

    page.click("#tab-pnginfo-button")
    drop_file(page, "#pnginfo-image button[aria-label*=Drop]", png)
    expect(page.locator("#pnginfo-notes")).to_contain_text("Sampler: 'Restart'")
    page.click("#pnginfo-to-txt2img")
    toasts = page.locator("[data-testid=toast-body]")
    expect(toasts.filter(has_text="Steps: '500'")).to_have_count(1)
    expect(toasts.filter(has_text="Sampler: 'Restart'")).to_have_count(1)
    expect_tab_selected(page, "txt2img")
    expect(page.locator("#txt2img-prompt textarea")).to_have_value("a cat on a sofa")
    expect(page.locator("#txt2img-seed input")).to_have_value("987")
    # 768 is above what the bundled 64 px model offers (256): warned and kept, as Steps: 500 is
    expect(toasts.filter(has_text="Size: '512x768' is larger than the loaded model takes")).to_have_count(1)
    expect(page.locator("#txt2img-height input[type=number]")).to_have_value("64")
    expect(page.locator("#txt2img-steps input[type=number]")).to_have_value("20")  # kept
    expect(page.locator("#txt2img-scheduler input")).to_have_value("Default")  # kept
    page.screenshot(path=artifacts / "pnginfo-foreign-warnings.png", full_page=True)


def test_the_viewer_of_an_img2img_run_agrees_with_its_slider_and_shows_every_frame(page, artifacts, tmp_path):
    start = tmp_path / "start.png"
    picture = Image.new("RGB", (64, 64), (40, 60, 220))
    picture.paste((220, 40, 40), (16, 16, 48, 48))
    picture.save(start)
    page.click("#tab-img2img-button")
    page.set_input_files("#img2img-image input[type=file]", start)
    expect(page.locator("#img2img-image img").first).to_be_visible()
    set_number(page, "img2img-strength", 0.3)
    expect(page.locator("#img2img-steps-note")).to_contain_text("6 of 20 steps")
    page.click("#img2img-generate")
    expect(page.locator("#img2img-info")).to_contain_text(SEED_TEXT, timeout=GENERATION_SECONDS * 1000)

    page.click("#tab-viewer-button")
    page.click("#viewer-load")
    caption = page.locator("#viewer-caption")
    expect(caption).to_contain_text("Step 6 of the 6 that ran (20 of 20 scheduled")
    expect(page.locator("#viewer-step input[type=number]")).to_have_value("6")
    frames = page.locator("#viewer-filmstrip .thumbnail-item img, #viewer-filmstrip .grid-wrap img")
    expect(frames).to_have_count(6)
    fast_frame = frames.last.get_attribute("src")
    page.screenshot(path=artifacts / "viewer-img2img-fast.png", full_page=True)

    page.locator("#viewer-decoder").get_by_text("Full VAE").click()
    expect(frames.last).not_to_have_attribute("src", fast_frame)  # the strip follows the decoder
    for selector in ("#viewer-x0 img", "#viewer-xt img"):
        expect_loaded_image(page, selector.removesuffix(" img"))
    # every frame arrived whole: a broken <img> has no natural width
    page.wait_for_function("imgs => imgs.every(i => i.complete && i.naturalWidth > 0)",
                           arg=frames.element_handles())
    page.click("#viewer-export")
    expect_loaded_image(page, "#viewer-gif-view")
    page.screenshot(path=artifacts / "viewer-img2img-full-vae.png", full_page=True)


@pytest.fixture(scope="module")
def auth_server(bundled_manager, tmp_path_factory):
    from studio.config import Settings
    from tests.conftest import free_port, serve

    settings = Settings(port=free_port(), auth="ann:s3cret-pass", outputs=str(tmp_path_factory.mktemp("auth")))
    with serve(bundled_manager, settings) as url:
        yield url


def test_the_sign_in_page_signs_in_without_the_api_description(browser, auth_server, artifacts):
    """The sign-in page no longer carries Gradio's API description; it must still work."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    try:
        page.goto(auth_server)
        page.get_by_label("username").fill("ann")
        page.get_by_label("password").fill("s3cret-pass")
        page.screenshot(path=artifacts / "sign-in.png", full_page=True)
        page.get_by_role("button", name="Login").click()
        expect(page.locator("#txt2img-generate")).to_be_visible(timeout=PAGE_READY_SECONDS * 1000)
    finally:
        context.close()


def test_a_saved_run_reopens_in_the_viewer_as_the_live_run_showed(page, browser, app_server, bundled_manager,
                                                                  artifacts, tmp_path):
    """The run file that --trajectory writes, uploaded in a fresh session, shows every step as
    the live run did: the same x0 and x_t pictures at the same step, the same filmstrip."""
    from studio import runs

    prompt = "a large yellow circle on a blue background"
    generate_in_txt2img(page, prompt, steps=8, seed=3)
    page.click("#tab-viewer-button")
    page.locator("#viewer-decoder").get_by_text("Full VAE").click()  # the fast map learns from runs
    page.click("#viewer-load")
    expect(page.locator("#viewer-caption")).to_contain_text("Step 8 of 8")
    live = [picture_pixels(page, f"#viewer-{which}") for which in ("x0", "xt")]

    runs.save(bundled_manager.generate(GenerationRequest(prompt=prompt, num_inference_steps=8, seed=3)), tmp_path)
    context = browser.new_context(viewport=VIEWPORT)  # another visitor: an empty history
    fresh = context.new_page()
    fresh.goto(app_server[0])
    fresh.click("#tab-viewer-button", timeout=PAGE_READY_SECONDS * 1000)
    fresh.locator("#viewer-decoder").get_by_text("Full VAE").click()
    fresh.get_by_text("Open a saved run").click()
    fresh.locator("#viewer-saved-run input[type=file]").set_input_files(
        [str(tmp_path / name) for name in (runs.DESCRIPTION, runs.TENSORS, "picture-0.png")])
    expect(fresh.locator("#viewer-caption")).to_contain_text("Step 8 of 8", timeout=GENERATION_SECONDS * 1000)
    expect(fresh.locator("#viewer-filmstrip img")).to_have_count(8)
    expect(fresh.locator("#viewer-run input")).to_have_value(re.compile(r"#1 txt2img: a large yellow circle"))
    reopened = [picture_pixels(fresh, f"#viewer-{which}") for which in ("x0", "xt")]
    for frame in fresh.locator("#viewer-filmstrip img").element_handles():
        fresh.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=frame)
    expect(fresh.locator("[data-testid=toast-body]")).to_have_count(0)  # no error (a decoder picked first)
    fresh.screenshot(path=artifacts / "viewer-saved-run.png", full_page=True)
    context.close()
    assert all((a == b).all() for a, b in zip(live, reopened))


# ----- the viewer's "why" sections: branch from a step, the CFG lens, settling -----
def open_in_viewer(page, steps: int) -> None:
    page.click("#tab-viewer-button")
    page.click("#viewer-load")
    expect(page.locator("#viewer-caption")).to_contain_text(f"Step {steps} of {steps}",
                                                            timeout=GENERATION_SECONDS * 1000)


def test_branching_from_a_step_shows_the_run_and_its_branch_side_by_side(page, artifacts):
    generate_in_txt2img(page, "a large red circle on a blue background", steps=12, seed=5)
    open_in_viewer(page, 12)
    # early: this model settles a large shape's colour by step 5 of 12, and a branch into yellow
    # after step 6 ends orange (a branch after step 3 or 4 reads yellow, classify)
    set_number(page, "viewer-step", 3)
    expect(page.locator("#viewer-caption")).to_contain_text("Step 3 of 12")
    page.fill("#branch-prompt textarea", "a large yellow square on a blue background")
    page.click("#viewer-branch")
    info = page.locator("#viewer-branch-info")
    expect(info).to_contain_text("Branch of #1 after step 3: ran steps 4 to 12", timeout=GENERATION_SECONDS * 1000)
    expect_loaded_image(page, "#viewer-branch-compare")
    # the viewer now shows the branch, a run of its own in History's numbering
    expect(page.locator("#viewer-run input")).to_have_value(
        re.compile(r"^#2 txt2img, branch of #1 after step 3: a large yellow square .*· seed 5$"))
    expect(page.locator("#viewer-caption")).to_contain_text("Step 12 of 12")
    sheet = picture_pixels(page, "#viewer-branch-compare").astype(float)
    page.locator("#viewer-branch-box").scroll_into_view_if_needed()
    page.screenshot(path=artifacts / "viewer-branch.png", full_page=True)
    # two rows of 12 x0 pictures: the last columns differ (red circle above, yellow square below)
    top, bottom = sheet[16:16 + 48, 80:], sheet[16 + 48 + 16:16 + 2 * 48 + 16, 80:]
    last_top, last_bottom = top[:, -48:], bottom[:, -48:]

    def share(picture, mask):
        r, g, b = picture[..., 0], picture[..., 1], picture[..., 2]
        return mask(r, g, b).mean()

    def red(r, g, b):
        return (r > 110) & (g < 90) & (b < 110)

    def yellow(r, g, b):
        return (r > 150) & (g > 150) & (b < 130)

    assert share(last_top, red) > 0.05 and share(last_bottom, red) < 0.01
    assert share(last_bottom, yellow) > 0.05 and share(last_top, yellow) < 0.01


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


def test_picking_a_word_shows_its_attention_over_x0_and_a_click_ranks_the_words(page, artifacts):
    page.check("#txt2img-record-attention input")
    generate_in_txt2img(page, "a large red circle on a blue background", steps=10, seed=5)
    open_in_viewer(page, 10)
    page.locator("#viewer-attention-box").scroll_into_view_if_needed()
    note, overlay = page.locator("#viewer-attention-note"), "#viewer-attention-overlay"
    expect(note).to_contain_text("at step 10, over its x0")
    # the prompt's words, each once ("a" is in it twice)
    words = page.locator("#viewer-attention-word label")
    expect(words).to_have_text(["a", "large", "red", "circle", "on", "blue", "background"])
    words.filter(has_text="blue").click()
    expect(note).to_contain_text("The attention of blue at step 10")
    expect_loaded_image(page, overlay)
    page.locator("#viewer-attention-all input").check()
    expect(note).to_contain_text("The attention of blue averaged over all steps")
    expect_loaded_image(page, overlay)
    picture = page.locator(f"{overlay} img").first
    size = picture.bounding_box()
    picture.click(position={"x": size["width"] / 2, "y": size["height"] / 2})
    ranking = page.locator("#viewer-attention-ranking")
    expect(ranking).to_contain_text("At (50% across, 50% down), over all steps")
    # the centre is the red circle's: its colour word leads there
    expect(ranking.locator("li").first).to_have_text(re.compile(r"^red: \d+%$"))
    page.locator("#viewer-attention-box").scroll_into_view_if_needed()
    page.screenshot(path=artifacts / "viewer-attention.png", full_page=True)
    # the player got the maps too: its third frame is x0 under the picked word's attention
    player = page.frame_locator("#viewer-player iframe")
    expect(player.locator(".studio-player-word option")).to_have_count(7)
    expect(player.locator(".studio-player canvas")).to_have_count(3)
    # a run without recording says how to record
    page.click("#tab-txt2img-button")
    page.locator("#txt2img-record-attention input").uncheck()
    generate_in_txt2img(page, "a small green square", steps=4, seed=6)
    open_in_viewer(page, 4)
    expect(note).to_contain_text("This run did not record attention")


def canvas_picture(frame_or_page, index: int) -> str:
    """The player's `index`th frame (0: x_t, 1: x0) as a PNG data: URI, from its canvas."""
    return frame_or_page.locator(".studio-player canvas").nth(index).evaluate("c => c.toDataURL()")


def test_the_slider_and_arrow_keys_switch_frames_in_the_browser_and_play_animates_the_run(page, artifacts):
    generate_in_txt2img(page, "a large blue triangle on a yellow background", steps=20, seed=8)
    open_in_viewer(page, 20)
    frame = page.frame_locator("#viewer-player iframe")  # the player's own document
    player = frame.locator(".studio-player")
    expect(player).to_have_attribute("data-step", "20")
    last = canvas_picture(frame, 1)
    slider = frame.locator(".studio-player-slider")
    slider.focus()
    for _ in range(3):
        slider.press("ArrowLeft")
    expect(player).to_have_attribute("data-step", "17")
    expect(frame.locator(".studio-player-caption")).to_contain_text("Step 17 of 20")
    assert canvas_picture(frame, 1) != last
    # where the player stopped, the viewer's slider and the server's pictures follow
    expect(page.locator("#viewer-step input[type=number]")).to_have_value("17")
    expect(page.locator("#viewer-caption")).to_contain_text("Step 17 of 20", timeout=GENERATION_SECONDS * 1000)
    page.locator("#viewer-player").scroll_into_view_if_needed()
    page.screenshot(path=artifacts / "viewer-scrub-player.png", full_page=True)
    # and the viewer's slider moves the player
    set_number(page, "viewer-step", 5)
    expect(player).to_have_attribute("data-step", "5")
    frame.locator(".studio-player-play").click()  # plays 6 to 20 and stops
    expect(frame.locator(".studio-player-play")).to_have_text("Play", timeout=GENERATION_SECONDS * 1000)
    expect(player).to_have_attribute("data-step", "20")
    assert canvas_picture(frame, 1) == last
    expect(page.locator("#viewer-step input[type=number]")).to_have_value("20")
    expect(page.locator("#viewer-caption")).to_contain_text("Step 20 of 20", timeout=GENERATION_SECONDS * 1000)


def test_the_exported_replay_page_plays_from_a_file_with_the_network_blocked(page, browser, artifacts, tmp_path):
    page.check("#txt2img-record-attention input")
    generate_in_txt2img(page, "a large green circle on a white background", steps=20, seed=9)
    open_in_viewer(page, 20)
    page.click("#viewer-replay")
    link = page.locator("#viewer-replay-file a").first
    expect(link).to_be_visible(timeout=GENERATION_SECONDS * 1000)
    with page.expect_download() as download:
        link.click()
    saved = tmp_path / "replay.html"
    download.value.save_as(saved)

    offline = browser.new_context(viewport=VIEWPORT, offline=True)
    fetched = []
    offline.route(re.compile(r"^(?!file:|data:)"), lambda route: (fetched.append(route.request.url), route.abort()))
    replay_page = offline.new_page()
    errors = []
    replay_page.on("pageerror", lambda error: errors.append(str(error)))
    replay_page.goto(saved.as_uri())
    player = replay_page.locator("#player")
    expect(player).to_have_attribute("data-step", "20")
    last = canvas_picture(replay_page, 1)
    replay_page.locator(".studio-player-slider").fill("5")
    expect(player).to_have_attribute("data-step", "5")
    expect(player.locator(".studio-player-caption")).to_contain_text("Step 5 of 20")
    assert canvas_picture(replay_page, 1) != last
    replay_page.locator(".studio-player-slider").focus()
    replay_page.keyboard.press("ArrowRight")
    expect(player).to_have_attribute("data-step", "6")
    replay_page.locator(".studio-player-word").select_option("circle")
    replay_page.screenshot(path=artifacts / "replay-page.png", full_page=True)
    replay_page.locator(".studio-player-play").click()
    expect(player).to_have_attribute("data-step", "20", timeout=GENERATION_SECONDS * 1000)
    assert fetched == [] and errors == []
    offline.close()


def test_a_run_made_through_the_a1111_api_opens_in_the_viewer(browser, api_server, artifacts):
    import requests

    url = api_server[0]
    answer = requests.post(url + "sdapi/v1/txt2img", json={"prompt": "a large green triangle on a white background",
                                                           "seed": 314, "steps": 7}, timeout=GENERATION_SECONDS)
    answer.raise_for_status()
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(url)
    page.click("#tab-history-button", timeout=PAGE_READY_SECONDS * 1000)
    page.click("#history-from-api")
    expect(page.locator("#history-gallery .thumbnail-item").first).to_be_visible()
    expect(page.locator("#history-details")).to_contain_text("made through the A1111 API #")
    expect(page.locator("#history-details")).to_contain_text("seed 314")
    page.screenshot(path=artifacts / "history-api-runs.png", full_page=True)
    open_picked_in_viewer(page, r"txt2img: a large green triangle.* seed 314", 7, artifacts / "viewer-api-run.png")
    page.click("#tab-history-button")
    page.click("#history-from-api")  # nothing new: said, and nothing added twice
    expect(page.locator(".toast-body").last).to_contain_text("No new runs")
    context.close()


def test_the_prompt_shows_its_token_count_and_a_long_one_is_in_chunks(page, artifacts):
    counter = page.locator("#txt2img-prompt-tokens")
    expect(counter).to_contain_text("/18 tokens")
    box = page.locator("#txt2img-prompt textarea")
    box.fill("a large (red:1.3) circle on a blue background " * 3)
    expect(counter).to_contain_text("24/36 tokens · in chunks")
    page.screenshot(path=artifacts / "prompt-token-count.png")
    box.fill("a red circle")
    expect(counter).to_have_text("3/18 tokens")


def test_painting_a_mask_on_the_starting_picture_repaints_only_there(page, artifacts, tmp_path):
    start = tmp_path / "start.png"
    Image.new("RGB", (64, 64), (30, 50, 220)).save(start)  # a blue field
    page.click("#tab-img2img-button")
    page.set_input_files("#img2img-image input[type=file]", start)
    expect(page.locator("#img2img-image img").first).to_be_visible()
    page.fill("#img2img-prompt textarea", "a large yellow square in the center on a blue background")
    set_number(page, "img2img-strength", 1)
    page.click("#img2img-inpaint button >> nth=0")  # open the panel
    expect(page.locator("#img2img-mask-paint canvas").first).to_be_visible(timeout=GENERATION_SECONDS * 1000)
    page.click("#img2img-mask-paint button[aria-label=Brush]")
    page.locator("#img2img-mask-paint").scroll_into_view_if_needed()  # the mouse paints only in the viewport
    canvases = page.locator("#img2img-mask-paint canvas")
    box = max((canvases.nth(k).bounding_box() for k in range(canvases.count())),
              key=lambda b: b["width"] * b["height"])  # the drawing canvas: the editor's largest
    page.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    for k in range(11):
        page.mouse.move(box["x"] + box["width"] * (0.35 + 0.03 * k), box["y"] + box["height"] * (0.4 + 0.02 * k), steps=3)
    page.mouse.up()
    page.screenshot(path=artifacts / "img2img-mask-painted.png", full_page=True)
    page.click("#img2img-generate")
    expect_loaded_image(page, "#img2img-gallery")
    expect(page.locator("#img2img-info")).to_contain_text(SEED_TEXT)
    made = picture_pixels(page, "#img2img-gallery").astype(int)
    assert np.abs(made[:6, :6] - np.array([30, 50, 220])).max() == 0  # far from the stroke: the input's pixels
    assert np.abs(made - np.array([30, 50, 220])).max() > 40  # under the stroke: repainted
    page.screenshot(path=artifacts / "img2img-inpainted.png", full_page=True)

    page.click("#tab-viewer-button")
    page.click("#viewer-load")
    expect(page.locator("#viewer-caption")).to_contain_text("Step 20 of 20")
    player = page.frame_locator("#viewer-player iframe")
    frame = player.locator(".studio-player canvas").first
    expect(frame).to_be_visible()
    magenta = frame.evaluate("""c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] > 240 && d[i + 1] < 20 && d[i + 2] > 240; return n; }""")
    assert magenta > 20  # the mask's edge, outlined on x_t
    shown = picture_pixels(page, "#viewer-xt")  # and on the step's own x_t picture
    assert np.all(shown == (255, 0, 255), axis=-1).sum() > 20
    page.screenshot(path=artifacts / "viewer-inpainted.png", full_page=True)


def test_the_lora_picker_sets_weights_and_the_run_uses_them(page, bundled_manager, artifacts):
    prompt = "a large red circle at the right on a blue background"
    page.fill("#txt2img-prompt textarea", prompt)
    page.click("#txt2img-lora button >> nth=0")  # open the accordion
    page.locator("#txt2img-lora-pick input").click()
    page.locator("#txt2img-lora-pick [role=option][aria-label='shift-left']").click()
    expect(page.locator("#txt2img-loras textarea")).to_have_value("shift-left:1")
    expect(page.locator("#txt2img-lora-weight-0")).to_contain_text("shift-left weight")
    expect(page.locator("#txt2img-lora-weight-1")).to_be_hidden()
    set_number(page, "txt2img-lora-weight-0", 0.5)
    expect(page.locator("#txt2img-loras textarea")).to_have_value("shift-left:0.5")
    seed_box = page.locator("#txt2img-seed input")
    seed_box.fill("7")
    seed_box.press("Enter")
    page.click("#txt2img-generate")
    expect(page.locator("#txt2img-info")).to_contain_text("LoRA shift-left 0.5", timeout=GENERATION_SECONDS * 1000)
    expected = bundled_manager.generate(GenerationRequest(prompt=prompt, seed=7, loras="shift-left:0.5"))
    assert np.array_equal(picture_pixels(page, "#txt2img-gallery"), np.asarray(expected.images[0]))
    page.screenshot(path=artifacts / "txt2img-lora-picker.png", full_page=True)


def test_a_png_with_a_lora_sent_to_txt2img_sets_the_picker(page, bundled_manager, artifacts, tmp_path):
    made = bundled_manager.generate(GenerationRequest(prompt="a large blue square on a white background", seed=2,
                                                      loras="shift-left:0.7"))
    [png] = OutputWriter(tmp_path).write(made)
    page.click("#tab-pnginfo-button")
    drop_file(page, "#pnginfo-image button[aria-label*=Drop]", Path(png))
    expect(page.locator("#pnginfo-fields")).to_contain_text("Lora hashes")
    page.click("#pnginfo-to-txt2img")
    expect_tab_selected(page, "txt2img")
    expect(page.locator("#txt2img-lora")).to_contain_text("LoRA: shift-left:0.7")  # its title, and opened
    expect(page.locator("#txt2img-loras textarea")).to_have_value("shift-left:0.7")
    expect(page.locator("#txt2img-lora-weight-0 input[type=number]")).to_have_value("0.7")
    expect(page.locator("#txt2img-lora-pick")).to_contain_text("shift-left")
    page.screenshot(path=artifacts / "pnginfo-lora-sent-to-txt2img.png", full_page=True)
