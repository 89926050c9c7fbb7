"""The guidance interval (studio.guidance): below guidance_min_sigma a step runs the UNet on the
conditional half alone and follows the prompt without guidance; above it nothing changes. A model
folder's studio.json sets its own threshold; a request's value (0: every step) overrides it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from studio import guidance, metadata
from studio.a1111 import payloads
from studio.errors import StudioError
from studio.requests import GenerationRequest, check_inputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(manager, **options):
    request = dict(prompt="a red circle", num_inference_steps=6, guidance_scale=5.0, seed=3, preview="none")
    return manager.generate(GenerationRequest(**request | options))


def batch_sizes(unet):
    """The batch of every UNet call while the list is alive: (sizes, hook handle)."""
    sizes = []
    handle = unet.register_forward_pre_hook(lambda module, args, kwargs: sizes.append(
        (args[0] if args else kwargs["sample"]).shape[0]), with_kwargs=True)
    return sizes, handle


@pytest.mark.parametrize("scheduler", ["Euler", "DPM++ 2M"])
def test_steps_above_the_threshold_are_untouched_and_those_below_follow_the_prompt_alone(make_manager, sd1_dir,
                                                                                          scheduler):
    manager = make_manager(sd1_dir)
    plain = run(manager, scheduler=scheduler)
    sigmas = [s.sigma for s in plain.trajectory.steps]
    cut = (sigmas[2] + sigmas[3]) / 2  # steps 1-3 guided, 4-6 not
    sizes, handle = batch_sizes(manager.loaded.txt2img.unet)
    try:
        ended = run(manager, scheduler=scheduler, guidance_min_sigma=cut)
    finally:
        handle.remove()
    assert sizes == [2, 2, 2, 1, 1, 1]
    for before, after in zip(plain.trajectory.steps[:3], ended.trajectory.steps[:3]):
        assert torch.equal(before.x0, after.x0) and torch.equal(before.x0_uncond, after.x0_uncond)
    for step in ended.trajectory.steps[3:]:  # the lens: the one prediction the step used
        assert torch.equal(step.x0_uncond, step.x0_cond)
    assert ended.request.guidance_min_sigma == cut
    assert ended.images[0].tobytes() != plain.images[0].tobytes()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_threshold_above_every_step_is_guidance_1_at_half_the_unet_batch(make_manager, tiny_dirs, family):
    manager = make_manager(tiny_dirs[family])
    sizes, handle = batch_sizes(manager.loaded.txt2img.unet)
    try:
        ended = run(manager, scheduler="Euler", guidance_min_sigma=guidance_max_sigma())
    finally:
        handle.remove()
    unguided = run(manager, scheduler="Euler", guidance_scale=1.0)
    assert sizes == [1] * 6
    a, b = (np.asarray(r.images[0], dtype=np.int16) for r in (ended, unguided))
    assert np.abs(a - b).max() <= 2  # the same prediction, batched apart: float rounding at most


def guidance_max_sigma() -> float:
    from studio.fields import MAX_GUIDANCE_SIGMA
    return MAX_GUIDANCE_SIGMA


def test_the_interval_lets_go_of_the_unet_after_the_run(make_manager, sd1_dir):
    manager = make_manager(sd1_dir)
    unet = manager.loaded.txt2img.unet
    hooks = (len(unet._forward_pre_hooks), len(unet._forward_hooks))
    run(manager, guidance_min_sigma=1.0)
    assert (len(unet._forward_pre_hooks), len(unet._forward_hooks)) == hooks


def test_a_model_folders_studio_json_sets_its_threshold_and_a_request_overrides_it(make_manager, sd1_dir, tmp_path):
    folder = shutil.copytree(sd1_dir, tmp_path / "model")
    (folder / "studio.json").write_text(json.dumps({"guidance_min_sigma": 2.5}))
    manager = make_manager(folder)
    own = run(manager)
    assert own.request.guidance_min_sigma == 2.5
    text = metadata.format_parameters(own, own.seeds[0])
    assert "NGMS: 2.5" in text
    assert metadata.request_fields(metadata.parse_parameters(text))[0]["guidance_min_sigma"] == 2.5
    every = run(manager, guidance_min_sigma=0.0)
    assert all(not torch.equal(s.x0_uncond, s.x0_cond) for s in every.trajectory.steps)
    assert any(torch.equal(s.x0_uncond, s.x0_cond) for s in own.trajectory.steps)


@pytest.mark.parametrize("content, named", [('{"guidance_min_sigma": -1}', "guidance_min_sigma=-1"),
                                            ('{"guidance_min_sigma": 1, "guidance_fade_sigma": 0.5}',
                                             "guidance_fade_sigma=0.5"),
                                            ('{"guidance_scale": 3}', "guidance_min_sigma"),
                                            ("{not json", "not readable JSON")])
def test_a_bad_studio_json_is_refused_by_name_and_the_loaded_model_stays(make_manager, sd1_dir, tmp_path,
                                                                        content, named):
    manager = make_manager(sd1_dir)
    folder = shutil.copytree(sd1_dir, tmp_path / "bad")
    (folder / "studio.json").write_text(content)
    with pytest.raises(StudioError, match="studio.json") as caught:
        manager.load(str(folder))
    assert named in str(caught.value)
    assert manager.info.name == str(sd1_dir)
    assert run(manager).images


@pytest.mark.parametrize("value", [-0.5, float("nan"), "high", True, 1e6])
def test_a_bad_threshold_is_refused_naming_it(value):
    with pytest.raises(StudioError, match="guidance_min_sigma="):
        check_inputs(GenerationRequest(prompt="x", guidance_min_sigma=value))


def test_the_share_of_guidance_is_whole_above_the_fade_none_below_the_end_and_linear_between():
    assert guidance.weight(0.5, 0.5) == 1 and guidance.weight(3.0, 0.5) == 1 and guidance.weight(0.49, 0.5) == 0
    assert guidance.weight(0.8, 0.2, 0.8) == 1 and guidance.weight(0.19, 0.2, 0.8) == 0
    assert guidance.weight(0.5, 0.2, 0.8) == pytest.approx(0.5) and guidance.weight(0.2, 0.2, 0.8) == 0


def test_in_the_fade_a_step_keeps_its_share_of_the_guidance(make_manager, sd1_dir):
    manager = make_manager(sd1_dir)
    plain = run(manager, scheduler="Euler")
    sigmas = [s.sigma for s in plain.trajectory.steps]
    low, high = sigmas[4] - 1e-3, sigmas[2] - 1e-3  # steps 1-3 keep all, 4-5 a share, 6 none
    sizes, handle = batch_sizes(manager.loaded.txt2img.unet)
    try:
        faded = run(manager, scheduler="Euler", guidance_min_sigma=low, guidance_fade_sigma=high)
    finally:
        handle.remove()
    assert sizes == [2, 2, 2, 2, 2, 1]
    for before, after in zip(plain.trajectory.steps[:3], faded.trajectory.steps[:3]):
        assert torch.equal(before.x0, after.x0)
    # step 4 starts where the plain run's did: its unconditional half is handed on w of the way back
    share = guidance.weight(sigmas[3], low, high)
    assert 0 < share < 1
    step, same = faded.trajectory.steps[3], plain.trajectory.steps[3]
    u, c = same.x0_uncond.float(), same.x0_cond.float()
    assert torch.allclose(step.x0_uncond.float(), c + share * (u - c), atol=0.01 * float(c.abs().max()) + 1e-3)
    assert torch.equal(step.x0_cond, same.x0_cond)


@pytest.mark.parametrize("fade", [0.5, 0.3])
def test_a_fade_not_above_the_end_is_refused_naming_it(make_manager, sd1_dir, fade):
    manager = make_manager(sd1_dir)
    with pytest.raises(StudioError, match=f"guidance_fade_sigma={fade} is not allowed: .*guidance_min_sigma=0.5"):
        run(manager, guidance_min_sigma=0.5, guidance_fade_sigma=fade)
    assert run(manager, guidance_min_sigma=0.5, guidance_fade_sigma=0.0).images  # 0: no fade, and it serves on


@pytest.mark.parametrize("sent, expected", [(None, None), (0, None), (0.6, 0.6)])
def test_a1111s_s_min_uncond_sets_it_and_its_default_0_leaves_the_models_own(sent, expected):
    request, = payloads.plan({"prompt": "a red circle", "s_min_uncond": sent}, img2img=False)
    assert request.guidance_min_sigma == expected


def test_a1111s_bad_s_min_uncond_is_refused_by_its_a1111_name():
    with pytest.raises(payloads.FieldError, match="s_min_uncond=-1"):
        payloads.plan({"prompt": "a red circle", "s_min_uncond": -1}, img2img=False)
