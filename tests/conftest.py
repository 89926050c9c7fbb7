"""Shared fixtures: offline settings, tiny saved pipelines per family, managers, the bundled model.

Everything runs offline: HF_HUB_OFFLINE is set before diffusers is imported, and every model is
either a tiny random pipeline from tests/tiny_pipelines.py saved to a temporary diffusers folder,
or the bundled models/tiny-shapes model.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.pop("SPACE_ID", None)
# Fitted preview maps go to a cache of this test run, not the user's: no run depends on an earlier one.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="studio-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from studio.config import DEFAULT_MODEL, Settings  # noqa: E402
from tests import tiny_pipelines as tiny  # noqa: E402

BUILDERS = {"sd1": tiny.sd1_pipeline, "sd2v": tiny.sd2_v_pipeline, "sdxl": tiny.sdxl_pipeline,
            "lcm": tiny.lcm_pipeline, "unet2d": tiny.unet2d_pipeline, "sd1-inpaint": tiny.sd1_inpaint_pipeline}
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on 2 busy cores: one torch thread runs them many times faster than two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Each family's tiny pipeline saved as a diffusers folder (safetensors), built on first use."""
    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    class Lazy(dict):
        def __missing__(self, family: str) -> Path:
            built[family] = tiny.save(BUILDERS[family](), root / family)
            self[family] = built[family]
            return built[family]

    return Lazy()


@pytest.fixture(scope="session")
def sd1_dir(tiny_dirs) -> Path:
    return tiny_dirs["sd1"]


@pytest.fixture
def make_manager(tmp_path):
    """make_manager(model_dir, **settings) -> a loaded PipelineManager on the CPU."""
    from studio.manager import PipelineManager

    def make(model, **overrides) -> PipelineManager:
        settings = Settings(model=str(model), outputs=str(tmp_path / "outputs"), **overrides)
        manager = PipelineManager(settings)
        manager.load()
        return manager

    return make


@pytest.fixture(scope="session")
def bundled_manager():
    """The bundled tiny-shapes model, loaded once for the whole session."""
    from studio.manager import PipelineManager

    manager = PipelineManager(Settings(model=DEFAULT_MODEL))
    manager.load()
    return manager


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests keep what a person may want to look at (screenshots, images)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def app_server(bundled_manager, tmp_path_factory):
    """The studio's Gradio app on 127.0.0.1 (a free port), serving the bundled model.

    Yields (url, settings); the server stops at the end of the session.
    """
    settings = Settings(model=DEFAULT_MODEL, port=free_port(),
                        outputs=str(tmp_path_factory.mktemp("app-outputs")))
    with serve(bundled_manager, settings) as url:
        yield url, settings


@pytest.fixture(scope="session")
def api_server(tmp_path_factory):
    """The studio with --api (AUTOMATIC1111's /sdapi/v1) on 127.0.0.1, on a manager of its own
    (the bundled model; its tests switch models). Yields (url, settings, manager, api)."""
    from studio.manager import PipelineManager

    settings = Settings(model=DEFAULT_MODEL, port=free_port(), api=True,
                        outputs=str(tmp_path_factory.mktemp("api-outputs")))
    manager = PipelineManager(settings)
    manager.load()
    with serve_with_api(manager, settings) as (url, api):
        yield url, settings, manager, api


@contextlib.contextmanager
def serve(manager, settings: Settings):
    """The studio's app for `manager` and `settings`, launched as app.py launches it, but always
    on 127.0.0.1 (settings may still say public, e.g. host 0.0.0.0). Yields the URL."""
    with serve_with_api(manager, settings) as (url, _):
        yield url


@contextlib.contextmanager
def serve_with_api(manager, settings: Settings):
    """As `serve`; yields (URL, the studio.a1111.A1111Api, or None without settings.api)."""
    from app import build, launch_options, prepare

    demo, api = build(manager, settings)
    demo = prepare(demo, settings)
    options = {**launch_options(settings, api), "server_name": "127.0.0.1"}
    demo.launch(prevent_thread_lock=True, quiet=True, **options)
    try:
        yield f"http://127.0.0.1:{settings.port}/", api
    finally:
        demo.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
