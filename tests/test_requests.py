"""check_inputs rejects every bad value with a message naming the argument and the value."""
import math

import pytest

from studio.errors import StudioError
from studio.fields import MAX_SEED
from studio.requests import GenerationRequest, batches, check_inputs

BAD = [
    ("num_inference_steps", 0), ("num_inference_steps", -1), ("num_inference_steps", 3.7),
    ("num_inference_steps", 10000), ("num_inference_steps", "20"),
    ("width", 0), ("width", 500), ("width", 513), ("width", 100000), ("height", 500),
    ("guidance_scale", math.nan), ("guidance_scale", -1.0), ("guidance_scale", math.inf),
    ("num_images_per_prompt", 0), ("num_images_per_prompt", 10000),
    ("seed", -2), ("seed", 2**40), ("seed", 1.5),
    ("scheduler", "Eulerish"), ("clip_skip", 0), ("preview", "pretty"), ("preview_every", 0),
    ("prompt", "x" * 1_000_000), ("prompt", "a red\x00circle"), ("negative_prompt", None),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={str(v)[:12]}" for n, v in BAD])
def test_bad_value_is_rejected_naming_argument_and_value(name, value):
    with pytest.raises(StudioError) as caught:
        check_inputs(GenerationRequest(**{name: value}))
    message = str(caught.value)
    assert message.startswith(f"{name}=")
    assert repr(value)[:20] in message or repr(value)[:20].rstrip("'") in message


@pytest.mark.parametrize("strength", [-0.1, 0.0, 1.5, math.nan])
def test_bad_strength_is_rejected(strength):
    with pytest.raises(StudioError, match=r"^strength="):
        check_inputs(GenerationRequest(image=object(), strength=strength))


def test_strength_that_runs_no_step_is_rejected_with_the_arithmetic():
    with pytest.raises(StudioError, match=r"int\(20 x 0\.04\) = 0 steps"):
        check_inputs(GenerationRequest(image=object(), num_inference_steps=20, strength=0.04))


@pytest.mark.parametrize(("steps", "strength", "expected"),
                         [(20, 1.0, 20), (20, 0.75, 15), (20, 0.5, 10), (20, 0.05, 1), (50, 0.3, 15),
                          (7, 0.99, 6)])
def test_img2img_runs_int_steps_times_strength(steps, strength, expected):
    assert GenerationRequest(image=object(), num_inference_steps=steps, strength=strength).steps_to_run() == expected


def test_txt2img_runs_all_steps_whatever_the_strength():
    assert GenerationRequest(num_inference_steps=20, strength=0.1).steps_to_run() == 20


def test_whole_floats_become_ints():
    checked = check_inputs(GenerationRequest(num_inference_steps=20.0, width=64.0, seed=3.0))
    assert (checked.num_inference_steps, checked.width, checked.seed) == (20, 64, 3)
    assert isinstance(checked.num_inference_steps, int)


def test_good_request_passes_unchanged_in_meaning():
    request = GenerationRequest(prompt="a red circle", negative_prompt="blue", num_inference_steps=30,
                                guidance_scale=5.0, width=512, height=768, seed=42)
    assert check_inputs(request) == request


def test_newlines_and_unicode_are_fine_in_prompts():
    check_inputs(GenerationRequest(prompt="ein rotes Quadrat ✨\nnaïve 四角", negative_prompt="\tblue"))


def test_parameters_leave_out_the_image_and_txt2img_strength():
    values = GenerationRequest(prompt="p").parameters()
    assert "image" not in values and "strength" not in values
    assert values["prompt"] == "p" and values["num_inference_steps"] == 20


def test_batches_continue_the_seeds_across_batches():
    plan = batches(GenerationRequest(seed=10, num_images_per_prompt=3), 3)
    assert [r.seed for r in plan] == [10, 13, 16]
    assert all(r.num_images_per_prompt == 3 for r in plan)


def test_batches_from_a_random_seed_draw_it_once():
    plan = batches(GenerationRequest(seed=-1, num_images_per_prompt=2), 4)
    first = plan[0].seed
    assert 0 <= first <= MAX_SEED
    assert [r.seed for r in plan] == [(first + 2 * k) % (MAX_SEED + 1) for k in range(4)]


def test_batches_wrap_at_the_largest_seed():
    assert [r.seed for r in batches(GenerationRequest(seed=MAX_SEED, num_images_per_prompt=1), 2)] == [MAX_SEED, 0]


@pytest.mark.parametrize("count", [0, -1, 17, 1.5, "2", None, True])
def test_a_bad_batch_count_is_refused_naming_it(count):
    with pytest.raises(StudioError, match=rf"batch_count={count!r} is not allowed"):
        batches(GenerationRequest(), count)


def test_server_side_ceilings_come_from_the_model_for_every_caller():
    """A 2048x2048 txt2img on the 64 px model took 507 s and 4.3 GB through the API."""
    from studio.requests import MAX_PUBLIC_WORK, check_limits

    with pytest.raises(StudioError, match=r"width=2048 is not allowed: expected at most 256 for this model "
                                          r"\(4x its native 64px; --size-factor raises it"):
        check_limits(GenerationRequest(width=2048, height=64), 64)
    check_limits(GenerationRequest(width=2048, height=2048), 64, factor=32)  # raised for local use
    check_limits(GenerationRequest(num_inference_steps=150, num_images_per_prompt=8), 64, public=True)
    with pytest.raises(StudioError, match=f"at most {MAX_PUBLIC_WORK:,} in one request"):
        check_limits(GenerationRequest(num_inference_steps=150, num_images_per_prompt=8, width=128, height=128),
                     64, public=True)
