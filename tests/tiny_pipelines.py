"""Tiny, seeded, random-weight diffusers pipelines for tests, built offline from configs.

What this is: one builder per model family the studio handles (SD1, SD2 v-prediction, SDXL,
an LCM-scheduled "few-step distilled" SD, an unconditional UNet2D/DDPM), made the way diffusers'
own fast tests make theirs (`get_dummy_components`: a (32, 64) UNet, a (32, 64) AutoencoderKL
with 4 latent channels, a 5-layer 32-wide CLIP text encoder), with `torch.manual_seed(0)` before
every component, so two builds give identical weights. Everything is CPU, float32, and needs
no network: the tokenizer is `training.vocab.build_tokenizer` over `WORDS`, and the text
encoder's vocab is sized to it. Text-to-image builders give 64x64 images (sample_size 32, VAE
scale factor 2); the DDPM builder gives 32x32.

What this is not: a model. The weights are noise and the images are noise; use these to test
plumbing (loading, saving, scheduling, shapes, determinism), never image quality. It is not a
test module either: it imports nothing from pytest.

`sd1_single_file` writes the SD1 pipeline as one original (CompVis/LDM) layout .safetensors
file, mirroring diffusers' `scripts/convert_diffusers_to_original_stable_diffusion.py`. It loads
back fully offline, with identical weights, with:

    StableDiffusionPipeline.from_single_file(
        str(checkpoint), config=str(save(pipe, folder)), local_files_only=True)

`config`, a saved diffusers folder of the same pipeline (its weight files may be deleted),
supplies every component's config, the scheduler, the tokenizer and safety_checker=None /
requires_safety_checker=False from model_index.json; no `original_config` is needed. Without
`config` diffusers goes to the Hub for a default SD1.5 config even with local_files_only=True.
With `config`, local_files_only=True is belt and braces: nothing reaches for the Hub anyway.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UNet2DModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from training.vocab import build_tokenizer

WORDS = ("a an the photo painting drawing of cat dog bird red green blue yellow black white "
         "circle square triangle on in background").split()
PROMPT = "a photo of a red circle on a blue background"
DOWN = ("DownBlock2D", "CrossAttnDownBlock2D")
UP = ("CrossAttnUpBlock2D", "UpBlock2D")
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


# ---------------------------------------------------------------- components

def seeded(factory, *args, **kwargs):
    """`factory(*args, **kwargs)` right after `torch.manual_seed(0)`."""
    torch.manual_seed(0)
    return factory(*args, **kwargs)


def tokenizer() -> CLIPTokenizer:
    return build_tokenizer(WORDS, max_length=77)  # CLIP's, as the real families have


def text_config(tok: CLIPTokenizer, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, vocab_size=len(tok), hidden_size=32,
        intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
        num_hidden_layers=5, **extra)


def vae(**extra) -> AutoencoderKL:
    return seeded(AutoencoderKL, block_out_channels=(32, 64), in_channels=3, out_channels=3,
                  down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, **extra)


def unet(**extra) -> UNet2DConditionModel:
    config = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32,
                  in_channels=4, out_channels=4, down_block_types=DOWN, up_block_types=UP,
                  cross_attention_dim=32)
    return seeded(UNet2DConditionModel, **{**config, **extra})


def ready(pipe):
    """On CPU, models in eval mode (as from_pretrained leaves them), no progress bars.

    Float32 already: every component is built in the default dtype.
    """
    for part in pipe.components.values():
        if isinstance(part, torch.nn.Module):
            part.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu")


# ---------------------------------------------------------------- pipelines

def sd_pipeline(denoiser: UNet2DConditionModel, scheduler, **text_extra) -> StableDiffusionPipeline:
    tok = tokenizer()
    return ready(StableDiffusionPipeline(
        vae=vae(), text_encoder=seeded(CLIPTextModel, text_config(tok, **text_extra)),
        tokenizer=tok, unet=denoiser, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False))


def sd1_pipeline() -> StableDiffusionPipeline:
    scheduler = PNDMScheduler(**SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False)
    return sd_pipeline(unet(), scheduler)


def sd1_inpaint_pipeline() -> StableDiffusionInpaintPipeline:
    """SD 1.x's inpainting layout: a 9-channel UNet (latents, mask, masked picture's latents)."""
    tok = tokenizer()
    return ready(StableDiffusionInpaintPipeline(
        vae=vae(), text_encoder=seeded(CLIPTextModel, text_config(tok)), tokenizer=tok, unet=unet(in_channels=9),
        scheduler=PNDMScheduler(**SD_BETAS, skip_prk_steps=True, set_alpha_to_one=False), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False))


def sd2_v_pipeline() -> StableDiffusionPipeline:
    scheduler = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False,
                              prediction_type="v_prediction")
    return sd_pipeline(unet(attention_head_dim=(2, 4), use_linear_projection=True), scheduler,
                       hidden_act="gelu")


def lcm_pipeline() -> StableDiffusionPipeline:
    scheduler = LCMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False)
    return sd_pipeline(unet(time_cond_proj_dim=256), scheduler)


def sdxl_unet() -> UNet2DConditionModel:
    return unet(attention_head_dim=(2, 4), use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=8,
                transformer_layers_per_block=(1, 2),
                projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + 32 pooled
                cross_attention_dim=64)  # both text encoders' 32 features, concatenated


def sdxl_pipeline() -> StableDiffusionXLPipeline:
    tok = tokenizer()
    config = text_config(tok, hidden_act="gelu", projection_dim=32)
    return ready(StableDiffusionXLPipeline(
        vae=vae(sample_size=128), text_encoder=seeded(CLIPTextModel, config), tokenizer=tok,
        text_encoder_2=seeded(CLIPTextModelWithProjection, config), tokenizer_2=tokenizer(),
        unet=sdxl_unet(), scheduler=EulerDiscreteScheduler(**SD_BETAS, timestep_spacing="leading"),
        add_watermarker=False))


def unet2d_pipeline() -> DDPMPipeline:
    denoiser = seeded(UNet2DModel, block_out_channels=(32, 64), layers_per_block=2,
                      sample_size=32, in_channels=3, out_channels=3,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                      up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    return ready(DDPMPipeline(unet=denoiser, scheduler=DDPMScheduler()))


def generate(pipe, seed: int = 0, steps: int = 2):
    """A batch of one image as an (N, H, W, 3) float array, from a CPU generator."""
    generator = torch.Generator("cpu").manual_seed(seed)
    common = dict(generator=generator, num_inference_steps=steps, output_type="np")
    if isinstance(pipe, DDPMPipeline):
        return pipe(batch_size=1, **common).images
    return pipe(PROMPT, **common).images


def save(pipe, directory) -> Path:
    pipe.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


# ---------------------------------------------------------------- original (LDM) layout

RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                 "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                 "conv_shortcut": "skip_connection"}
UNET_TOP_TO_LDM = {"time_embedding.linear_1.": "time_embed.0.",
                   "time_embedding.linear_2.": "time_embed.2.", "conv_in.": "input_blocks.0.0.",
                   "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                   "to_out.0": "proj_out"}


def ldm_unet_block(side: str, i: int, kind: str, j: int, slots: int, up_attn: set[int]) -> str:
    """The LDM module holding diffusers' `{side}_blocks.i.{kind}.j`.

    `slots` is layers_per_block + 1: LDM numbers every resnet(+attention) and resampler.
    """
    if side == "down":
        if kind == "downsamplers":
            return f"input_blocks.{slots * (i + 1)}.0"
        return f"input_blocks.{slots * i + j + 1}.{int(kind == 'attentions')}"
    if kind == "upsamplers":
        return f"output_blocks.{slots * i + slots - 1}.{2 if i in up_attn else 1}"
    return f"output_blocks.{slots * i + j}.{int(kind == 'attentions')}"


def ldm_unet_key(key: str, slots: int, up_attn: set[int]) -> str:
    for hf, ldm in UNET_TOP_TO_LDM.items():
        if key.startswith(hf):
            return ldm + key[len(hf):]
    blocks, *rest = key.split(".")
    if blocks == "mid_block":  # resnet, attention, resnet
        kind, j, *rest = rest
        block = f"middle_block.{2 * int(j) if kind == 'resnets' else 1}"
    else:
        i, kind, j, *rest = rest
        block = ldm_unet_block(blocks.removesuffix("_blocks"), int(i), kind, int(j), slots, up_attn)
    if kind == "resnets":
        rest[0] = RESNET_TO_LDM.get(rest[0], rest[0])
    if kind == "downsamplers":
        rest[0] = "op"  # conv -> op
    return ".".join([block, *rest])


def ldm_unet(denoiser: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    state = denoiser.state_dict()
    up_attn = {int(k.split(".")[1]) for k in state
               if k.startswith("up_blocks.") and ".attentions." in k}
    slots = denoiser.config.layers_per_block + 1
    return {ldm_unet_key(k, slots, up_attn): v for k, v in state.items()}


def ldm_vae_key(key: str, levels: int) -> str:
    coder, name, *rest = key.split(".")
    if coder not in ("encoder", "decoder"):  # quant_conv, post_quant_conv
        return key
    if name in ("down_blocks", "up_blocks"):  # decoder levels count from the bottom in LDM
        i, kind, j, *rest = rest
        side = name.removesuffix("_blocks")
        level = int(i) if side == "down" else levels - 1 - int(i)
        block = f"{side}.{level}." + (f"block.{j}" if kind == "resnets" else f"{side}sample")
    elif name == "mid_block":
        kind, j, *rest = rest
        block = f"mid.block_{int(j) + 1}" if kind == "resnets" else "mid.attn_1"
        if kind == "attentions":
            rest = [VAE_ATTN_TO_LDM[".".join(rest[:-1])], rest[-1]]
    else:
        block = {"conv_norm_out": "norm_out"}.get(name, name)
    rest = ["nin_shortcut" if r == "conv_shortcut" else r for r in rest]
    return ".".join([coder, block, *rest])


def ldm_vae(autoencoder: AutoencoderKL) -> dict[str, torch.Tensor]:
    """The VAE in LDM keys; its mid attention projections become 1x1 convolutions."""
    levels = len(autoencoder.config.block_out_channels)
    state = {ldm_vae_key(k, levels): v for k, v in autoencoder.state_dict().items()}
    return {k: v[:, :, None, None] if ".attn_1." in k and v.ndim == 2 else v
            for k, v in state.items()}


def ldm_clip(encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    """SD1's text encoder is HF CLIP already; only the `text_model.` level (flattened away
    in transformers >= 5.6) has to be put back."""
    return {k if k.startswith("text_model.") else "text_model." + k: v
            for k, v in encoder.state_dict().items()}


def sd1_single_file(pipe: StableDiffusionPipeline, path) -> Path:
    """Write `pipe`'s UNet, VAE and text encoder as one original-layout .safetensors file."""
    parts = {"model.diffusion_model.": ldm_unet(pipe.unet),
             "first_stage_model.": ldm_vae(pipe.vae),
             "cond_stage_model.transformer.": ldm_clip(pipe.text_encoder)}
    state = {prefix + k: v.detach().contiguous()
             for prefix, part in parts.items() for k, v in part.items()}
    save_file(state, str(path))
    return Path(path)
