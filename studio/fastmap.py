"""The fast preview's linear map: latents -> RGB by one 3x3 convolution and a pixel shuffle, fitted
by least squares (kept as its normal equations, so runs can add to them), with the SD factor
table as a fallback. studio.previews decides when to fit, learn and save it."""
from __future__ import annotations

import dataclasses

import torch


# Weight of a latent pixel of the model's own pictures against a synthetic one. Measured on the
# bundled model, 16 held-out prompts, fast preview vs final picture classified alike: 13/16 on
# the synthetic fit; after 8 learned runs 14 at weight 1, 16 at 8, 16 at 64 (but 13 after 2).
LEARNED_WEIGHT = 8.0
CALIBRATION_IMAGES = 24


CALIBRATION_SIZE = 128


REACH = 1  # latent pixels each side that feed one block of the fast map (a 3x3 neighbourhood)


# Fallback latent -> RGB factors in [-1, 1] (4 latent channels x RGB) for the SD 1.x/2.x VAE.
SD_FACTORS = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]


@dataclasses.dataclass
class FastMap:
    """The fast map's normal equations (X^T X, X^T Y over every fitted latent pixel) and their
    solution, a conv kernel (f*f*3, c, k, k) and bias (f*f*3,) for `apply_fast_map`."""
    xtx: torch.Tensor = dataclasses.field(repr=False)  # (c*k*k + 1, c*k*k + 1), float64
    xty: torch.Tensor = dataclasses.field(repr=False)  # (c*k*k + 1, 3*f*f), float64
    learned: int = 0       # pictures of the model's own runs added by `learn`
    kernel: torch.Tensor | None = dataclasses.field(default=None, repr=False)
    bias: torch.Tensor | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self.kernel is None:
            self.solve()

    def solve(self) -> None:
        channels = (self.xtx.shape[0] - 1) // (2 * REACH + 1) ** 2
        ridge = 1e-6 * self.xtx.diagonal().mean() * torch.eye(len(self.xtx), dtype=self.xtx.dtype)
        solution = torch.linalg.solve(self.xtx + ridge, self.xty).float()
        if not torch.isfinite(solution).all():
            raise ValueError("the least-squares fit did not converge")
        self.kernel = solution[:-1].T.reshape(-1, channels, 2 * REACH + 1, 2 * REACH + 1).contiguous()
        self.bias = solution[-1].contiguous()

    def add(self, latents: torch.Tensor, pixels: torch.Tensor) -> None:
        xtx, xty = normal_equations(latents, pixels)
        self.xtx, self.xty = self.xtx + LEARNED_WEIGHT * xtx, self.xty + LEARNED_WEIGHT * xty
        self.learned += len(latents)
        self.solve()


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


def normal_equations(latents: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """X^T X and X^T Y of the fast map's least squares, in float64: X holds each latent pixel's
    neighbourhood (ordered like a conv kernel) and a bias column, Y its f x f block of `pixels`
    (b, 3, f*h, f*w) in [0, 1], ordered as pixel_shuffle reads them."""
    channels, k = latents.shape[1], 2 * REACH + 1
    padded = torch.nn.functional.pad(latents.float(), (REACH,) * 4, mode="replicate")
    x = torch.nn.functional.unfold(padded, k).permute(0, 2, 1).reshape(-1, channels * k * k)
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    scale = pixels.shape[-1] // latents.shape[-1]
    y = torch.nn.functional.pixel_unshuffle(pixels.float(), scale)  # (b, 3*f*f, h, w)
    y = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]).double()
    return x.T @ x, x.T @ y


@torch.no_grad()
def fit_linear_map(pipe) -> FastMap:
    """The fast map fitted on synthetic pictures encoded by the model's own VAE: each latent
    pixel's neighbourhood -> its f x f pixels, taking scaled latents to RGB in [0, 1]."""
    vae = pipe.vae
    scale = pipe.vae_scale_factor
    size = max(scale * 8, min(CALIBRATION_SIZE, int(pipe.unet.config.sample_size) * scale))
    pictures = calibration_pictures(CALIBRATION_IMAGES, size)
    latents = vae.encode(pictures.to(vae.device, vae.dtype)).latent_dist.mean.float().cpu()
    latents = latents * vae.config.scaling_factor  # the scale the UNet works in
    return FastMap(*normal_equations(latents, pictures * 0.5 + 0.5))
