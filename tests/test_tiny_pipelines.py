"""The tiny test pipelines work: right shapes, deterministic, and they survive saving, both as
a diffusers folder and (SD1) as one original-layout .safetensors file."""
import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionPipeline

from tests import tiny_pipelines as tiny

BUILDERS = {
    tiny.sd1_pipeline: (1, 64, 64, 3),
    tiny.sd2_v_pipeline: (1, 64, 64, 3),
    tiny.sdxl_pipeline: (1, 64, 64, 3),
    tiny.lcm_pipeline: (1, 64, 64, 3),
    tiny.unet2d_pipeline: (1, 32, 32, 3),
}
builders = pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@builders
def test_image_shape_and_determinism(build):
    pipe = build()
    first, second = tiny.generate(pipe), tiny.generate(pipe)
    assert first.shape == BUILDERS[build]
    assert np.isfinite(first).all() and 0 <= first.min() and first.max() <= 1
    np.testing.assert_array_equal(first, second)


@builders
def test_builds_are_identical(build):
    left, right = build().components, build().components
    for name, module in left.items():
        if isinstance(module, torch.nn.Module):
            for (key, a), b in zip(module.state_dict().items(), right[name].state_dict().values()):
                assert torch.equal(a, b), f"{name}.{key}"


@builders
def test_save_and_from_pretrained_round_trip(build, tmp_path):
    pipe = build()
    loaded = type(pipe).from_pretrained(tiny.save(pipe, tmp_path), local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert any(tmp_path.rglob("*.safetensors")) and not any(tmp_path.rglob("*.bin"))
    # allclose, not equal: weights read back memory-mapped sit at other alignments, which can
    # change CPU kernels' summation order (~1e-6); cloned, they give identical pixels
    assert np.allclose(tiny.generate(loaded), tiny.generate(pipe), atol=1e-5)


def test_family_specifics():
    assert tiny.sd2_v_pipeline().scheduler.config.prediction_type == "v_prediction"
    assert tiny.sd1_pipeline().scheduler.config.prediction_type == "epsilon"
    lcm = tiny.lcm_pipeline()
    assert isinstance(lcm.scheduler, LCMScheduler) and lcm.unet.config.time_cond_proj_dim
    assert tiny.sdxl_pipeline().unet.config.addition_embed_type == "text_time"


def test_sd1_single_file_keys(tmp_path):
    from safetensors import safe_open

    path = tiny.sd1_single_file(tiny.sd1_pipeline(), tmp_path / "sd1.safetensors")
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        proj_out = f.get_tensor("first_stage_model.decoder.mid.attn_1.proj_out.weight")
    assert proj_out.ndim == 4  # LDM's VAE attention uses 1x1 convolutions
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    for key in ("model.diffusion_model.input_blocks.0.0.weight",
                "model.diffusion_model.input_blocks.3.0.op.weight",
                "model.diffusion_model.middle_block.1.proj_in.weight",
                "model.diffusion_model.output_blocks.2.2.conv.weight",  # up_blocks.0 has attention
                "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"):
        assert key in keys, key


def test_sd1_single_file_round_trip(tmp_path):
    pipe = tiny.sd1_pipeline()
    config = tiny.save(pipe, tmp_path / "diffusers")
    for weights in config.rglob("*.safetensors"):  # every weight must come from the single file
        weights.unlink()
    path = tiny.sd1_single_file(pipe, tmp_path / "sd1.safetensors")
    loaded = StableDiffusionPipeline.from_single_file(
        str(path), config=str(config), local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.safety_checker is None and isinstance(loaded.scheduler, type(pipe.scheduler))
    for name in ("unet", "vae", "text_encoder"):
        original, restored = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert original.keys() == restored.keys(), name
        assert all(torch.equal(original[k], restored[k]) for k in original), name
    assert np.allclose(tiny.generate(loaded), tiny.generate(pipe))
