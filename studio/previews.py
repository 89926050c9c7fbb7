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

import os
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from studio.errors import StudioError
from studio.fastmap import FastMap, apply_fast_map, factor_table_map, fit_linear_map

# How long the first call waits for a new model's fit before it goes on in the background: the
# bundled model's takes 0.3-0.4 s (a first run would otherwise finish before its first preview),
# Stable Diffusion's VAE 12-60 s on a CPU.
FIRST_FIT_WAIT = 3.0


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

    def step_reporter(self, model, request, total: int, on_step):
        """The recorder's `on_step` for a run: `on_step(number, total, pictures_or_None)` with
        the step's preview when one is due (every `preview_every` steps and at the last)."""
        if on_step is None:
            return None

        def report(step, recorder) -> None:
            number = step.index + 1
            # PLMS repeats a timestep, so img2img with it runs one step more than int(N x strength)
            total_now = max(total, number)
            due = request.preview != "none" and (number % request.preview_every == 0 or number == total_now)
            if request.preview == "fast" and due and not self.fast_ready(model):
                due = False  # its first fit runs in the background; the manager's `preview_note` says so
            picture = self.decode(model, step.x0, request.preview) if due else None
            on_step(number, total_now, picture)

        return report

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


