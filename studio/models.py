"""Model sources: a Hub id, a local diffusers folder, or a single checkpoint file; and loading them.

The pickle policy lives here. Pickle checkpoints can run code when loaded, so they are refused
unless the user passes --trust-pickle, and a file's format is decided by its first bytes, not its
name: a pickle renamed .safetensors is still a pickle. Loading returns a diffusers pipeline in the
requested dtype on the CPU; placing it on a device is the manager's job.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import struct
import tempfile
from pathlib import Path

import torch

from studio.errors import StudioError

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    name: str    # what the user typed
    kind: str    # "folder", "file" or "hub"
    location: str
    format: str  # "diffusers", "safetensors" or "pickle"


def sniff_format(path: Path) -> str:
    """"safetensors", "pickle" or "unknown", from the file's first bytes."""
    with path.open("rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive / raw pickle
        return "pickle"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= path.stat().st_size - 8 and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def folder_has_pickles_only(path: Path) -> bool:
    weights = [p for p in path.rglob("*") if p.is_file()
               and (p.suffix in PICKLE_SUFFIXES or p.suffix == ".safetensors")]
    return bool(weights) and all(p.suffix in PICKLE_SUFFIXES for p in weights)


def resolve(name: str, trust_pickle: bool = False) -> ModelSource:
    """Decide what `name` is, refusing what cannot or must not be loaded."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise StudioError(f"model={name!r} is a folder but not a diffusers model (no model_index.json).")
        if folder_has_pickles_only(path) and not trust_pickle:
            raise StudioError(f"model={name!r} has only pickle weights (.bin/.pt), which can run code "
                              "when loaded; convert it to safetensors or pass --trust-pickle if you trust it.")
        return ModelSource(name, "folder", str(path), "diffusers")
    if path.is_file():
        fmt = sniff_format(path)
        if fmt == "pickle" and not trust_pickle:
            raise StudioError(f"model={name!r} is a pickle checkpoint, which can run code when loaded; "
                              "convert it to .safetensors or pass --trust-pickle if you trust it.")
        if fmt == "unknown":
            raise StudioError(f"model={name!r} is neither a safetensors nor a pickle checkpoint.")
        return ModelSource(name, "file", str(path), fmt)
    if HUB_ID.match(name) and ".." not in name:
        return ModelSource(name, "hub", name, "diffusers")
    raise StudioError(f"model={name!r} was not found: give a diffusers folder, a .safetensors file "
                      "or a Hugging Face Hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5.")


def load_pipeline(source: ModelSource, dtype: torch.dtype, config: str | None = None):
    """The source's text-to-image (or unconditional) pipeline, on the CPU."""
    from diffusers import DiffusionPipeline

    try:
        if source.kind == "file":
            return load_single_file(source, dtype, config)
        return DiffusionPipeline.from_pretrained(
            source.location, dtype=dtype, use_safetensors=None if source.format == "pickle" else True,
            local_files_only=offline())
    except StudioError:
        raise
    except (OSError, ValueError, EnvironmentError) as exc:
        raise StudioError(load_failure(source, exc)) from exc


def load_single_file(source: ModelSource, dtype: torch.dtype, config: str | None):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors import safe_open

    path = Path(source.location)
    if source.format == "pickle" and path.suffix not in (".ckpt", ".pt", ".pth", ".bin"):
        # diffusers picks its reader by file name; give the trusted pickle a name it reads as one
        link = Path(tempfile.mkdtemp(prefix="studio-")) / (path.stem + ".ckpt")
        link.symlink_to(path.resolve())
        path = link
    is_xl = False
    if source.format == "safetensors":
        with safe_open(str(path), "pt") as f:
            is_xl = any(k.startswith("conditioner.embedders.1") for k in f.keys())
    cls = StableDiffusionXLPipeline if is_xl else StableDiffusionPipeline
    kwargs = {"config": config} if config else {}
    return cls.from_single_file(str(path), dtype=dtype, local_files_only=offline() or bool(config), **kwargs)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_failure(source: ModelSource, exc: Exception) -> str:
    if source.kind == "hub":
        where = "the local Hugging Face cache (the Hub is offline: HF_HUB_OFFLINE=1)" if offline() \
            else "the local cache, and the Hub could not be reached or has no such model"
        return f"model={source.name!r} could not be loaded: it is not in {where}. ({short(exc)})"
    if source.kind == "file":
        return (f"model={source.name!r} could not be loaded as a single-file checkpoint. Offline, pass "
                f"--model-config with a diffusers folder of the same family. ({short(exc)})")
    return f"model={source.name!r} could not be loaded: {short(exc)}"


def short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def family(pipe) -> str:
    """"sd1", "sd2", "sdxl", "few-step" or "unconditional", for the settings panel and defaults."""
    name = type(pipe).__name__
    if not hasattr(pipe, "text_encoder"):
        return "unconditional"
    scheduler = type(pipe.scheduler).__name__
    if "LCM" in scheduler or getattr(pipe.unet.config, "time_cond_proj_dim", None):
        return "few-step"
    if "XL" in name:
        return "sdxl"
    return "sd2" if pipe.unet.config.cross_attention_dim == 1024 else "sd1"


def model_hash(source: ModelSource) -> str:
    """A short fingerprint of the model for PNG metadata: cheap, stable, not a security hash.

    A file: 64 KiB read at 1 MiB (AUTOMATIC1111's old "model hash" window). A folder: its configs
    and the sizes of its weight files. A Hub id: the id.
    """
    digest = hashlib.sha256()
    path = Path(source.location)
    if source.kind == "hub":
        digest.update(source.location.encode())
    elif path.is_file():
        with path.open("rb") as f:
            f.seek(0x100000)
            digest.update(f.read(0x10000))
    else:
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(f.relative_to(path)).encode())
            digest.update(f.read_bytes() if f.suffix == ".json" else str(f.stat().st_size).encode())
    return digest.hexdigest()[:10]
