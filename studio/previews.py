"""Latents -> pictures for previews and the viewer: the full VAE, a fast linear map, or a tiny AE.

- "full": the model's own VAE, exact and slow.
- "fast": one linear map, nearly free: each latent pixel's 3x3 neighbourhood gives the f x f
  block of RGB pixels it covers (a 3x3 convolution and a pixel shuffle), so edges inside a block
  come out sharp instead of as flat squares. It is fitted by least squares for each model: a
  few synthetic pictures are encoded with the model's own VAE and the map that best takes their
  latents back to their full-size pixels is kept, per model hash. The known SD factor table is
  only a fallback if fitting fails.
- "tiny": an AutoencoderTiny (TAESD family) given by id or path.
This module draws nothing on screen; it returns PIL images.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from studio.errors import StudioError

CALIBRATION_IMAGES = 24
CALIBRATION_SIZE = 128
# Fallback latent -> RGB factors in [-1, 1] (4 latent channels x RGB) for the SD 1.x/2.x VAE.
SD_FACTORS = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]


class PreviewDecoder:
    """Decodes latents to pictures; remembers one fitted fast map per model."""

    def __init__(self, tiny_vae: str | None = None):
        self.tiny_vae_name = tiny_vae
        self._fast: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._tiny = None

    def reset(self) -> None:
        self._tiny = None

    def decode(self, model, latents: torch.Tensor, kind: str) -> list[Image.Image]:
        """`latents`: (batch, c, h, w) alpha-scale latents, as the pipeline's UNet sees them."""
        if model.unconditional:  # its "latents" are pixels in [-1, 1]: every decoder is exact
            return [to_pil(image.float().cpu() * 0.5 + 0.5, 1) for image in latents]
        if kind == "fast":
            return self.fast(model, latents)
        if kind == "full":
            return self.full(model, latents)
        if kind == "tiny":
            return self.tiny(model, latents)
        raise StudioError(f"preview={kind!r} is not a decoder; choose none, fast, tiny or full.")

    # ----- full VAE -------------------------------------------------------------------------
    @torch.no_grad()
    def full(self, model, latents: torch.Tensor) -> list[Image.Image]:
        pipe = model.txt2img
        vae = pipe.vae
        z = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None):
            z = z + vae.config.shift_factor
        pixels = vae.decode(z).sample
        return pipe.image_processor.postprocess(pixels.float(), output_type="pil")

    @torch.no_grad()
    def encode(self, model, picture: Image.Image) -> torch.Tensor:
        """A picture as the UNet's clean latents x0, (1, c, h, w) on the CPU."""
        pixels = torch.from_numpy(np.asarray(picture.convert("RGB"), np.float32) / 127.5 - 1)
        pixels = pixels.permute(2, 0, 1)[None]  # (1, 3, h, w) in [-1, 1]
        if model.unconditional:
            return pixels
        vae = model.txt2img.vae
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
        if getattr(vae.config, "shift_factor", None):
            latents = latents - vae.config.shift_factor
        return (latents * vae.config.scaling_factor).float().cpu()

    # ----- fast linear map ----------------------------------------------------------------
    def fast(self, model, latents: torch.Tensor) -> list[Image.Image]:
        kernel, bias = self.fast_map(model)  # (f*f*3, c, k, k), (f*f*3,)
        rgb = apply_fast_map(latents.float().cpu(), kernel, bias)
        return [to_pil(image, 1) for image in rgb]

    def fast_map(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        if model.hash not in self._fast:
            try:
                self._fast[model.hash] = fit_linear_map(model.txt2img)
            except (RuntimeError, ValueError) as exc:
                if model.txt2img.vae.config.latent_channels != 4:
                    raise StudioError(f"The fast preview could not be fitted for this model: {exc}") from exc
                self._fast[model.hash] = factor_table_map(getattr(model.txt2img, "vae_scale_factor", 8))
        return self._fast[model.hash]

    # ----- tiny autoencoder ---------------------------------------------------------------
    @torch.no_grad()
    def tiny(self, model, latents: torch.Tensor) -> list[Image.Image]:
        if not self.tiny_vae_name:
            raise StudioError("preview='tiny' needs a tiny autoencoder: pass --tiny-vae with a "
                              "TAESD id or folder (for example madebyollin/taesd).")
        if self._tiny is None:
            from diffusers import AutoencoderTiny

            try:
                self._tiny = AutoencoderTiny.from_pretrained(self.tiny_vae_name).to(model.txt2img.device)
            except (OSError, ValueError) as exc:  # offline without it in the cache, or no such folder
                raise StudioError(
                    f"tiny_vae={self.tiny_vae_name!r} could not be loaded: {str(exc).splitlines()[0]} "
                    "Download it once with network (hf download madebyollin/taesd), or pass "
                    "a local folder; until then use the fast or full preview.") from exc
        # TAESD reads the UNet's (scaled) latents as they are: its own scaling_factor is 1.0,
        # and pipelines that swap it in divide by that.
        z = latents.to(self._tiny.device, self._tiny.dtype) / self._tiny.config.scaling_factor
        pixels = self._tiny.decode(z).sample  # (b, 3, H, W) in [-1, 1]
        return [to_pil(image.float().cpu() * 0.5 + 0.5, 1) for image in pixels]


def to_pil(rgb: torch.Tensor, upscale: int) -> Image.Image:
    """(3, h, w) in [0, 1] -> PIL, enlarged `upscale` times with nearest-neighbour."""
    array = (rgb.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(array)
    return image.resize((image.width * upscale, image.height * upscale), Image.Resampling.NEAREST) \
        if upscale > 1 else image


def apply_fast_map(latents: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) latents -> (b, 3, f*h, f*w) RGB in [0, 1]."""
    pad = kernel.shape[-1] // 2
    padded = torch.nn.functional.pad(latents, (pad,) * 4, mode="replicate")
    blocks = torch.nn.functional.conv2d(padded, kernel, bias)  # (b, f*f*3, h, w)
    scale = int(round((kernel.shape[0] / 3) ** 0.5))
    return torch.nn.functional.pixel_shuffle(blocks, scale)


def factor_table_map(scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The published SD 1.x latent -> RGB factors as a 1x1 kernel copied to every sub-pixel."""
    per_pixel = torch.tensor(SD_FACTORS).T * 0.5  # (3, 4), to [0, 1] with the bias below
    kernel = per_pixel.repeat_interleave(scale * scale, dim=0)[:, :, None, None]  # (3*f*f, 4, 1, 1)
    return kernel, torch.full((3 * scale * scale,), 0.5)


def calibration_pictures(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """(count, 3, size, size) in [-1, 1]: half smooth colour fields with soft blobs, half flat
    backgrounds with hard-edged shapes (discs, boxes, triangles), both in random colours, so
    the fit sees gradients as well as flat areas and sharp edges."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=g)
    pictures = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for i in range(count):
        flat = i % 2 == 1
        if flat:
            pictures[i] = torch.rand(3, 1, 1, generator=g)
        for _ in range(4 if not flat else 1 + i % 3):
            cx, cy, r = (torch.rand(3, generator=g) * torch.tensor([size, size, size / 4]) + torch.tensor([0, 0, size / 16])).tolist()
            kind = int(torch.randint(0, 3, (1,), generator=g)) if flat else 0
            if kind == 0:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < (r + 2) ** 2
            elif kind == 1:
                mask = ((xx - cx).abs() < r) & ((yy - cy).abs() < r)
            else:  # upright triangle in the box (cx +- r, cy +- r)
                mask = ((yy - cy).abs() < r) & ((xx - cx).abs() < (yy - cy + r) / 2)
            pictures[i][:, mask] = torch.rand(3, 1, generator=g)
    return pictures.clamp(0, 1) * 2 - 1


@torch.no_grad()
def fit_linear_map(pipe, reach: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares map from each latent pixel's (2*reach+1)^2 neighbourhood to its f x f pixels.

    Fitted on pictures encoded by the model's own VAE. Returns a conv kernel (f*f*3, c, k, k)
    and bias (f*f*3,) for `apply_fast_map`, taking scaled latents to RGB in [0, 1].
    """
    vae = pipe.vae
    scale = pipe.vae_scale_factor
    size = max(scale * 8, min(CALIBRATION_SIZE, int(pipe.unet.config.sample_size) * scale))
    pictures = calibration_pictures(CALIBRATION_IMAGES, size)
    latents = vae.encode(pictures.to(vae.device, vae.dtype)).latent_dist.mean.float().cpu()
    latents = latents * vae.config.scaling_factor  # the scale the UNet works in
    channels, k = latents.shape[1], 2 * reach + 1
    padded = torch.nn.functional.pad(latents, (reach,) * 4, mode="replicate")
    x = torch.nn.functional.unfold(padded, k)  # (n, c*k*k, h*w), ordered like a conv kernel
    x = x.permute(0, 2, 1).reshape(-1, channels * k * k)
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)    # bias column
    # Each latent pixel's target: its f x f block of pixels, ordered as pixel_shuffle reads them.
    y = torch.nn.functional.pixel_unshuffle(pictures * 0.5 + 0.5, scale)  # (n, 3*f*f, h, w)
    y = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
    solution = torch.linalg.lstsq(x, y).solution          # (c*k*k + 1, 3*f*f)
    if not torch.isfinite(solution).all():
        raise ValueError("the least-squares fit did not converge")
    kernel = solution[:-1].T.reshape(-1, channels, k, k).contiguous()
    return kernel, solution[-1].contiguous()
