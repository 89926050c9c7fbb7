"""Diffusion Studio's entry point: `python app.py [flags]` builds the UI and launches it.

Locally it serves http://127.0.0.1:7860 with the bundled model; on a Hugging Face Space
(SPACE_ID set) it binds 0.0.0.0 and saves nothing to disk; `--share` also asks Gradio for a public
link, which needs the internet: without it the studio says why and keeps serving locally.
`python app.py --help` lists every flag; each has a STUDIO_* environment twin.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from studio.config import Settings, parse_settings
from studio.errors import StudioError

MAX_UPLOAD = "25mb"
# Any request body: an upload at MAX_UPLOAD, or such a picture inline as base64 (4/3 larger).
MAX_BODY = 36 * 1024 * 1024
API_PREFIXES = ("/sdapi/",)  # the A1111 API's routes, which need HTTP Basic auth, not a UI session


def allowed_hosts(settings: Settings) -> tuple[str, ...] | None:
    """The Host names the server answers to: in local mode only its own address (and
    --allowed-hosts), which shuts out DNS rebinding; a public server (a Space, --share, 0.0.0.0)
    has a public name it cannot know, so any, unless --allowed-hosts names them."""
    from studio.web import LOOPBACK_HOSTS

    own = (*LOOPBACK_HOSTS, settings.host, *settings.allowed_hosts)
    return own if settings.allowed_hosts or not settings.public else None


def build(manager, settings: Settings):
    """The UI and, with --api, the A1111 API (studio.a1111) over one manager and one output
    writer: (demo, api or None). Pass the api to launch_options."""
    from studio.a1111 import A1111Api
    from studio.outputs import OutputWriter
    from studio.ui import build_demo

    writer = OutputWriter(settings.output_root(), temporary=settings.no_save)
    api = A1111Api(manager, settings, writer) if settings.api else None
    api_runs = api.runs if api is not None and api.runs_shown_in_ui else None
    return build_demo(manager, settings, writer=writer, api_runs=api_runs), api


def launch_options(settings: Settings, api=None) -> dict:
    """What `demo.launch` gets: where to serve, who may sign in, and the server's limits; with
    `api` (a studio.a1111.A1111Api) its /sdapi/v1 routes, which check their own HTTP Basic auth."""
    from starlette.middleware import Middleware

    from studio.ui import CSS, TITLE, admission
    from studio.web import Guard, JsonGuard, SignInGate, slow_failures

    # No allowed_paths: the --outputs folder is never served as it is (its names can be guessed);
    # the UI hands out copies in Gradio's cache under unguessable names (studio.ui.cache.served).
    options = {"server_name": settings.host, "server_port": settings.port, "css": CSS,
               "auth": slow_failures(*settings.auth_pair()) if settings.auth else None,
               "max_file_size": MAX_UPLOAD, "show_error": True,
               # outermost first: size and Host, then sign-in, then the JSON checks (which name events)
               "app_kwargs": {"middleware": [Middleware(Guard, max_body=MAX_BODY, hosts=allowed_hosts(settings))]
                              + ([Middleware(SignInGate, own_auth=API_PREFIXES if api else ())] if settings.auth else [])
                              + [Middleware(JsonGuard, check=admission.checks(settings))],
                              "routes": api.routes() if api is not None else []},
               # each session's history (trajectories included) stays in memory: keep it bounded
               "state_session_capacity": settings.max_sessions}
    if settings.auth_pair():
        options["auth_message"] = f"{TITLE}: sign in with the --auth user and password."
    return options


def cache_policy(settings: Settings) -> tuple[int, int]:
    """Gradio's delete_cache (every `frequency` s, delete cached files older than `age` s): without
    it, every upload and every served picture stays in Gradio's cache folder until a restart."""
    age = settings.cache_max_age
    return max(1, min(age // 2, 600)), age


def prepare(demo, settings: Settings, cache_folder: Path | None = None):
    """Server options that live on the Blocks rather than in launch(); call before launching.

    Gradio's delete_cache only prunes the files it tracks in its components' temp_files; with
    Gradio 6.31 the pictures this app served were not among them (0 of them, measured; they go
    through per-session copies of the components, we believe), so they stayed until a restart.
    So the studio also prunes, by age, the folders that are its alone: its private Gradio cache
    (`cache_folder`, see private_cache_folder) and the --no-save folder."""
    demo.delete_cache = cache_policy(settings)
    folders = [cache_folder] if cache_folder is not None else []
    if settings.no_save:
        folders.append(settings.output_root())
    if folders:
        frequency, age = cache_policy(settings)
        threading.Thread(target=prune_forever, args=(folders, frequency, age), name="studio-prune",
                         daemon=True).start()
    return demo


def private_cache_folder() -> Path:
    """A Gradio cache folder for this process alone, inside the one Gradio would use (the
    GRADIO_TEMP_DIR or the system temp folder): the studio may prune all of it, and removes it at
    exit. Call before the UI is built: Gradio's components read the folder when created."""
    parent = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    folder = parent / f"diffusion-studio-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    atexit.register(shutil.rmtree, folder, True)
    return folder


def prune(folder: Path, age: float) -> int:
    """Delete the files under `folder` created more than `age` seconds ago, then empty folders."""
    if not folder.exists():
        return 0
    now, removed = time.time(), 0
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        try:
            if path.is_file() and now - path.stat().st_ctime > age:
                path.unlink()
                removed += 1
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        except OSError:  # taken by a request right now, or already gone: next round
            continue
    return removed


def prune_forever(folders: list[Path], frequency: float, age: float) -> None:
    while True:
        time.sleep(frequency)
        for folder in folders:
            prune(folder, age)


def warn_public(settings: Settings) -> None:
    if settings.share and not settings.auth:
        print("WARNING: --share without --auth: anyone with the link can use this studio and its "
              "compute. Add --auth user:password.", file=sys.stderr, flush=True)
    if settings.api and settings.public and not settings.auth:
        print("WARNING: --api on a public server without --auth: anyone can generate through /sdapi/v1. "
              "Add --auth user:password (the API then needs HTTP Basic auth).", file=sys.stderr, flush=True)


def launch(demo, settings: Settings, block: bool = True, cache_folder: Path | None = None, api=None):
    """Start the server; with --share, a failed tunnel leaves the local server running."""
    warn_public(settings)
    prepare(demo, settings, cache_folder)
    options = launch_options(settings, api)
    if not settings.share:
        return demo.launch(prevent_thread_lock=not block, **options)
    try:
        result = demo.launch(share=True, prevent_thread_lock=True, **options)
    except Exception as exc:  # Gradio raises several kinds when the tunnel cannot be set up
        result = None
        print(f"The public --share link could not be created ({exc}). It needs the internet; "
              f"the studio keeps serving locally on http://{settings.host}:{settings.port}.",
              file=sys.stderr, flush=True)
        if not getattr(demo, "server", None):
            result = demo.launch(prevent_thread_lock=True, **options)
    if demo.share_url is None:
        print("No public link: Gradio could not open a share tunnel (this needs the internet). "
              f"The studio is running locally at {demo.local_url}", file=sys.stderr, flush=True)
    if block:
        demo.block_thread()
    return result


def make_manager(settings: Settings):
    """The in-process manager, or with --ray the front end of Ray Serve replicas (studio.scale)."""
    if settings.ray is None:
        from studio.manager import PipelineManager

        return PipelineManager(settings)
    import signal

    from studio.scale.backend import RayManager

    # a terminated studio takes its local Ray instance with it (ray.init's exit hook runs on sys.exit)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return RayManager(settings, settings.replicas, settings.replica_threads,
                      address=None if settings.ray == "local" else settings.ray)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse_settings(argv)
        manager = make_manager(settings)
        manager.load()
    except (StudioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cache_folder = private_cache_folder()
    demo, api = build(manager, settings)
    launch(demo, settings, cache_folder=cache_folder, api=api)
    return 0


if __name__ == "__main__":
    sys.exit(main())
