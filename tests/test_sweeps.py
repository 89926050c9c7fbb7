"""X/Y plots: value parsing, cell requests, a real run on a tiny pipeline, the grid, the tab's event."""
from __future__ import annotations

import threading
import types

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from studio import grids, metadata, sweeps
from studio.errors import GenerationCancelled, StudioError
from studio.history import SessionHistory
from studio.outputs import OutputWriter
from studio.requests import GenerationRequest

BASE = GenerationRequest(prompt="a red circle", negative_prompt="blurry red", num_inference_steps=2,
                         guidance_scale=5.0, width=64, height=64, seed=11, scheduler="Euler")


def axis(kind: str, text: str = "", name: str = "X") -> sweeps.Axis:
    return sweeps.parse_axis(name, kind, text)


@pytest.fixture(scope="module")
def manager(sd1_dir, one_torch_thread, tmp_path_factory):
    """The tiny random SD1 pipeline (64x64 pictures), loaded once for this module."""
    from studio.config import Settings
    from studio.manager import PipelineManager

    loaded = PipelineManager(Settings(model=str(sd1_dir), outputs=str(tmp_path_factory.mktemp("unused"))))
    loaded.load()
    return loaded


# ----- values ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "text", "values"), [
    ("num_inference_steps", "10-30 (+10)", (10, 20, 30)),
    ("num_inference_steps", "1-5", (1, 2, 3, 4, 5)),
    ("num_inference_steps", "5-1, 8", (5, 4, 3, 2, 1, 8)),
    ("num_inference_steps", "1-10 [4]", (1, 4, 7, 10)),
    ("seed", "-1, 7, 2-3", (-1, 7, 2, 3)),
    ("guidance_scale", "1, 7.5", (1.0, 7.5)),
    ("guidance_scale", "1-9 [5]", (1.0, 3.0, 5.0, 7.0, 9.0)),
    ("guidance_scale", "1-2 (+0.25)", (1.0, 1.25, 1.5, 1.75, 2.0)),
    ("strength", "0.3-0.9 (+0.3)", (0.3, 0.6, 0.9)),
    ("guidance_min_sigma", "0, 0.5, 1", (0.0, 0.5, 1.0)),
    ("scheduler", "euler a, DDIM", ("Euler a", "DDIM")),
    ("prompt_sr", 'red, "green, dark", blue', ("red", "green, dark", "blue")),
])
def test_values_parse_as_automatic1111_writes_them(kind, text, values):
    assert axis(kind, text).values == values


def test_whole_number_axes_give_ints_and_number_axes_floats():
    assert all(type(v) is int for v in axis("num_inference_steps", "2-6 (+2)").values)
    assert all(type(v) is float for v in axis("guidance_scale", "1-3").values)


@pytest.mark.parametrize(("kind", "text", "message"), [
    ("num_inference_steps", "10, abc", "Y axis: num_inference_steps='abc' is not allowed"),
    ("num_inference_steps", "1.5-3", "Y axis: num_inference_steps='1.5-3' is not allowed"),
    ("num_inference_steps", "7.5", "Y axis: num_inference_steps='7.5' is not allowed: expected a whole number"),
    ("guidance_scale", "1-9 (-1)", "Y axis: guidance_scale='1-9 (-1)' is not allowed: expected a step"),
    ("guidance_scale", "1-9 (0)", "Y axis: guidance_scale='1-9 (0)' is not allowed"),
    ("seed", "1-1000", "Y axis: seed='1-1000' is not allowed: expected a range of at most 64 values"),
    ("scheduler", "Euler, Euler b", "Y axis: scheduler='Euler b' is not allowed: expected one of Default"),
    ("guidance_scale", " , ", "Y axis: guidance_scale=' , ' is not allowed: expected comma-separated"),
    ("colour", "red", "Y axis type='colour' is not allowed"),
])
def test_a_bad_value_is_an_error_naming_the_axis_the_parameter_and_the_value(kind, text, message):
    with pytest.raises(StudioError) as caught:
        axis(kind, text, name="Y")
    assert str(caught.value).startswith(message)


def test_the_nothing_axis_ignores_its_values_and_makes_one_row():
    plan = sweeps.plan_sweep(BASE, axis("guidance_scale", "1, 2, 3"), axis("nothing", "left over", "Y"))
    assert (plan.columns, plan.rows) == (3, 1)
    assert [r.guidance_scale for r in plan.requests] == [1.0, 2.0, 3.0]


# ----- plans: every cell's request, checked before anything runs ------------------------------
def test_each_cell_gets_its_axis_values_and_everything_else_from_the_base():
    plan = sweeps.plan_sweep(BASE, axis("num_inference_steps", "2, 3"), axis("scheduler", "DDIM, Heun", "Y"))
    cells = [(r.num_inference_steps, r.scheduler) for r in plan.requests]
    assert cells == [(2, "DDIM"), (3, "DDIM"), (2, "Heun"), (3, "Heun")]  # row by row
    for request in plan.requests:
        assert (request.prompt, request.negative_prompt, request.guidance_scale, request.seed,
                request.width) == ("a red circle", "blurry red", 5.0, 11, 64)
    assert plan.cell_label(1) == "Steps: 3 · Sampler: DDIM"


def test_prompt_sr_replaces_the_first_value_in_the_prompt_and_the_negative_prompt():
    plan = sweeps.plan_sweep(BASE, axis("prompt_sr", "red, green, blue"), axis("nothing", name="Y"))
    assert [(r.prompt, r.negative_prompt) for r in plan.requests] == [
        ("a red circle", "blurry red"), ("a green circle", "blurry green"), ("a blue circle", "blurry blue")]


def test_a_random_base_seed_is_drawn_once_so_cells_differ_only_by_their_axes():
    plan = sweeps.plan_sweep(GenerationRequest(seed=-1), axis("guidance_scale", "1, 2, 3"), axis("nothing", name="Y"))
    seeds = {r.seed for r in plan.requests}
    assert len(seeds) == 1 and seeds != {-1} and plan.base.seed in seeds


def test_a_value_out_of_range_names_the_axis_parameter_and_value_before_any_run():
    with pytest.raises(StudioError, match=r"^Y axis \(CFG scale\) value 45\.0: guidance_scale=45\.0 is not "
                                          r"allowed: expected a number in \[0\.0, 30\.0\]"):
        sweeps.plan_sweep(BASE, axis("seed", "1, 2"), axis("guidance_scale", "3, 45", "Y"))


def test_values_that_are_only_bad_together_name_both_axes():
    img2img = GenerationRequest(image=Image.new("RGB", (64, 64)), strength=1.0, num_inference_steps=20, seed=1)
    with pytest.raises(StudioError, match=r"^X axis \(Steps\) value 1 with Y axis \(Denoising strength\) value "
                                          r"0\.5: strength=0\.5 is not allowed"):
        sweeps.plan_sweep(img2img, axis("num_inference_steps", "1, 10"), axis("strength", "0.5, 1", "Y"))


def test_more_cells_than_allowed_is_refused():
    with pytest.raises(StudioError, match=r"9 x 8 = 72 cells; at most 64"):
        sweeps.plan_sweep(BASE, axis("seed", "1-9"), axis("num_inference_steps", "1-8", "Y"))


@pytest.mark.parametrize(("x", "message"), [
    (("strength", "0.5, 0.8"), r"X axis \(Denoising strength\) needs a starting picture"),
    (("prompt_sr", "purple, green"), r"X axis \(Prompt S/R\): the search text 'purple' .* is in neither"),
])
def test_an_axis_that_cannot_act_on_the_base_says_why(x, message):
    with pytest.raises(StudioError, match=message):
        sweeps.plan_sweep(BASE, axis(*x), axis("nothing", name="Y"))


def test_the_same_parameter_on_both_axes_is_refused():
    with pytest.raises(StudioError, match="both set Seed"):
        sweeps.plan_sweep(BASE, axis("seed", "1, 2"), axis("seed", "3, 4", "Y"))


# ----- a real run -------------------------------------------------------------------------------
def tile_origin(grid: Image.Image, plan: sweeps.SweepPlan, tile: int) -> tuple[int, int]:
    """Where the first tile starts: the grid's size minus the tiles (and gaps) is the labels' room."""
    return (grid.width - plan.columns * (tile + grids.GAP), grid.height - plan.rows * (tile + grids.GAP))


def test_each_cell_is_the_picture_its_request_gives_run_alone(manager):
    plan = sweeps.plan_sweep(BASE, axis("guidance_scale", "1, 9"), axis("seed", "3, 4", "Y"))
    sweep = sweeps.run_sweep(manager, plan)
    tile = 64 * 3  # 64 px pictures enlarged by a whole factor to at least MIN_TILE (192)
    left, top = tile_origin(sweep.grid, plan, tile)
    assert left > 0 and top > 0  # room for the Y labels on the left and the X labels on top
    for index, (guidance, seed) in enumerate([(1.0, 3), (9.0, 3), (1.0, 4), (9.0, 4)]):
        alone = manager.generate(GenerationRequest(
            prompt="a red circle", negative_prompt="blurry red", num_inference_steps=2, guidance_scale=guidance,
            width=64, height=64, seed=seed, scheduler="Euler")).images[0]
        assert np.array_equal(np.asarray(sweep.results[index].images[0]), np.asarray(alone))
        row, column = divmod(index, 2)
        x, y = left + column * (tile + grids.GAP), top + row * (tile + grids.GAP)
        in_grid = sweep.grid.crop((x, y, x + tile, y + tile))
        assert np.array_equal(np.asarray(in_grid), np.asarray(alone.resize((tile, tile), Image.Resampling.NEAREST)))


def test_the_labels_are_drawn_in_the_margins(manager):
    plan = sweeps.plan_sweep(BASE, axis("guidance_scale", "1, 9"), axis("seed", "3", "Y"))
    grid = sweeps.run_sweep(manager, plan).grid
    left, top = tile_origin(grid, plan, 192)
    margin_top = np.asarray(grid.crop((left, 0, grid.width, top)).convert("L"))
    margin_left = np.asarray(grid.crop((0, top, left, grid.height)).convert("L"))
    assert (margin_top < 128).sum() > 50 and (margin_left < 128).sum() > 50  # dark text on white


def test_one_axis_gives_one_row_and_no_left_labels(manager):
    plan = sweeps.plan_sweep(BASE, axis("num_inference_steps", "1, 2, 3"), axis("nothing", name="Y"))
    grid = sweeps.run_sweep(manager, plan).grid
    left, top = tile_origin(grid, plan, 192)
    assert grid.width == 3 * (192 + grids.GAP) and left == 0 and top > 0


def test_the_grid_png_describes_the_sweep_and_each_single_carries_its_own_parameters(manager, tmp_path):
    plan = sweeps.plan_sweep(BASE, axis("guidance_scale", "1, 9"), axis("scheduler", "DDIM", "Y"))
    sweep = sweeps.run_sweep(manager, plan, writer=OutputWriter(tmp_path))
    grid = metadata.parse_parameters(Image.open(sweep.grid_path).info["parameters"])
    assert sweep.grid_path.endswith("-xy-grid.png")
    assert (grid["Prompt"], grid["X Type"], grid["X Values"], grid["Y Type"], grid["Y Values"]) == (
        "a red circle", "CFG scale", "1, 9", "Sampler", "DDIM")
    singles = [metadata.parse_parameters(Image.open(p).info["parameters"]) for p in sweep.paths]
    assert [(s["CFG scale"], s["Sampler"], s["Seed"]) for s in singles] == [("1.0", "DDIM", "11"), ("9.0", "DDIM", "11")]


def test_progress_reports_every_cell_and_step(manager):
    plan = sweeps.plan_sweep(BASE, axis("num_inference_steps", "1, 2"), axis("nothing", name="Y"))
    reports = []
    sweeps.run_sweep(manager, plan, on_progress=lambda *event: reports.append(event))
    assert reports == [(0, 2, 0, 1), (0, 2, 1, 1), (1, 2, 0, 2), (1, 2, 1, 2), (1, 2, 2, 2)]


def test_stop_between_cells_keeps_the_finished_ones_and_greys_the_rest(manager):
    plan = sweeps.plan_sweep(BASE, axis("guidance_scale", "1, 5, 9"), axis("nothing", name="Y"))
    stop = threading.Event()

    def stop_at_the_second_cell(cell, cells, step, steps):
        if cell == 1:
            stop.set()

    sweep = sweeps.run_sweep(manager, plan, on_progress=stop_at_the_second_cell, cancel=stop)
    assert sweep.cancelled and len(sweep.results) == 1
    left, top = tile_origin(sweep.grid, plan, 192)
    second = np.asarray(sweep.grid.crop((left + 196 + 20, top + 20, left + 196 + 40, top + 40)))
    assert (second == 225).all()  # the "not run" grey


def test_stop_before_the_first_cell_finishes_is_a_cancellation(manager):
    plan = sweeps.plan_sweep(BASE, axis("guidance_scale", "1, 5"), axis("nothing", name="Y"))
    stop = threading.Event()
    stop.set()
    with pytest.raises(GenerationCancelled, match="before the first of 2 cells"):
        sweeps.run_sweep(manager, plan, cancel=stop)


# ----- the tab's event --------------------------------------------------------------------------
@pytest.fixture
def tab(manager, tmp_path):
    from studio.ui import sweep_tab

    with gr.Blocks():
        parts = sweep_tab.build(manager, OutputWriter(tmp_path), gr.State(SessionHistory()), gr.State(None))
    return parts


def event_values(x_kind="guidance_scale", x_text="1, 9", y_kind="seed", y_text="3-4") -> dict:
    """What the tab's event gets, by name, as the API sends it."""
    panel = dict(prompt="a red circle", num_inference_steps=2, guidance_scale=5.0, width=64, height=64,
                 scheduler="Euler", seed=11, preview="fast")
    return {**panel, "x_type": x_kind, "x_values": x_text, "y_type": y_kind, "y_values": y_text}


def test_the_tab_event_returns_the_grid_the_singles_and_the_history(tab):
    from studio.ui import cache

    session = types.SimpleNamespace(session_hash="sweep-test")
    earlier = SessionHistory().add_run("an earlier run", ["earlier.png"])
    grid_path, singles, info, history, last, seed = tab["run"](earlier, session, **event_values())
    assert Image.open(grid_path).info["parameters"].endswith('Y Type: Seed, Y Values: 3-4')
    assert [label for _, label in singles] == ["CFG scale: 1 · Seed: 3", "CFG scale: 9 · Seed: 3",
                                              "CFG scale: 1 · Seed: 4", "CFG scale: 9 · Seed: 4"]
    assert last == singles[-1][0] and "4 of 4 cells" in info and seed == 11
    # the plot is one history entry after the earlier run; its cells keep their own files
    assert [e.number for e in history.entries] == [1, 2] and cache.served(history.entries[1].grid) == grid_path
    plot = history.entries[1]
    assert [(r.request.guidance_scale, r.seeds[0]) for r in plot.results] == [(1.0, 3), (9.0, 3), (1.0, 4), (9.0, 4)]
    assert [(cache.served(path),) for path, in plot.files] == [(path,) for path, _ in singles]
    assert plot.title == "CFG scale x Seed"


def test_the_tab_event_turns_a_bad_value_into_a_gradio_error(tab):
    session = types.SimpleNamespace(session_hash="sweep-test")
    with pytest.raises(gr.Error, match=r"X axis: guidance_scale='lots' is not allowed"):
        tab["run"](SessionHistory(), session, **event_values(x_text="1, lots"))


def test_the_xy_plot_api_round_trip_returns_a_labelled_grid(manager, tmp_path):
    from gradio_client import Client

    from studio.ui import sweep_tab
    from tests.conftest import free_port

    with gr.Blocks() as demo:
        sweep_tab.build(manager, OutputWriter(tmp_path), gr.State(SessionHistory()), gr.State(None))
    demo.queue()
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True, allowed_paths=[str(tmp_path)])
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        grid, singles, info = client.predict(**event_values(y_kind="nothing", y_text=""), api_name="/xy_plot")
        with pytest.raises(Exception, match=r"Y axis: seed='x' is not allowed"):
            client.predict(**event_values(y_text="x"), api_name="/xy_plot")
    finally:
        demo.close()
    picture = Image.open(grid)
    assert picture.size == (2 * (192 + grids.GAP), picture.height) and picture.height > 192 + grids.GAP
    assert "X Type: CFG scale" in picture.info["parameters"] and len(singles) == 2 and "2 of 2 cells" in info


@pytest.mark.parametrize("kind", list(sweeps.KINDS))
def test_picking_an_axis_parameter_fills_values_of_its_kind(kind):
    from studio.ui import sweep_tab

    text, picker = sweep_tab.axis_hint(kind)
    axis = sweeps.parse_axis("X", kind, sweep_tab.axis_text(kind, text["value"], picker["value"]))
    assert len(axis.values) >= 1
    assert picker["visible"] == (kind == "scheduler") != text["visible"]  # samplers: a pick list
    if kind == "scheduler":
        assert list(axis.values) == sweep_tab.DEFAULT_SAMPLERS == picker["value"]


def test_the_sampler_axis_runs_the_picked_samplers_and_an_api_caller_may_type_them(tab):
    session = types.SimpleNamespace(session_hash="sweep-test")
    values = event_values(x_kind="scheduler", x_text="", y_kind="nothing", y_text="")
    values["x_samplers"] = ["Heun", "UniPC"]
    _, singles, *_ = tab["run"](SessionHistory(), session, **values)
    assert [label for _, label in singles] == ["Sampler: Heun", "Sampler: UniPC"]
    typed = event_values(x_kind="scheduler", x_text="DDIM", y_kind="nothing", y_text="")
    assert [label for _, label in tab["run"](SessionHistory(), session, **typed)[1]] == ["Sampler: DDIM"]
    with pytest.raises(gr.Error, match="X axis"):  # nothing picked, nothing typed
        tab["run"](SessionHistory(), session, **event_values(x_kind="scheduler", x_text=""))


@pytest.mark.parametrize(("text", "message"), [
    ("0-" + "9" * 400, "a range of at most 64 values"),          # was "cannot convert float infinity to integer"
    ("1, " * 50_000, "at most 4000 characters"),                # 146 KiB of values
])
def test_absurd_axis_values_are_refused_by_name(text, message):
    with pytest.raises(StudioError, match=f"X axis.*{message}"):
        sweeps.parse_axis("X", "seed", text)
