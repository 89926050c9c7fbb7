"""Diffusion Studio's entry point: `python app.py [flags]` builds the UI and launches it.

Locally it serves http://127.0.0.1:7860 with the bundled model; on a Hugging Face Space
(SPACE_ID set) it binds 0.0.0.0 and saves nothing to disk; `--share` also asks Gradio for a public
link, which needs the internet: without it the studio says why and keeps serving locally.
`python app.py --help` lists every flag; each has a STUDIO_* environment twin.
"""
from __future__ import annotations

import sys

from studio.config import Settings, parse_settings
from studio.errors import StudioError

MAX_UPLOAD = "25mb"


def launch_options(settings: Settings) -> dict:
    """What `demo.launch` gets: where to serve, who may sign in, and the server's limits."""
    from studio.ui import CSS, TITLE

    options = {"server_name": settings.host, "server_port": settings.port, "css": CSS,
               "allowed_paths": [str(settings.output_root())],
               "auth": settings.auth_pair(), "max_file_size": MAX_UPLOAD, "show_error": True,
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


def prepare(demo, settings: Settings):
    """Server options that live on the Blocks rather than in launch(); call before launching."""
    demo.delete_cache = cache_policy(settings)
    return demo


def warn_public(settings: Settings) -> None:
    if settings.share and not settings.auth:
        print("WARNING: --share without --auth: anyone with the link can use this studio and its "
              "compute. Add --auth user:password.", file=sys.stderr, flush=True)


def launch(demo, settings: Settings, block: bool = True):
    """Start the server; with --share, a failed tunnel leaves the local server running."""
    warn_public(settings)
    prepare(demo, settings)
    options = launch_options(settings)
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


def main(argv: list[str] | None = None) -> int:
    from studio.manager import PipelineManager
    from studio.ui import build_demo

    try:
        settings = parse_settings(argv)
        manager = PipelineManager(settings)
        manager.load()
    except (StudioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    launch(build_demo(manager, settings), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
