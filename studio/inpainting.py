"""Inpainting: repaint the white part of a mask over an img2img picture, keep the rest.

The same weights through diffusers' `AutoPipelineForInpainting.from_pipe` (no second copy): an
ordinary 4-channel UNet is inpainted by latent blending (the kept area is put back, noised to the
step, after every step, which is what x_t shows in the viewer), a 9-channel inpainting UNet by its
own path. Then, as AUTOMATIC1111 does, the kept area's own pixels are pasted back through the mask
softened by `mask_blur`, so outside the mask the picture is the input's, not its VAE round trip.
Options: masked content "original" (from the picture noised by the strength) or "latent noise"
(from pure noise: strength 1), and "inpaint only the masked area" (the mask's box with 32 pixels
around it, widened to the picture's shape by diffusers' get_crop_region, run at the full size and
scaled back into place, as diffusers' padding_mask_crop does). This module does not run the denoiser.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from diffusers.image_processor import VaeImageProcessor
from PIL import Image, ImageFilter, ImageOps

from studio import images
from studio.errors import StudioError

ONLY_MASKED_PADDING = 32  # pixels around the mask's box, as A1111's default "masked padding"


def prepare_mask(source, image: Image.Image, width: int, height: int) -> Image.Image:
    """The mask as 8-bit gray at width x height, fitted as the picture is; StudioError if its
    shape is not the picture's, or it masks nothing."""
    mask = images.open_image(source, "mask_image")
    source_size = images.open_image(image, "image").size
    if abs(mask.width * source_size[1] - mask.height * source_size[0]) > max(mask.size + source_size):
        raise StudioError(f"mask_image is {mask.width}x{mask.height} and the picture {source_size[0]}x"
                          f"{source_size[1]}: a mask must have the picture's shape (its size, or the same ratio).")
    mask = ImageOps.fit(ImageOps.exif_transpose(mask).convert("L"), (width, height), Image.Resampling.LANCZOS)
    if mask.getextrema()[1] < 128:
        raise StudioError("mask_image is empty (no white): paint the area to repaint white, or use image to image.")
    return mask.point(lambda v: 255 if v >= 128 else 0)


def soft(mask: Image.Image, blur: int) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur else mask


@dataclasses.dataclass(frozen=True)
class Inpainting:
    """One request's picture and mask at the run's size, and the box the pipeline works on (the
    whole picture, or with "only the masked area" the mask's box, at the run's size)."""
    picture: Image.Image
    mask: Image.Image              # binary: white is repainted
    box: tuple[int, int, int, int]
    strength: float
    blur: int

    @classmethod
    def of(cls, request, width: int, height: int) -> Inpainting:
        picture = images.prepare(request.image, width, height)
        mask = prepare_mask(request.mask_image, request.image, width, height)
        box = (VaeImageProcessor.get_crop_region(mask, width, height, pad=ONLY_MASKED_PADDING)
               if request.inpaint_only_masked else (0, 0, width, height))
        return cls(picture, mask, tuple(box), request.run_strength, request.mask_blur)

    def pipeline_kwargs(self) -> dict:
        """The inpainting pipeline's picture, mask and strength: the box's, at the run's size."""
        size = self.picture.size
        return {"image": self.picture.crop(self.box).resize(size, Image.Resampling.LANCZOS),
                "mask_image": self.mask.crop(self.box).resize(size, Image.Resampling.NEAREST),
                "strength": self.strength}

    def paste_back(self, pixels: np.ndarray) -> np.ndarray:
        """(batch, h, w, 3) pictures in [0, 1] of the box, put into the input picture through the
        mask softened by the blur: outside the mask, the input's own pixels."""
        keep = np.asarray(self.picture, dtype=np.float32) / 255
        weight = np.asarray(soft(self.mask, self.blur), dtype=np.float32)[:, :, None] / 255
        x1, y1, x2, y2 = self.box
        out = []
        for made in pixels:
            drawn = Image.fromarray((made * 255).round().astype(np.uint8))
            full = keep.copy()
            full[y1:y2, x1:x2] = np.asarray(drawn.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS),
                                            dtype=np.float32) / 255
            out.append(keep * (1 - weight) + full * weight)
        return np.stack(out)


def whole_picture_kwargs(image, width: int, height: int, strength: float) -> dict:
    """What a 9-channel inpainting UNet gets outside inpainting, as AUTOMATIC1111 conditions one:
    the whole picture masked. Text to image (`image` None): a gray picture, which the full mask
    blanks, at strength 1 (pure noise); image to image: the picture at its strength."""
    picture = Image.new("RGB", (width, height), (127, 127, 127)) if image is None else images.prepare(image, width, height)
    return {"image": picture, "mask_image": Image.new("L", (width, height), 255),
            "strength": 1.0 if image is None else strength}


def run_mask(request) -> Image.Image | None:
    """An inpainting run's mask at the run's size (None for any other run), for the viewer."""
    if not request.is_inpaint:
        return None
    return prepare_mask(request.mask_image, request.image, request.width, request.height)


def outlined(picture: Image.Image, mask: Image.Image | None) -> Image.Image:
    """`picture` with the mask's edge drawn on it in magenta, so the viewer shows where the run
    repaints and where it blends the kept picture back in."""
    if mask is None:
        return picture
    mask = mask.resize(picture.size, Image.Resampling.NEAREST)
    edge = np.asarray(mask) != np.asarray(mask.filter(ImageFilter.MinFilter(3)))
    drawn = np.asarray(picture.convert("RGB")).copy()
    drawn[edge] = (255, 0, 255)
    return Image.fromarray(drawn)
