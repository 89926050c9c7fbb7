"""Model sources: a Hub id, a local diffusers folder, or a single checkpoint file; and loading them.

The pickle policy lives here. Pickle checkpoints can run code when loaded, so they are refused
unless the user passes --trust-pickle, and a file's format is decided by its first bytes, not its
name: a pickle renamed .safetensors is still a pickle. A diffusers folder is refused when any of
its parts (unet/, vae/, ...) has its weights only as pickles. Loading returns a diffusers pipeline
in the requested dtype on the CPU; placing it on a device is the manager's job. This module does
not run models.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import struct
import tempfile
from pathlib import Path

import torch

from studio.errors import StudioError

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
WEIGHT_SUFFIXES = PICKLE_SUFFIXES + (".safetensors",)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HASH_OFFSET, HASH_WINDOW = 0x100000, 0x10000  # AUTOMATIC1111's old "model hash": 64 KiB at 1 MiB


@dataclasses.dataclass(frozen=True)
class ModelSource:
    name: str    # what the user typed
    kind: str    # "folder", "file" or "hub"
    location: str
    format: str  # "diffusers", "safetensors" or "pickle"


# ---------------------------------------------------------------- what a name is

def sniff_format(path: Path) -> str:
    """"safetensors", "pickle" or "unknown", from the file's first bytes."""
    with path.open("rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive / pickle protocol >= 2
        return "pickle"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])  # safetensors: u64 JSON length, then "{"
        if 2 <= header_len <= path.stat().st_size - 8 and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def pickle_only_parts(path: Path) -> list[str]:
    """The parts of a diffusers folder (its sub-folders: unet, vae, ...) whose weights are all pickles.

    Files at the top level are not parts: diffusers never loads them.
    """
    found = []
    for part in sorted(p for p in path.iterdir() if p.is_dir()):
        suffixes = {f.suffix.lower() for f in part.rglob("*") if f.is_file()}
        if suffixes & set(PICKLE_SUFFIXES) and ".safetensors" not in suffixes:
            found.append(part.name)
    return found


def offered(settings) -> list[str]:
    """The models this server names in its model lists: the one it started with, then --allowed-models."""
    return list(dict.fromkeys([settings.model, *settings.allowed_models]))


def check_allowed(settings, name: str) -> None:
    """In public mode only the offered models may be loaded (UI and API alike): no arbitrary paths
    or Hub ids."""
    if settings.public and name not in offered(settings):
        raise StudioError(f"model={name!r} is not offered on this server; choose one of: "
                          f"{', '.join(sorted(offered(settings)))}.")


def looks_like_hub_id(name: str) -> bool:
    """"owner/repo" with Hub-legal characters; never a path (no "..", no weight-file suffix)."""
    return (bool(HUB_ID.match(name)) and ".." not in name and "--" not in name
            and not name.lower().endswith(WEIGHT_SUFFIXES))


MAX_NAME_CHARS = 1024


def resolve(name: str, trust_pickle: bool = False) -> ModelSource:
    """Decide what `name` is, refusing what cannot or must not be loaded."""
    if not isinstance(name, str) or not name.strip():
        raise StudioError(f"model={name!r} is empty: give a diffusers folder, a .safetensors file "
                          "or a Hugging Face Hub id.")
    if len(name) > MAX_NAME_CHARS:  # the file system would answer "File name too long"
        raise StudioError(f"model={name[:40] + '...'!r} is {len(name):,} characters long; a model name or "
                          f"path has at most {MAX_NAME_CHARS}.")
    path = Path(name).expanduser()
    if path.is_dir():
        return resolve_folder(name, path, trust_pickle)
    if path.is_file():
        return resolve_file(name, path, trust_pickle)
    if looks_like_hub_id(name):
        return ModelSource(name, "hub", name, "diffusers")
    raise StudioError(f"model={name!r} was not found: give a diffusers folder, a .safetensors file "
                      "or a Hugging Face Hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5.")


def resolve_folder(name: str, path: Path, trust_pickle: bool) -> ModelSource:
    if not (path / "model_index.json").is_file():
        raise StudioError(f"model={name!r} is a folder but not a diffusers model (no model_index.json).")
    pickled = pickle_only_parts(path)
    if pickled and not trust_pickle:
        raise StudioError(f"model={name!r} has only pickle weights (.bin/.pt/.ckpt) in {', '.join(pickled)}; "
                          "pickles can run code when loaded. Convert them to safetensors, or pass "
                          "--trust-pickle if you trust this model.")
    # "pickle" lets diffusers read the trusted pickles (use_safetensors=None) instead of failing
    return ModelSource(name, "folder", str(path), "pickle" if pickled else "diffusers")


def resolve_file(name: str, path: Path, trust_pickle: bool) -> ModelSource:
    try:
        fmt = sniff_format(path)
    except OSError as exc:
        raise StudioError(f"model={name!r} could not be read ({exc.strerror or exc}).") from exc
    if fmt == "pickle" and not trust_pickle:
        raise StudioError(f"model={name!r} is a pickle checkpoint (whatever its name says), which can run "
                          "code when loaded; convert it to .safetensors, or pass --trust-pickle if you trust it.")
    if fmt == "unknown":
        raise StudioError(f"model={name!r} is neither a safetensors nor a pickle checkpoint.")
    return ModelSource(name, "file", str(path), fmt)


# ---------------------------------------------------------------- a model's own defaults

DEFAULTS_FILE = "studio.json"  # in a model folder: request defaults the model sets for itself


def model_defaults(source: ModelSource) -> dict:
    """What a model folder's DEFAULTS_FILE sets: its guidance interval (studio.guidance), e.g.
    {"guidance_min_sigma": 0.2, "guidance_fade_sigma": 0.8}, each value checked as a request's;
    {} without one."""
    from studio.fields import FIELD
    from studio.guidance import FIELDS as MODEL_DEFAULTS, check_interval
    from studio.requests import check_field

    path = Path(source.location) / DEFAULTS_FILE
    if source.kind != "folder" or not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StudioError(f"model={source.name!r}: {DEFAULTS_FILE} is not readable JSON ({exc}).") from exc
    if not isinstance(values, dict) or not set(values) <= set(MODEL_DEFAULTS):
        raise StudioError(f"model={source.name!r}: {DEFAULTS_FILE} must be a JSON object of "
                          f"{', '.join(MODEL_DEFAULTS)}, not {values!r}.")
    try:
        checked = {name: check_field(FIELD[name], value) for name, value in values.items()}
        check_interval(checked.get("guidance_min_sigma"), checked.get("guidance_fade_sigma"))
        return checked
    except StudioError as exc:
        raise StudioError(f"model={source.name!r}, {DEFAULTS_FILE}: {exc}") from exc


# ---------------------------------------------------------------- loading

def load_pipeline(source: ModelSource, dtype: torch.dtype, config: str | None = None):
    """The source's text-to-image (or unconditional) pipeline, on the CPU.

    `config` is a diffusers folder whose configs, scheduler and tokenizer a single file uses;
    offline, a single file cannot load without it (diffusers would fetch a default from the Hub).
    """
    from diffusers import DiffusionPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    from safetensors import SafetensorError

    try:
        if source.kind == "file":
            return load_single_file(source, dtype, config)
        return DiffusionPipeline.from_pretrained(
            source.location, dtype=dtype, use_safetensors=None if source.format == "pickle" else True,
            local_files_only=offline())
    except StudioError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError, SafetensorError,
            SingleFileComponentError) as exc:
        raise StudioError(load_failure(source, exc)) from exc


def load_single_file(source: ModelSource, dtype: torch.dtype, config: str | None):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    check_single_file_config(source, config)
    cls = StableDiffusionXLPipeline if is_sdxl_checkpoint(source) else StableDiffusionPipeline
    kwargs = {"config": config} if config else {}
    with tempfile.TemporaryDirectory(prefix="studio-") as scratch:
        path = readable_path(Path(source.location), source.format, Path(scratch))
        return cls.from_single_file(str(path), dtype=dtype, local_files_only=offline() or bool(config),
                                    **kwargs)


def check_single_file_config(source: ModelSource, config: str | None) -> None:
    if config and not (Path(config).expanduser() / "model_index.json").is_file():
        raise StudioError(f"model_config={config!r} is not a diffusers folder (no model_index.json); "
                          "give --model-config a diffusers model of the checkpoint's family.")
    if not config and offline():
        raise StudioError(f"model={source.name!r} is a single-file checkpoint: offline, pass --model-config "
                          "with a diffusers folder of the same family for its configs and tokenizer "
                          "(without it diffusers would download them from the Hub).")


def is_sdxl_checkpoint(source: ModelSource) -> bool:
    """An original-layout SDXL checkpoint has a second text encoder (`conditioner.embedders.1`)."""
    if source.format != "safetensors":
        return False
    from safetensors import safe_open

    with safe_open(source.location, "pt") as f:
        return any(k.startswith("conditioner.embedders.1") for k in f.keys())


def readable_path(path: Path, fmt: str, scratch: Path) -> Path:
    """`path`, or a link to it in `scratch` named so diffusers reads it as `fmt`.

    diffusers picks its reader by the exact suffix: only ".safetensors" is read as safetensors,
    so "X.SAFETENSORS" or a safetensors file named .ckpt needs another name, as does a trusted
    pickle named .safetensors.
    """
    wanted = ".safetensors" if fmt == "safetensors" else ".ckpt"
    if path.suffix == wanted or (fmt == "pickle" and path.suffix not in (".safetensors", ".gguf")):
        return path
    link = scratch / (path.stem + wanted)
    link.symlink_to(path.resolve())
    return link


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_failure(source: ModelSource, exc: Exception) -> str:
    if source.kind == "hub" and offline() and isinstance(exc, FileNotFoundError):
        # huggingface_hub's LocalEntryNotFoundError; its text advises local_files_only=False
        return (f"model={source.name!r} could not be loaded: it is not in the local Hugging Face cache, "
                "and the Hub is offline (HF_HUB_OFFLINE=1). Download it while online, or give a "
                "local diffusers folder.")
    if source.kind == "hub":
        return (f"model={source.name!r} could not be loaded: it is not in the local cache, and the Hub "
                f"could not be reached or has no such model. ({short(exc)})")
    if source.kind == "file":
        return (f"model={source.name!r} could not be loaded as a single-file checkpoint; check that "
                f"--model-config is a diffusers folder of the same family. ({short(exc)})")
    return f"model={source.name!r} could not be loaded: {short(exc)}"


def short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# ---------------------------------------------------------------- describing a loaded model

def family(pipe) -> str:
    """"sd1", "sd2", "sdxl", "few-step", "unconditional" or "other", for the settings panel.

    The rules, first match wins:
    - no UNet: "other" (transformer pipelines such as SD3 or Flux are not told apart);
    - no text encoder: "unconditional";
    - an LCM scheduler, or a UNet with `time_cond_proj_dim` (LCM's guidance embedding): "few-step";
    - an SDXL pipeline, or a UNet with SDXL's "text_time" added conditioning: "sdxl";
    - "sd2" when the UNet's transformers use linear projections (`use_linear_projection`, new in
      SD 2), or the text encoder is OpenCLIP-style (GELU, where SD 1's OpenAI CLIP uses
      quick_gelu), or the cross-attention width is OpenCLIP ViT-H's 1024; otherwise "sd1".
    v-prediction is not a rule: SD 2-base predicts epsilon, and some SD 1 fine-tunes predict v.
    """
    unet = getattr(pipe, "unet", None)
    if unet is None:
        return "other"
    encoder = getattr(pipe, "text_encoder", None) or getattr(pipe, "text_encoder_2", None)
    if encoder is None:
        return "unconditional"
    if "LCM" in type(pipe.scheduler).__name__ or getattr(unet.config, "time_cond_proj_dim", None):
        return "few-step"
    if "XL" in type(pipe).__name__ or getattr(unet.config, "addition_embed_type", None) == "text_time":
        return "sdxl"
    openclip = getattr(encoder.config, "hidden_act", None) == "gelu"
    if getattr(unet.config, "use_linear_projection", False) or openclip \
            or unet.config.cross_attention_dim == 1024:
        return "sd2"
    return "sd1"


def file_window(path: Path) -> bytes:
    """64 KiB at 1 MiB (AUTOMATIC1111's old hash window); the whole file when it is shorter."""
    with path.open("rb") as f:
        if path.stat().st_size > HASH_OFFSET:
            f.seek(HASH_OFFSET)
            return f.read(HASH_WINDOW)
        return f.read()


def model_hash(source: ModelSource) -> str:
    """A short fingerprint of the model for PNG metadata: cheap, stable, not a security hash.

    A file: sha256 of its hash window, so for files over 1 MiB the first 8 digits equal
    AUTOMATIC1111's old "model hash". A folder: what diffusers loads from it, model_index.json
    and the component subfolders (JSON configs whole, each other file's name, size and hash
    window); a model card, sample grid or evaluation beside them leaves the hash alone. A Hub
    id: the id.
    """
    digest = hashlib.sha256()
    path = Path(source.location)
    if source.kind == "hub":
        digest.update(source.location.encode())
    elif path.is_file():
        digest.update(file_window(path))
    else:
        loaded = [p for p in path.rglob("*") if p.is_file() and (p.parent != path or p.name == "model_index.json")]
        for f in sorted(loaded):
            digest.update(str(f.relative_to(path).as_posix()).encode())
            if f.suffix == ".json":
                digest.update(f.read_bytes())
            else:
                digest.update(str(f.stat().st_size).encode() + file_window(f))
    return digest.hexdigest()[:10]
