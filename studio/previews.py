"""Latents -> pictures for previews and the viewer: the full VAE, a fast linear map, or a tiny AE.

- "full": the model's own VAE, exact and slow.
- "fast": one linear map, nearly free: each latent pixel's 3x3 neighbourhood gives the f x f
  block of RGB pixels it covers (a 3x3 convolution and a pixel shuffle), so edges inside a block
  come out sharp instead of as flat squares. It is a least-squares fit, kept as its normal
  equations per model hash:
  - first, synthetic pictures encoded by the model's own VAE. That takes under a second for a
    small VAE and 12-60 s for Stable Diffusion's on a CPU, so it runs in the background, awaited
    only FIRST_FIT_WAIT: a run shows no fast preview until it is ready (`fast_ready`), and says so;
  - then every finished run adds its own final latents and the full VAE's pictures of them
    (`learn`), so the map learns the colours the model really draws;
  - the equations are saved under the cache folder, so the next session starts from them.
  The known SD factor table is only a fallback if fitting fails.
- "tiny": an AutoencoderTiny (TAESD family) given by id or path.
This module draws nothing on screen; it returns PIL images.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studio.errors import StudioError

CALIBRATION_IMAGES = 24
CALIBRATION_SIZE = 128
REACH = 1  # latent pixels each side that feed one block of the fast map (a 3x3 neighbourhood)
# Weight of a latent pixel of the model's own pictures against a synthetic one. Measured on the
# bundled model, 16 held-out prompts, fast preview vs final picture classified alike: 13/16 on
# the synthetic fit; after 8 learned runs 14 at weight 1, 16 at 8, 16 at 64 (but 13 after 2).
LEARNED_WEIGHT = 8.0
# How long the first call waits for a new model's fit before it goes on in the background: the
# bundled model's takes 0.3-0.4 s (a first run would otherwise finish before its first preview),
# Stable Diffusion's VAE 12-60 s on a CPU.
FIRST_FIT_WAIT = 3.0
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


class PreviewDecoder:
    """Decodes latents to pictures; keeps one fast map per model, in memory and under `cache_dir`."""

    def __init__(self, tiny_vae: str | None = None, cache_dir: str | Path | None = None):
        self.tiny_vae_name = tiny_vae
        self.cache_dir = Path(cache_dir) / "fast-preview" if cache_dir else None
        self._fast: dict[str, FastMap] = {}
        self._fitting: dict[str, threading.Thread] = {}
        self._failed: set[str] = set()  # models whose fit failed: the factor table stands in
        self._fast_lock = threading.Lock()
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
        fast_map = self.fast_map(model)
        rgb = apply_fast_map(latents.float().cpu(), fast_map.kernel, fast_map.bias)
        return [to_pil(image, 1) for image in rgb]

    def fast_ready(self, model) -> bool:
        """Whether `fast` answers at once; if not, the fit starts (or goes on) in the background."""
        if model.unconditional or model.hash in self._fast or model.hash in self._failed \
                or self._load_saved(model):
            return True
        started = None
        with self._fast_lock:
            if model.hash not in self._fitting:
                started = threading.Thread(target=self._fit, args=(model,), daemon=True,
                                           name=f"fast-preview-fit-{model.hash}")
                self._fitting[model.hash] = started
                started.start()
        if started is not None:  # a small VAE's fit is done in this time: no run goes without
            started.join(FIRST_FIT_WAIT)
        return model.hash in self._fast or model.hash in self._failed

    def fast_map(self, model) -> FastMap:
        """The model's fast map, fitted now (or awaited, if a background fit runs) if need be."""
        if not self.fast_ready(model) and (fitting := self._fitting.get(model.hash)) is not None:
            fitting.join()
        if model.hash not in self._fast:  # the fit failed: the published factors, or a clear error
            if model.txt2img.vae.config.latent_channels != 4:
                raise StudioError("The fast preview could not be fitted for this model; use the full preview.")
            kernel, bias = factor_table_map(getattr(model.txt2img, "vae_scale_factor", 8))
            return FastMap(torch.zeros(1, 1), torch.zeros(1, 1), kernel=kernel, bias=bias)
        return self._fast[model.hash]

    def _fit(self, model) -> None:
        try:
            fitted = fit_linear_map(model.txt2img)
        except (RuntimeError, ValueError):  # fast_map falls back to the factor table
            fitted = None
        with self._fast_lock:
            if fitted is None:
                self._failed.add(model.hash)
            else:
                self._fast.setdefault(model.hash, fitted)
            self._fitting.pop(model.hash, None)
        if fitted is not None:
            self._save(model.hash)

    @torch.no_grad()
    def learn(self, model, latents: torch.Tensor, pixels: np.ndarray) -> None:
        """Add a finished run to the model's fast map: its final `latents` (b, c, h, w, alpha
        scale) and the full VAE's `pixels` of them (b, H, W, 3) in [0, 1]. Skipped while the
        first fit is not done: that fit sets the scale the map's colours start from."""
        fast_map = self._fast.get(model.hash)
        if model.unconditional or fast_map is None:
            return
        target = torch.from_numpy(np.ascontiguousarray(pixels, np.float32)).permute(0, 3, 1, 2)
        latents = latents.float().cpu()
        if target.shape[-2:] != tuple(s * model.txt2img.vae_scale_factor for s in latents.shape[-2:]):
            return
        with self._fast_lock:
            fast_map.add(latents, target)
        self._save(model.hash)

    def _cache_file(self, model_hash: str) -> Path | None:
        return self.cache_dir / f"{model_hash}.safetensors" if self.cache_dir else None

    def _load_saved(self, model) -> bool:
        path = self._cache_file(model.hash)
        if path is None or not path.is_file():
            return False
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                saved = FastMap(f.get_tensor("xtx"), f.get_tensor("xty"), int(f.metadata()["learned"]))
        except (OSError, KeyError, ValueError, RuntimeError, TypeError):
            return False  # unreadable or stale: fit afresh, and overwrite it then
        with self._fast_lock:
            self._fast.setdefault(model.hash, saved)
        return True

    def _save(self, model_hash: str) -> None:
        path = self._cache_file(model_hash)
        if path is None:
            return
        from safetensors.torch import save_file

        fast_map = self._fast[model_hash]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            save_file({"xtx": fast_map.xtx, "xty": fast_map.xty}, str(partial),
                      metadata={"learned": str(fast_map.learned)})
            os.replace(partial, path)  # readers never see half a file
        except OSError:
            pass  # a read-only cache costs the next session one fit, nothing more

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
