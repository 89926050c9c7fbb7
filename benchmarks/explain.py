"""Sections 11, 14 and 15 of the benchmark: what attention recording, prompt weighting and a loaded LoRA cost.

Recording attention (studio.attention) runs softmax(QK^T) a second time beside each cross-
attention layer, for the conditional half, and keeps one map per prompt token per step. Off, no
processor is installed (tests/test_attention.py checks the UNet's processors are its own), so
the cost off is that of a run before the feature: nothing. Timings interleave on and off.
"""
from __future__ import annotations

import dataclasses

from benchmarks import plan as p
from benchmarks.generation import studio_request, studio_run
from benchmarks.measure import Stats, interleave, ratio
from benchmarks.report import Figure

MAX_TOKENS = 75  # a CLIP window (77) without its start and end tokens: the most a prompt keeps
# Latent sides elsewhere: SD 1.5 at 512x512 and SDXL at 1024x1024 (maps are float16, per picture)
LATENT_SIDES = {"SD 1.5, 512x512": 64, "SDXL, 1024x1024": 128}


def attention_cost(manager, plan: p.Plan) -> list[Figure]:
    runs = {"recording": studio_run(manager, studio_request(manager, record_attention=True)),
            "off": studio_run(manager, studio_request(manager))}
    times = interleave(runs, 2 * plan.repeats)
    figures = [Figure("11", "recording attention / off", "x",
                      ratio(Stats.of(times["recording"]["seconds"]), Stats.of(times["off"]["seconds"])),
                      note=f"{p.STEPS} steps, default sampler, one picture; off installs no processor (0% by construction)")]
    trajectory = manager.generate(studio_request(manager, record_attention=True)).trajectory
    first = trajectory.steps[0].attention
    tokens, side = first.shape[1], first.shape[-1]
    figures.append(Figure("11", "attention kept per step, bundled model", "KiB",
                          Stats.of([first.numel() * first.element_size() / 1024]),
                          note=f"{tokens} prompt tokens x {side}x{side} latent, float16, one picture"))
    for model, latent in LATENT_SIDES.items():
        for count in (tokens, MAX_TOKENS):
            figures.append(Figure("11", f"attention kept per step, {model}, {count} tokens (computed)", "KiB",
                                  Stats.of([count * latent * latent * 2 / 1024])))
    return figures


# ----- 14: prompt weighting ------------------------------------------------------------------
WEIGHTED = "a small (red:1.3) circle at the top left on a [blue] background"  # the benchmark prompt, weighted


def weighting_cost(manager, plan: p.Plan) -> list[Figure]:
    """Section 14: a prompt in A1111's syntax (weighted embeddings, studio.weighting) against the
    same words plain (the text to the pipeline), and a prompt of two chunks."""
    long = p.PROMPT + " " + p.PROMPT  # past the bundled model's 18-token window
    plain = studio_request(manager)
    runs = {"weighted": studio_run(manager, dataclasses.replace(plain, prompt=WEIGHTED)),
            "plain": studio_run(manager, plain),
            "two chunks": studio_run(manager, dataclasses.replace(plain, prompt=long))}
    times = {k: Stats.of(v["seconds"]) for k, v in interleave(runs, 2 * plan.repeats).items()}
    return [Figure("14", "weighted prompt / plain prompt", "x", ratio(times["weighted"], times["plain"]),
                   note=f"{p.STEPS} steps; the text encoder runs once a run either way"),
            Figure("14", "two-chunk prompt / plain prompt", "x", ratio(times["two chunks"], times["plain"]),
                   note="twice the text encoder, and twice the keys in every cross-attention")]



# ----- 15: LoRA --------------------------------------------------------------------------------
def lora_cost(manager, plan: p.Plan) -> list[Figure]:
    """Section 15: a run with the bundled shift-left LoRA loaded and active (studio.loras) against
    one without (none loaded: a run that names none unloads them); and loading it, which the first
    run that names it pays."""
    import time

    base = studio_request(manager)
    picked = manager.loras.resolve([("shift-left", 1.0)])

    def after(prepare, request):
        timed = studio_run(manager, request)
        return lambda: (prepare(), timed())[1]  # the LoRA loaded, or unloaded, before the clock starts

    runs = {"LoRA": after(lambda: manager.loaded.adapters.use(picked), dataclasses.replace(base, loras="shift-left:1")),
            "none": after(manager.unload_loras, base)}
    times = {k: Stats.of(v["seconds"]) for k, v in interleave(runs, 2 * plan.repeats).items()}
    loads = []
    for _ in range(plan.repeats):
        manager.unload_loras()
        started = time.perf_counter()
        manager.loaded.adapters.use(picked)
        loads.append(time.perf_counter() - started)
    manager.unload_loras()
    size = picked[0].path.stat().st_size / 1e6
    return [Figure("15", "run with a loaded LoRA / without", "x", ratio(times["LoRA"], times["none"]),
                   note=f"{p.STEPS} steps; rank-8 adapters on the UNet's attention and convolutions (peft)"),
            Figure("15", "loading the LoRA (once, by the first run that names it)", "s", Stats.of(loads),
                   note=f"load_lora_weights + set_adapters, a {size:.2f} MB file")]

# ----- 12: scrub at screen speed ---------------------------------------------------------------
# In the player's document (its iframe): move its slider to step k, then wait for the next paint (a task queued from
# the next animation frame runs after that frame is painted). Inputs come at random moments of
# the 60 Hz frame, as a hand's do.
IN_BROWSER = """async (count) => {
  const player = document.querySelector('.studio-player');
  const range = player.querySelector('.studio-player-slider');
  const max = Number(range.max), out = [];
  for (let i = 0; i < count; i++) {
    await new Promise((r) => setTimeout(r, Math.random() * 16));
    const k = 1 + ((i * 17 + 3) % max);
    if (String(k) === range.value) continue;
    const t0 = performance.now();
    range.value = k;
    range.dispatchEvent(new Event('input', {bubbles: true}));
    await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
    if (player.dataset.step !== String(k)) throw new Error('the player did not show step ' + k);
    out.push(performance.now() - t0);
  }
  return out;
}"""
# Today's way, still what the pictures under the player do: the slider's change goes to the
# server, which decodes the step; done when the new x0 picture has loaded and is painted.
ROUND_TRIP = """async (count) => {
  const range = document.querySelector('#viewer-step input[type=range]');
  const x0 = () => document.querySelector('#viewer-x0 img');
  const max = Number(range.max), out = [];
  for (let i = 0; i < count; i++) {
    const k = 1 + ((i * 7 + 2) % max);
    if (String(k) === range.value) continue;
    const before = x0() && x0().src, t0 = performance.now();
    range.value = k;
    range.dispatchEvent(new Event('input', {bubbles: true}));
    range.dispatchEvent(new Event('change', {bubbles: true}));
    for (;;) {
      await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
      const img = x0();
      if (img && img.src !== before && img.complete && img.naturalWidth) break;
      if (performance.now() - t0 > 60000) throw new Error('no picture for step ' + k);
    }
    out.push(performance.now() - t0);
  }
  return out;
}"""
SCRUB_STEPS = 50


def scrub_latency(manager, plan: p.Plan) -> list[Figure]:
    """Section 12: the time from a slider input to the new frame painted, in Chromium, for a
    50-step run in the viewer, against the server round trip the slider made before."""
    from playwright.sync_api import sync_playwright

    from benchmarks import serving
    from benchmarks.browser import CHROMIUM, CHROMIUM_ARGS

    with serving.scratch_folder() as scratch, serving.running_app(manager, scratch) as url, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.fill("#txt2img-prompt textarea", p.PROMPT)
            steps = page.locator("#txt2img-steps input[type=number]")
            steps.fill(str(SCRUB_STEPS))
            steps.press("Enter")
            page.click("#txt2img-generate")
            page.locator("#txt2img-info").filter(has_text="Seed").wait_for(timeout=180_000)
            page.click("#tab-viewer-button")
            page.click("#viewer-load")
            page.locator("#viewer-caption").filter(has_text=f"Step {SCRUB_STEPS} of {SCRUB_STEPS}").wait_for(
                timeout=180_000)
            page.locator("#viewer-player iframe").wait_for()
            player = page.frame_locator("#viewer-player iframe").locator(".studio-player")
            player.wait_for()
            frame = next(f for f in page.frames if f.url == "about:srcdoc")  # the player's own document
            in_browser = frame.evaluate(IN_BROWSER, 10 * plan.repeats)
            round_trip = page.evaluate(ROUND_TRIP, 3 * plan.repeats)
        finally:
            browser.close()
    fast, slow = Stats.of(in_browser), Stats.of(round_trip)
    return [Figure("12", f"scrub: slider input to frame painted, in the browser ({SCRUB_STEPS} steps)", "ms", fast,
                   at_most=p.GOAL_SCRUB_MS, note=f"{len(in_browser)} moves, Chromium headless, frames preloaded"),
            Figure("12", "before: slider change to the server-decoded x0 painted", "ms", slow,
                   note=f"{len(round_trip)} moves, fast decoder, app on 127.0.0.1"),
            Figure("12", "round trip / in the browser", "x", Stats.of([slow.median / fast.median]))]
