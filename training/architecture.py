"""The bundled model's architecture: configs for the VAE, text encoder, UNet and scheduler.

Sized for 64x64 images and a 2-core CPU: a 4x-downsampling AutoencoderKL (16x16x4 latents),
a 2-layer 64-wide CLIP text encoder, and a 3-level UNet with attention at the middle (8x8)
level only (`fine_attention` adds cross-attention at the 16x16 level of the down path,
`fine_self_attention` a whole transformer block there).
`--scale` widens everything for a bigger run on a GPU. This module only builds untrained
modules; training is in train.py.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from training import shapes, vocab

LATENT_CHANNELS = 4
DOWNSAMPLE = 4  # pixels per latent along each side


def build_vae(scale: int = 1) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(32 * scale, 64 * scale, 64 * scale),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=shapes.RESOLUTION,
        # Convolutions only, so the VAE can train on crops and still fit whole images.
        mid_block_add_attention=False,
    )


def build_text_encoder(vocab_size: int, scale: int = 1) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=64 * scale,
        intermediate_size=256 * scale,
        projection_dim=64 * scale,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=vocab.MAX_LENGTH,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    model = CLIPTextModel(config)
    # Word and position vectors of unit scale, not CLIP's 0.02: the word table is then frozen in
    # training (train.py), so the place words stay apart from the first step (see the model card).
    embeddings = getattr(model, "text_model", model).embeddings  # transformers 4 nests them
    for table in (embeddings.token_embedding, embeddings.position_embedding):
        torch.nn.init.normal_(table.weight, std=1.0)
    return model


def build_unet(scale: int = 1, deep_attention: bool = False, fine_attention: bool = False,
               fine_self_attention: bool = False) -> UNet2DConditionModel:
    """Attention (self and cross) at the 8x8 level only; the 16x16 and 4x4 levels and the middle
    block are ResNet-only. A step on 2 cores is bound by the number of operations, not their width:
    v6's attention at 4x4 and in the middle (4 of its 7 transformer blocks) cost 27% of an image
    (20 steps with guidance: 0.45 -> 0.33 s) and 30% of a training step (0.61 -> 0.43 s).
    `deep_attention` puts them back (v6's layout). `fine_attention` adds one transformer block at
    the 16x16 level of the down path, where a small shape is 4x4 latent pixels (an 8x8 map holds
    it in 2x2 cells); the skip connection carries it to the up path. Cross-attention only
    (`only_cross_attention`: both its attentions read the words), so no 256x256 self-attention.
    It costs 1.22x a training step (0.41 -> 0.50 s, batch 64); the same on the up path's two
    16x16 layers cost 1.64x, and on both 1.9x, too slow for the hour. `fine_self_attention` makes
    that block a whole one, self-attention over the 256 latent pixels then the words, so that a
    place can see what the others draw (1.43x a v9j step, 0.50 -> 0.72 s for the UNet alone). It
    did not stop place-less prompts drawing copies, and cost shape (v9o, model card)."""
    low = "CrossAttn" if deep_attention else ""
    high = "CrossAttn" if fine_attention or fine_self_attention else ""
    return UNet2DConditionModel(
        sample_size=shapes.RESOLUTION // DOWNSAMPLE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        # 48 wide at 16x16 (v1: 64): 20 UNet calls 0.53 -> 0.43 s alone, one image 0.544 -> 0.513 s.
        block_out_channels=(48 * scale, 64 * scale, 128 * scale),
        down_block_types=(f"{high}DownBlock2D", "CrossAttnDownBlock2D", f"{low}DownBlock2D"),
        up_block_types=(f"{low}UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn" if deep_attention else "UNetMidBlock2D",
        only_cross_attention=(True, False, False) if fine_attention and not fine_self_attention else False,
        layers_per_block=1,
        cross_attention_dim=64 * scale,
        attention_head_dim=16,
        norm_num_groups=16,
    )


def build_scheduler() -> EulerDiscreteScheduler:
    """Stable Diffusion's scaled-linear betas, rescaled to zero terminal SNR, with v-prediction.

    Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed": with SD's
    own schedule the last training step still holds 7% of the image, so a model learns to read
    the background colour and the layout from that leak, and at sampling time, when the start is
    pure noise, it takes them from the seed instead of the prompt (our v0 did: background 22%,
    position 8%). Zero terminal SNR needs v-prediction and "trailing" timesteps.
    """
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        steps_offset=1,
    )
