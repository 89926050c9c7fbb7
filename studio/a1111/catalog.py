"""What the A1111 API lists and switches: samplers, schedules, models, and the options that name
the loaded model.

Models are listed as A1111 lists checkpoints, titled "name [hash]" (the hash only for the loaded
one: the others are not read until loaded). `POST /sdapi/v1/options` with `sd_model_checkpoint`
switches the model through the manager, where a failed load keeps the current one; in public
mode only the offered models may be loaded, as in the UI (studio.models.check_allowed). This
module knows nothing of HTTP or Gradio.
"""
from __future__ import annotations

from pathlib import Path

from studio import models, schedulers
from studio.a1111.payloads import FieldError
from studio.errors import StudioError


def samplers() -> list[dict]:
    return [{"name": name, "aliases": list(schedulers.A1111_ALIASES.get(name, ())), "options": {}}
            for name in schedulers.NAMES]


def schedules() -> list[dict]:
    return [{"name": name, "label": label, "aliases": None, "default_rho": 7.0 if name == "karras" else -1,
             "need_inner_model": False} for name, label in schedulers.A1111_SCHEDULES.items()]


def title(name: str, model_hash: str | None = None) -> str:
    return f"{name} [{model_hash}]" if model_hash else name


def sd_models(manager, settings) -> list[dict]:
    loaded = manager.info.name
    names = list(dict.fromkeys([loaded, *models.offered(settings)]))
    hashes = {loaded: manager.loaded.hash}
    return [{"title": title(name, hashes.get(name)), "model_name": Path(name).name or name,
             "hash": hashes.get(name), "sha256": None, "filename": name, "config": None} for name in names]


def options(manager) -> dict:
    """The options clients read: the loaded model first (Open WebUI, SillyTavern, webuiapi)."""
    return {"sd_model_checkpoint": title(manager.info.name, manager.loaded.hash), "sd_checkpoint_hash": None,
            "sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1, "samples_format": "png",
            "live_previews_enable": True, "show_progress_every_n_steps": 1}


def checkpoint_name(value, manager, settings) -> str:
    """The model `sd_model_checkpoint` names: a listed model by its title, name or file name
    (any case, as webuiapi lower-cases it); locally also any other model name the UI would take."""
    if not isinstance(value, str) or not value.strip():
        raise FieldError("sd_model_checkpoint", value, "sd_model_checkpoint: send a model's title from "
                         "GET /sdapi/v1/sd-models.")
    wanted = value.strip().lower()
    for entry in sd_models(manager, settings):
        if wanted in (entry["title"].lower(), entry["filename"].lower(), entry["model_name"].lower()):
            return entry["filename"]
    return value.strip()


def switch(value, manager, settings) -> None:
    """Load the model `value` names, unless it is loaded already; the current one stays if it fails."""
    name = checkpoint_name(value, manager, settings)
    if name == manager.info.name:
        return
    try:
        models.check_allowed(settings, name)
        manager.load(name)
    except StudioError as exc:
        raise FieldError("sd_model_checkpoint", value, str(exc)) from exc


def lora_list(manager) -> list[dict]:
    """GET /sdapi/v1/loras: name, alias and path (inside --lora-dir, never the server's own path)."""
    library = manager.loras
    names = library.names()  # the folder walked now
    files = library.files()
    return [{"name": name, "alias": name, "path": str(files[name].relative_to(library.folder)), "metadata": {}}
            for name in names]
