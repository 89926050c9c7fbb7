"""Where the model runs: the one place that picks the device and the precision.

`auto` means cuda, then mps, then xpu, then cpu; precision `auto` means float16 on CUDA, MPS and
XPU and float32 on the CPU. This module does not load models.
"""
from __future__ import annotations

import platform

import torch

from studio.errors import StudioError

DEVICE_ORDER = ("cuda", "mps", "xpu", "cpu")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def available_devices() -> list[str]:
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        found.append("xpu")
    return found + ["cpu"]


def choose_device(name: str = "auto") -> str:
    available = available_devices()
    if name == "auto":
        return next(d for d in DEVICE_ORDER if d in available)
    if name.split(":")[0] not in available:
        raise StudioError(f"device={name!r} is not available here; available: {', '.join(available)}.")
    return name


def choose_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    if name not in DTYPES:
        raise StudioError(f"dtype={name!r} is not known; choose auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


def describe(device: str) -> str:
    """A one-line hardware description for the settings panel and benchmark reports."""
    kind = device.split(":")[0]
    if kind == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        return f"{device} ({props.name}, {props.total_memory / 2**30:.0f} GB)"
    if kind == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return device


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def apply_memory_options(pipe, settings, device: str) -> None:
    """The settings' attention and VAE slicing, VAE tiling and CPU offload, then the device."""
    slicing = settings.attention_slicing
    if slicing == "max" or (slicing == "auto" and device.startswith("mps")):
        pipe.enable_attention_slicing("max" if slicing == "max" else "auto")
    vae = getattr(pipe, "vae", None)
    if vae is not None and settings.vae_slicing:
        vae.enable_slicing()
    if vae is not None and settings.vae_tiling:
        vae.enable_tiling()
    if settings.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
