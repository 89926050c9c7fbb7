"""PipelineManager: the same pixels as diffusers, seeds, img2img steps, cancel, switching, options."""
import gc
import threading
import weakref

import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForImage2Image, DiffusionPipeline
from PIL import Image

from studio import devices
from studio.errors import GenerationCancelled, StudioError
from studio.streams import Done
from studio.requests import GenerationRequest
from tests import tiny_pipelines as tiny

PROMPT = tiny.PROMPT


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])


def direct(pipe, seeds, **kwargs) -> np.ndarray:
    """What diffusers itself gives for these arguments, as uint8 like the studio's PNGs."""
    out = pipe(generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np", **kwargs)
    return pixels(pipe.image_processor.numpy_to_pil(out.images))


@pytest.fixture
def sd1(make_manager, sd1_dir):
    return make_manager(sd1_dir)


def test_txt2img_equals_a_direct_diffusers_call(sd1, sd1_dir):
    result = sd1.generate(GenerationRequest(prompt=PROMPT, negative_prompt="blue", num_inference_steps=3,
                                            guidance_scale=6.0, seed=11, num_images_per_prompt=2))
    pipe = DiffusionPipeline.from_pretrained(sd1_dir)
    expected = direct(pipe, [11, 12], prompt=PROMPT, negative_prompt="blue", num_inference_steps=3,
                      guidance_scale=6.0, width=64, height=64, num_images_per_prompt=2)
    np.testing.assert_array_equal(pixels(result.images), expected)


def test_img2img_equals_a_direct_diffusers_call(sd1, sd1_dir):
    start = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    result = sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=4, strength=0.5, seed=3,
                                            image=start))
    pipe = AutoPipelineForImage2Image.from_pipe(DiffusionPipeline.from_pretrained(sd1_dir))
    expected = direct(pipe, [3], prompt=PROMPT, negative_prompt="", image=start, strength=0.5,
                      num_inference_steps=4, guidance_scale=7.5)
    np.testing.assert_array_equal(pixels(result.images), expected)


def test_the_same_request_twice_gives_identical_pixels(sd1):
    request = GenerationRequest(prompt=PROMPT, num_inference_steps=2, seed=5, scheduler="Euler a")
    np.testing.assert_array_equal(pixels(sd1.generate(request).images), pixels(sd1.generate(request).images))


def test_random_seed_is_reported_and_reproduces(sd1):
    first = sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=2, seed=-1))
    assert 0 <= first.seeds[0] < 2**32 and first.request.seed == first.seeds[0]
    again = sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=2, seed=first.seeds[0]))
    np.testing.assert_array_equal(pixels(first.images), pixels(again.images))


def test_each_image_of_a_batch_has_its_own_seed_and_reproduces_alone_within_rounding(sd1):
    batch = sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=2, seed=100,
                                           num_images_per_prompt=3))
    assert batch.seeds == [100, 101, 102]
    alone = sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=2, seed=102))
    # A batch sums in another order than a single image: allow one level of rounding, no more.
    difference = np.abs(np.asarray(batch.images[2], int) - np.asarray(alone.images[0], int))
    assert difference.max() <= 1 and difference.mean() < 0.01


@pytest.mark.parametrize(("steps", "strength"), [(10, 0.3), (10, 1.0), (8, 0.5)])
def test_img2img_runs_int_steps_times_strength(sd1, steps, strength):
    reported = []
    start = Image.new("RGB", (64, 64), "red")
    result = sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=steps, strength=strength,
                                            image=start, seed=1, scheduler="Euler"),
                          on_step=lambda step, total, _: reported.append((step, total)))
    expected = int(steps * strength)
    assert len(result.trajectory.steps) == expected
    assert reported == [(i, expected) for i in range(1, expected + 1)]


def test_img2img_that_would_run_no_step_is_refused_before_running(sd1):
    with pytest.raises(StudioError, match="0 steps would run"):
        sd1.generate(GenerationRequest(num_inference_steps=10, strength=0.05, image=Image.new("RGB", (64, 64))))


def test_img2img_input_arrives_at_the_requested_size(sd1):
    result = sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=2, strength=1.0, width=64,
                                            height=96, image=Image.new("RGBA", (300, 123), (0, 0, 255, 128))))
    assert result.images[0].size == (64, 96)


def test_cancel_stops_at_the_next_step_and_the_next_run_works(sd1):
    seen = []

    def stop_at_two(step, total, _):
        seen.append(step)
        if step == 2:
            sd1.cancel()

    with pytest.raises(GenerationCancelled, match="Stopped at step 2 of 20"):
        sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=20, seed=1), on_step=stop_at_two)
    assert seen == [1, 2]
    assert len(sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=2)).images) == 1


def test_closing_a_stream_cancels_its_run(sd1):
    stream = sd1.stream(GenerationRequest(prompt=PROMPT, num_inference_steps=50, seed=1))
    first = next(stream)
    assert (first.number, first.total) == (1, 50)
    stream.close()  # what Gradio does on Stop; returns only once the worker has stopped
    assert sd1._running_cancel is None
    assert len(sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=2)).images) == 1


def test_stream_yields_every_step_then_the_result(sd1):
    sd1.previews.fast_map(sd1.loaded)  # the model's first fit done (runs do not wait for it)
    events = list(sd1.stream(GenerationRequest(prompt=PROMPT, num_inference_steps=3, preview="fast")))
    assert [(e.number, e.total) for e in events[:-1]] == [(1, 3), (2, 3), (3, 3)]
    assert all(e.previews[0].size == (64, 64) for e in events[:-1])  # a fast preview at every step
    assert isinstance(events[-1], Done) and len(events[-1].result.images) == 1


def test_a_failed_model_switch_keeps_the_current_model(sd1, tmp_path):
    before = sd1.info
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("{not json")
    for name in ("no/such-model", str(tmp_path / "broken"), str(tmp_path / "missing")):
        with pytest.raises(StudioError, match="model="):
            sd1.load(name)
        assert sd1.info == before
    assert len(sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=2)).images) == 1


def test_switching_models_frees_the_old_one(sd1, tiny_dirs):
    old = weakref.ref(sd1.loaded.txt2img.unet)
    sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=1, image=Image.new("RGB", (64, 64)),
                                   strength=1.0))  # builds the img2img pipeline too
    sd1.load(str(tiny_dirs["lcm"]))
    gc.collect()
    assert old() is None
    assert sd1.info.family == "few-step"


def test_txt2img_and_img2img_share_one_copy_of_the_weights(sd1):
    assert sd1.loaded.img2img.unet is sd1.loaded.txt2img.unet
    assert sd1.loaded.img2img.vae is sd1.loaded.txt2img.vae


def test_a_switch_waits_for_the_running_generation(sd1, tiny_dirs):
    started, order = threading.Event(), []

    def slow_step(step, total, _):
        started.set()
        if step == 1:
            threading.Event().wait(0.2)  # hold the lock a moment

    def run():
        sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=3), on_step=slow_step)
        order.append("generated")

    worker = threading.Thread(target=run)
    worker.start()
    started.wait(10)
    sd1.load(str(tiny_dirs["sd2v"]))
    order.append("switched")
    worker.join()
    assert order == ["generated", "switched"]


@pytest.mark.parametrize("family", ["sd2v", "sdxl", "lcm"])
def test_each_family_generates_txt2img_and_img2img(make_manager, tiny_dirs, family):
    manager = make_manager(tiny_dirs[family])
    steps = dict(num_inference_steps=2, seed=0, guidance_scale=1.0 if family == "lcm" else 5.0)
    text = manager.generate(GenerationRequest(prompt=PROMPT, **steps))
    image = manager.generate(GenerationRequest(prompt=PROMPT, image=text.images[0], strength=1.0, **steps))
    assert text.images[0].size == image.images[0].size == (64, 64)


def test_clip_skip_uses_an_earlier_text_encoder_layer(sd1):
    request = GenerationRequest(prompt=PROMPT, num_inference_steps=2, seed=4)
    plain = pixels(sd1.generate(request).images)
    skipped = sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=2, seed=4, clip_skip=1))
    assert not np.array_equal(plain, pixels(skipped.images))
    pipe = sd1.loaded.txt2img
    ids = pipe.tokenizer([PROMPT, ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        embeds = pipe.text_encoder.final_layer_norm(hidden)
    expected = direct(pipe, [4], prompt_embeds=embeds[:1], negative_prompt_embeds=embeds[1:],
                      num_inference_steps=2, width=64, height=64)
    np.testing.assert_array_equal(pixels(skipped.images), expected)


def test_nan_output_is_reported_not_a_black_image(sd1, monkeypatch):
    vae = sd1.loaded.txt2img.vae
    real_decode = vae.decode

    def nan_decode(z, *args, **kwargs):
        out = real_decode(z, *args, **kwargs)
        out[0].fill_(float("nan")) if isinstance(out, tuple) else out.sample.fill_(float("nan"))
        return out

    monkeypatch.setattr(vae, "decode", nan_decode)
    with pytest.raises(StudioError, match="NaN"):
        sd1.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=1))


def test_a_prompt_past_the_token_limit_is_encoded_in_chunks_not_cut(sd1):
    words = " ".join(["red"] * 80 + ["dog"])  # 81 tokens: two chunks of CLIP's 75
    long = sd1.generate(GenerationRequest(prompt=words, num_inference_steps=1, seed=2))
    cut = sd1.generate(GenerationRequest(prompt=" ".join(["red"] * 75), num_inference_steps=1, seed=2))
    assert long.warnings == [] and not np.array_equal(pixels(long.images), pixels(cut.images))


def test_attention_slicing_max_and_vae_tiling_are_applied(make_manager, sd1_dir):
    manager = make_manager(sd1_dir, attention_slicing="max", vae_tiling=True, vae_slicing=True)
    pipe = manager.loaded.txt2img
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert processors == {"SlicedAttnProcessor"}
    assert pipe.vae.use_tiling and pipe.vae.use_slicing
    assert manager.info.memory["attention_slicing"] == "max"


def test_attention_slicing_auto_is_off_on_cpu(sd1):
    processors = {type(p).__name__ for p in sd1.loaded.txt2img.unet.attn_processors.values()}
    assert "SlicedAttnProcessor" not in processors


def test_cpu_offload_without_an_accelerator_is_a_clear_error(make_manager, sd1_dir):
    with pytest.raises(StudioError, match="cpu_offload needs an accelerator"):
        make_manager(sd1_dir, cpu_offload=True)


def test_device_auto_takes_the_first_accelerator_and_a_missing_device_names_the_available_ones(monkeypatch):
    monkeypatch.setattr(devices, "available_devices", lambda: ["cpu"])
    assert devices.choose_device("auto") == "cpu"
    with pytest.raises(StudioError, match=r"device='cuda' is not available here; available: cpu"):
        devices.choose_device("cuda")
    monkeypatch.setattr(devices, "available_devices", lambda: ["mps", "xpu", "cpu"])
    assert devices.choose_device("auto") == "mps"
    monkeypatch.setattr(devices, "available_devices", lambda: ["cuda", "xpu", "cpu"])
    assert devices.choose_device("auto") == "cuda"
    assert devices.choose_device("cuda:1") == "cuda:1"


def test_precision_auto_is_float32_on_cpu_and_float16_on_gpus():
    assert devices.choose_dtype("auto", "cpu") == torch.float32
    assert devices.choose_dtype("auto", "cuda") == torch.float16
    assert devices.choose_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(StudioError, match="dtype='float8'"):
        devices.choose_dtype("float8", "cpu")


def test_bfloat16_runs_and_is_reported(make_manager, sd1_dir):
    manager = make_manager(sd1_dir, dtype="bfloat16")
    result = manager.generate(GenerationRequest(prompt=PROMPT, num_inference_steps=1))
    assert manager.info.dtype == result.dtype == "bfloat16"
    assert manager.loaded.txt2img.unet.dtype == torch.bfloat16
