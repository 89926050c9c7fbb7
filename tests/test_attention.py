"""Which word painted which pixels (studio.attention): recording leaves the pixels as they were,
maps are kept per token and step and in the run file, and, on the bundled model, whether the
words' maps sit where the picture drew them (training.localise)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from studio import attention, runs
from studio.errors import StudioError
from studio.requests import GenerationRequest
from training import localise

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_words_merge_subword_tokens_and_leave_out_punctuation():
    tokens = ["a</w>", "gi", "raffe</w>", ",</w>", "on</w>", "blue</w>"]
    assert [(w.text, w.tokens) for w in attention.words(tokens)] == [
        ("a", (0,)), ("giraffe", (1, 2)), ("on", (4,)), ("blue", (5,))]


def test_the_prompt_is_read_as_the_text_encoder_reads_it(bundled_manager):
    tokenizer = bundled_manager.loaded.runner.tokenizer
    tokens = attention.prompt_tokens(tokenizer, "a small red circle, on a blue background")
    assert [w.text for w in attention.words(tokens)] == ["a", "small", "red", "circle", "on", "a", "blue", "background"]


@pytest.mark.parametrize("scheduler", ["Default", "Euler a", "Heun", "PLMS"])
def test_recording_attention_leaves_the_pixels_as_they_were(bundled_manager, scheduler):
    request = GenerationRequest(prompt="a large green triangle on a white background", num_inference_steps=6,
                                scheduler=scheduler, seed=3, num_images_per_prompt=2, preview="none")
    plain = bundled_manager.generate(request)
    recorded = bundled_manager.generate(GenerationRequest(**{**request.__dict__, "record_attention": True}))
    for a, b in zip(plain.images, recorded.images, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
    assert plain.trajectory.steps[0].attention is None and not plain.trajectory.tokens
    steps = recorded.trajectory.steps
    assert len(steps) == 6 and attention.recorded(recorded.trajectory)
    tokens = recorded.trajectory.tokens
    assert [w.text for w in attention.run_words(recorded.trajectory)][:4] == ["a", "large", "green", "triangle"]
    for step in steps:  # (pictures, tokens, h, w): a share of each pixel's attention, per token
        assert step.attention.shape == (2, len(tokens), 16, 16)
        total = step.attention.float().sum(1)
        assert (step.attention >= 0).all() and (total <= 1.01).all() and total.mean() > 0.05
    # the self-attention layers kept their processors; the run put the cross-attention ones back
    assert all(not isinstance(p, attention.CrossAttentionProbe)
               for p in bundled_manager.loaded.runner.unet.attn_processors.values())


@pytest.mark.parametrize("family", ["sd1", "sd2v", "sdxl"])
def test_sd_and_sdxl_record_a_map_per_token_of_the_first_tokenizer(make_manager, tiny_dirs, family):
    manager = make_manager(tiny_dirs[family])
    request = GenerationRequest(prompt="a red circle", num_inference_steps=3, seed=1, preview="none")
    plain = manager.generate(request)
    recorded = manager.generate(GenerationRequest(**{**request.__dict__, "record_attention": True}))
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(recorded.images[0]))
    tokens = recorded.trajectory.tokens
    assert [w.text for w in attention.run_words(recorded.trajectory)] == ["a", "red", "circle"]
    latent = recorded.trajectory.steps[0].latents.shape[-2:]
    assert recorded.trajectory.steps[0].attention.shape == (1, len(tokens), *latent)


def test_an_unconditional_model_says_it_has_no_text_to_attend_to(make_manager, tiny_dirs):
    result = make_manager(tiny_dirs["unet2d"]).generate(
        GenerationRequest(prompt="", num_inference_steps=2, seed=0, record_attention=True, preview="none"))
    assert attention.NO_TEXT in result.warnings and not attention.recorded(result.trajectory)


@pytest.fixture(scope="module")
def recorded_run(bundled_manager, tmp_path_factory):
    result = bundled_manager.generate(GenerationRequest(
        prompt="a large red circle on a blue background", num_inference_steps=8, seed=4, record_attention=True,
        preview="none"))
    folder = tmp_path_factory.mktemp("attention-run")
    runs.save(result, folder)
    return result, folder


def test_a_saved_run_keeps_its_maps_and_a_damaged_one_is_named(recorded_run, tmp_path):
    result, folder = recorded_run
    back = runs.load(folder)
    assert back.trajectory.tokens == result.trajectory.tokens
    for a, b in zip(result.trajectory.steps, back.trajectory.steps, strict=True):
        assert torch.equal(a.attention, b.attention)
    from safetensors.torch import load_file, save_file
    tensors = load_file(folder / runs.TENSORS)
    tensors["attention"] = tensors["attention"][:, :, :-1].contiguous()
    for name in (runs.DESCRIPTION,):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    save_file(tensors, str(tmp_path / runs.TENSORS))
    with pytest.raises(StudioError, match=r"attention is \(8, 1, \d+, 16, 16\), not \(steps, batch, tokens, h, w\)"):
        runs.load(tmp_path)


def test_a_word_not_in_the_prompt_is_named_with_the_words_it_has(recorded_run):
    with pytest.raises(StudioError, match=r"attention='square' is not a word of this run's prompt "
                                          r"\(its words: a, large, red, circle, on, blue, background\)"):
        attention.find_word(recorded_run[0].trajectory, "square")


def test_clicking_a_pixel_ranks_the_words_by_their_share_of_its_attention(recorded_run):
    trajectory = recorded_run[0].trajectory
    maps = attention.maps_at(trajectory, None)  # (tokens, 16, 16)
    centre = dict(attention.ranking(maps, trajectory, 0.5, 0.5))
    words = attention.run_words(trajectory)
    for word in {w.text for w in words}:  # "a" twice: both its tokens count
        assert centre[word] == pytest.approx(sum(float(maps[list(w.tokens), 8, 8].sum()) for w in words if w.text == word))
    shares = list(centre.values())
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.01
    # the large red circle is drawn in the middle: its colour word weighs more there than in a corner
    corner = dict(attention.ranking(maps, trajectory, 0.02, 0.02))
    assert centre["red"] > corner["red"]


def test_inspect_writes_a_words_map_at_a_step_and_over_all_steps(recorded_run, tmp_path):
    result, folder = recorded_run
    command = [sys.executable, "-m", "studio", "inspect", str(folder), "--attention", "circle"]
    subprocess.run(command + ["--step", "3", "--out", str(tmp_path / "step.png")], check=True, capture_output=True)
    done = subprocess.run(command + ["--out", str(tmp_path / "all.png")], check=True, capture_output=True, text=True)
    assert "the attention of 'circle' over all steps" in done.stdout
    for name, step in (("step.png", 2), ("all.png", None)):
        written = Image.open(tmp_path / name)
        assert written.mode == "L" and written.size == (result.request.width, result.request.height)
        expected = attention.heat(attention.maps_at(result.trajectory, step),
                                  attention.find_word(result.trajectory, "circle"), written.size)
        assert np.abs(np.asarray(written) / 255.0 - expected).max() <= 1 / 255 + 1e-6
        assert np.asarray(written).max() == 255
    bad = subprocess.run(command + ["--out", str(tmp_path / "x.png"), "--step", "2", "--attention", "square"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "attention='square' is not a word of this run's prompt" in bad.stderr


# --- Does attention sit where the words were drawn? 48 held-out prompts on the bundled model ---

@pytest.fixture(scope="module")
def localisation(bundled_manager):
    return localise.measure(bundled_manager, count=48, steps=20, at=(None,))[None]


def test_the_background_colour_words_map_avoids_the_shape(localisation):
    figures = localise.summary(localisation["background"])
    assert figures["read"] >= 44
    assert figures["median"] < 1 and figures["below_1"] >= 0.75, figures


@pytest.mark.xfail(strict=True, reason="v9's shape-word maps lean to the shape but not clearly: over 48 held-out "
                                       "prompts the median mass ratio is about 1.49x and none reach 2x (v8 1.6x; its "
                                       "colour word: median about 1.5x, v8 1.95x). See the model card.")
def test_the_shape_words_map_puts_clearly_more_of_its_mass_inside_the_shape(localisation):
    figures = localise.summary(localisation["shape"])
    assert figures["read"] >= 44
    assert figures["median"] >= 2 and figures["at_least_2x"] >= 0.5, figures
