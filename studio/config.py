"""Settings: the one home of the studio's defaults, read from flags and STUDIO_* variables.

Every flag of `python app.py` has an environment twin (--cpu-offload -> STUDIO_CPU_OFFLOAD);
a flag given on the command line wins over the variable. On a Hugging Face Space (SPACE_ID set)
the studio binds 0.0.0.0 and saves nothing to disk unless told otherwise. This module parses and
validates settings; it does not act on them.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = str(REPO_ROOT / "models" / "tiny-shapes")
DEFAULT_LORA_DIR = str(REPO_ROOT / "models" / "loras")  # holds the bundled model's shift-left LoRA
ATTENTION_SLICING = ("off", "auto", "max")
PREVIEWS = ("none", "fast", "tiny", "full")


@dataclasses.dataclass
class Settings:
    model: str = DEFAULT_MODEL
    model_config: str | None = None    # diffusers folder whose configs a single file uses
    tiny_vae: str | None = None        # AutoencoderTiny (TAESD) id or folder for "tiny" previews
    device: str = "auto"
    dtype: str = "auto"
    attention_slicing: str = "auto"
    vae_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False
    trust_pickle: bool = False
    lora_dir: str = DEFAULT_LORA_DIR   # LoRA .safetensors files, picked by name (studio.loras)
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    auth: str | None = None            # "user:password"
    api: bool = False                  # AUTOMATIC1111's HTTP API at /sdapi/v1 (studio.a1111), as A1111's --api
    ray: str | None = None             # generation on Ray Serve replicas (studio.scale): "local" or a cluster address
    replicas: int = 1                  # with --ray: generation replicas
    replica_threads: int = 1           # with --ray on CPUs: CPUs (and torch threads) per replica
    outputs: str = str(REPO_ROOT / "outputs")
    no_save: bool = False
    allowed_models: tuple[str, ...] = ()  # public mode: only these may be loaded from the UI/API
    allowed_hosts: tuple[str, ...] = ()   # Host names the server answers to besides its own
    max_queue: int = 16
    size_factor: float = 4.0           # widths and heights up to this many times the model's native size
    max_sessions: int = 200            # sessions whose state (history) the server keeps in memory
    cache_max_age: int = 3600          # seconds Gradio's cached files live before they are pruned
    cache_dir: str = dataclasses.field(default_factory=lambda: default_cache_dir())  # fitted fast-preview maps


    def output_root(self) -> Path:
        """Where finished PNGs go: --outputs, or with --no-save a temporary folder of this process
        (so the UI can still offer downloads). The server may serve files from here only."""
        if self.no_save:
            return Path(tempfile.gettempdir()) / f"diffusion-studio-{os.getpid()}"
        return Path(self.outputs).resolve()

    @property
    def on_space(self) -> bool:
        return bool(os.environ.get("SPACE_ID"))

    @property
    def public(self) -> bool:
        """Anyone may reach this server: a Space, a share link, or a non-loopback host."""
        return self.on_space or self.share or self.host not in ("127.0.0.1", "localhost", "::1")

    def auth_pair(self) -> tuple[str, str] | None:
        if not self.auth:
            return None
        user, sep, password = self.auth.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"--auth={self.auth!r} must look like user:password")
        return user, password


def default_cache_dir() -> str:
    """Where the studio keeps what it can recompute (fitted preview maps): XDG's cache folder."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(root) / "diffusion-studio")


def _env_default(name: str, default):
    raw = os.environ.get("STUDIO_" + name.upper())
    if raw is None:
        return default
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, tuple):
        return comma_list(raw)
    return raw


def comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def defaults() -> dict:
    """Settings' defaults with STUDIO_* variables and the Space's needs applied."""
    base = Settings()
    d = {f.name: _env_default(f.name, getattr(base, f.name)) for f in dataclasses.fields(Settings)}
    if os.environ.get("SPACE_ID"):
        d["host"] = os.environ.get("STUDIO_HOST", "0.0.0.0")
        d["no_save"] = _env_default("no_save", True)
    return d


def add_model_arguments(p: argparse.ArgumentParser, d: dict) -> None:
    """The flags that say which model to load and how; shared by app.py and the CLI."""
    p.add_argument("--model", default=d["model"], help="Hub id, diffusers folder or .safetensors file (default: the bundled tiny-shapes model)")
    p.add_argument("--model-config", default=d["model_config"], help="diffusers folder whose configs a single-file checkpoint uses (needed offline)")
    p.add_argument("--tiny-vae", default=d["tiny_vae"], help="AutoencoderTiny (TAESD family) id or folder for 'tiny' previews")
    p.add_argument("--device", default=d["device"], help="auto, cuda, mps, xpu or cpu (default: auto)")
    p.add_argument("--dtype", default=d["dtype"], choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--attention-slicing", default=d["attention_slicing"], choices=ATTENTION_SLICING)
    p.add_argument("--vae-slicing", action=argparse.BooleanOptionalAction, default=d["vae_slicing"])
    p.add_argument("--vae-tiling", action=argparse.BooleanOptionalAction, default=d["vae_tiling"])
    p.add_argument("--cpu-offload", action=argparse.BooleanOptionalAction, default=d["cpu_offload"], help="model CPU offload (needs an accelerator)")
    p.add_argument("--size-factor", type=float, default=d["size_factor"], help="widths and heights up to this many times the model's native size (default 4; raise it for local use)")
    p.add_argument("--cache-dir", default=d["cache_dir"], help="folder for what the studio can recompute, such as fitted preview maps (default: ~/.cache/diffusion-studio)")
    p.add_argument("--lora-dir", default=d["lora_dir"], help="folder of LoRA .safetensors files, picked by file name (default: models/loras, with the bundled model's shift-left)")
    p.add_argument("--trust-pickle", action=argparse.BooleanOptionalAction, default=d["trust_pickle"], help="allow loading pickle checkpoints (.ckpt .bin .pt .pth), which can run code")


def build_parser() -> argparse.ArgumentParser:
    d = defaults()
    p = argparse.ArgumentParser(prog="app.py", description="Diffusion Studio: a local diffusion web UI.")
    add_model_arguments(p, d)
    p.add_argument("--host", default=d["host"], help="address to bind (default 127.0.0.1; 0.0.0.0 on a Space)")
    p.add_argument("--port", type=int, default=d["port"])
    p.add_argument("--share", action=argparse.BooleanOptionalAction, default=d["share"], help="also open a public gradio.live link (needs the internet)")
    p.add_argument("--auth", default=d["auth"], help="user:password required for the UI and the API")
    p.add_argument("--api", action=argparse.BooleanOptionalAction, default=d["api"], help="also serve AUTOMATIC1111's HTTP API (/sdapi/v1) on the same port, for webuiapi, Open WebUI, SillyTavern; --auth then needs HTTP Basic auth")
    p.add_argument("--ray", nargs="?", const="local", default=d["ray"], metavar="ADDRESS", help="generate on Ray Serve replicas: with no ADDRESS a local Ray instance on this machine, else an existing cluster (ray://host:10001 or auto)")
    p.add_argument("--replicas", type=int, default=d["replicas"], help="with --ray: generation replicas (one per GPU; on CPUs see --replica-threads)")
    p.add_argument("--replica-threads", type=int, default=d["replica_threads"], help="with --ray on CPUs: CPUs and torch threads per replica (default 1)")
    p.add_argument("--outputs", default=d["outputs"], help="folder for saved images")
    p.add_argument("--no-save", dest="no_save", action="store_true", default=d["no_save"], help="do not write images to --outputs (the Space default)")
    p.add_argument("--save", dest="no_save", action="store_false", help="write images to --outputs, also on a Space")
    p.add_argument("--allowed-models", type=comma_list, default=d["allowed_models"], help="comma-separated models the UI may switch to")
    p.add_argument("--allowed-hosts", type=comma_list, default=d["allowed_hosts"], help="comma-separated host names the server answers to, besides the address it binds (local mode answers only to 127.0.0.1/localhost)")
    p.add_argument("--max-queue", type=int, default=d["max_queue"], help="requests waiting at most; more get 'queue full'")
    p.add_argument("--max-sessions", type=int, default=d["max_sessions"], help="sessions whose history is kept in memory; the oldest are dropped")
    p.add_argument("--cache-max-age", type=int, default=d["cache_max_age"], help="seconds before Gradio's cached uploads and results are deleted")
    return p


def parse_settings(argv: list[str] | None = None) -> Settings:
    args = build_parser().parse_args(argv)
    settings = Settings(**vars(args))
    settings.auth_pair()  # fail early on a malformed --auth
    for name in ("max_queue", "max_sessions", "cache_max_age", "replicas", "replica_threads"):
        if getattr(settings, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(settings, name)} must be at least 1")
    return settings
