"""A run card: what a picture's pixels depend on besides its settings, written into its PNG
parameters (as AUTOMATIC1111 adds its own keys): the diffusers and torch versions, the device,
the precision, the attention backend and where the noise is drawn (the CPU's generator, as
always here). With the model hash, the same card and settings give the same pixels; `compare`
says, for a picture made again, whether they are, and if not, what differs between the cards.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from studio import branching, loras, metadata
from studio.errors import StudioError
from studio.requests import GenerationRequest

KEYS = ("Diffusers", "Torch", "Device", "Dtype", "Attention", "RNG", "Model hash", "Lora hashes", "Version")
BACKENDS = {"AttnProcessor2_0": "SDPA", "AttnProcessor": "classic", "SlicedAttnProcessor": "sliced",
            "XFormersAttnProcessor": "xformers", "AttnAddedKVProcessor2_0": "SDPA", "AttnAddedKVProcessor": "classic"}


def attention_backend(denoiser) -> str:
    """How the UNet's attention runs: "SDPA" (PyTorch's), "sliced", ...; several joined by "+"."""
    processors = getattr(denoiser, "attn_processors", None) or {}
    names = sorted({BACKENDS.get(type(p).__name__, type(p).__name__) for p in processors.values()})
    return "+".join(names) or "none"


def of(pipe, device: str, dtype: str, picked=()) -> dict[str, str]:
    """The card of a run on `pipe`; `picked`, its LoRAs (studio.loras.Picked), adds A1111's
    `Lora hashes`."""
    import diffusers
    import torch

    card = {"Diffusers": diffusers.__version__, "Torch": torch.__version__, "Device": device, "Dtype": dtype,
            "Attention": attention_backend(getattr(pipe, "unet", None)), "RNG": "CPU"}
    return card | ({"Lora hashes": loras.hashes_text(picked)} if picked else {})


def reproduce(manager, values: dict[str, str], parent_run: str = ""):
    """The picture of a PNG's parameters (`metadata.parse_parameters` output) made again:
    (the result, the index of the picture with the PNG's seed, the parent run or None). A
    branch's parent runs first; `parent_run` is its number in a history."""
    if branching.AT_STEP in values:
        parent, result = branching.regenerate(manager, values, parent_run)
    else:
        if branching.IMG2IMG_KEY in values:
            raise StudioError("An img2img picture cannot be made again from its PNG alone: the PNG does not hold "
                              "its starting picture. Send it to img2img with that picture instead.")
        fields, notes = metadata.request_fields(values)
        if notes:
            raise StudioError(notes[0])
        parent, result = None, manager.generate(GenerationRequest(**{**fields, "preview": "none"}))
    index = next((i for i, s in enumerate(result.seeds) if str(s) == values.get("Seed")), 0)
    return result, index, parent


def compare(dropped: Image.Image, made: Image.Image, theirs: dict[str, str], ours: dict[str, str]) -> str:
    """"Identical", or the largest difference and what differs between the two run cards."""
    a = np.asarray(dropped.convert("RGB"), dtype=int)
    b = np.asarray(made.convert("RGB"), dtype=int)
    if a.shape != b.shape:
        return f"Not the same size: the dropped picture is {a.shape[1]}x{a.shape[0]}, this one {b.shape[1]}x{b.shape[0]}."
    worst = int(np.abs(a - b).max())
    if worst == 0:
        return "**Identical**: every pixel is the dropped picture's."
    share = float((np.abs(a - b).max(-1) > 0).mean())
    differs = [f"{key}: {theirs.get(key, '(not recorded)')} there, {ours.get(key, '(not recorded)')} here"
               for key in KEYS if theirs.get(key) != ours.get(key)]
    why = ("What differs between the two run cards: " + "; ".join(differs) + "." if differs else
           "The two run cards agree, so the difference comes from elsewhere (another build of a library, or "
           "another CPU's arithmetic).")
    return f"**Not identical**: up to {worst}/255 apart, {share:.0%} of the pixels differ. {why}"
