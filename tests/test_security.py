"""What the running app lets a stranger do: read no file outside its outputs and Gradio's cache,
upload nothing over the size limit, load no model but the configured ones in public mode, write
nothing outside --outputs, and answer nobody without --auth's password when it is set.

Every server here runs on 127.0.0.1 (conftest's `serve`), also when its settings say public.
Requests are sent raw (http.client) where a client library would clean the path up first.
"""
from __future__ import annotations

import http.client
import os
import sys
import threading
import urllib.parse
from pathlib import Path

import httpx
import pytest
from gradio import utils as gradio_utils
from gradio_client import Client, handle_file
from PIL import Image

from app import MAX_UPLOAD
from studio.config import DEFAULT_MODEL, REPO_ROOT, Settings
from studio.streams import Step
from tests.conftest import free_port, serve

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TXT2IMG = dict(prompt="a small red circle", negative_prompt="", num_inference_steps=2, guidance_scale=7.5,
               width=64, height=64, scheduler="Default", num_images_per_prompt=1, seed=5, preview="none")


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written: no dot-segment removal, no re-encoding."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def txt2img(client: Client, **changes) -> list:
    return client.predict(**{**TXT2IMG, **changes}, api_name="/txt2img")[1]


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server[0], verbose=False)


@pytest.fixture(scope="module")
def served_png(app_server) -> str:
    """A picture the app made, as the server gave it to the client: a file it may serve."""
    gallery = Client(app_server[0], verbose=False, download_files=False).predict(
        **TXT2IMG, api_name="/txt2img")[1]
    assert sorted(Path(app_server[1].outputs).rglob("*.png")), "the app saved no picture under --outputs"
    return gallery[0]["image"]["path"]


# ---------------------------------------------------------------- /gradio_api/file=

def traversal_paths(outputs: str) -> dict[str, tuple[str, Path | None]]:
    """Each case: the path asked for, and the file it would give away (None for a folder)."""
    repo, model = str(REPO_ROOT), Path(DEFAULT_MODEL)
    passwd, app, index = Path("/etc/passwd"), REPO_ROOT / "app.py", model / "model_index.json"
    quoted = urllib.parse.quote
    return {
        "absolute /etc/passwd": ("/etc/passwd", passwd),
        "dot-dot from the server root": ("../../../../../../etc/passwd", passwd),
        "dot-dot out of --outputs": (f"{outputs}/../../../../../../etc/passwd", passwd),
        "encoded dot-dot %2e%2e": ("%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", passwd),
        "encoded slashes %2F": ("..%2F..%2F..%2F..%2Fetc%2Fpasswd", passwd),
        "encoded absolute %2Fetc": ("%2Fetc%2Fpasswd", passwd),
        "double-encoded %252e": ("%252e%252e%252f%252e%252e%252fetc%252fpasswd", passwd),
        "encoded dot-dot out of --outputs":
            (quoted(outputs) + "%2F%2e%2e%2F%2e%2e%2F%2e%2e%2F%2e%2e%2F%2e%2e%2Fetc%2Fpasswd", passwd),
        "the repo's app.py (absolute)": (f"{repo}/app.py", app),
        "the repo's app.py (relative)": ("app.py", app),
        "the repo's app.py (dot-dot out of --outputs)": (f"{outputs}/../../../../../..{repo}/app.py", app),
        "the repo's git config": (f"{repo}/.git/config", REPO_ROOT / ".git" / "config"),
        "the model folder's index": (f"{model}/model_index.json", index),
        "the model folder's index (relative)": ("models/tiny-shapes/model_index.json", index),
        "the model weights": (f"{model}/unet/diffusion_pytorch_model.safetensors",
                              model / "unet" / "diffusion_pytorch_model.safetensors"),
        "the model folder itself": (str(model), None),
        "the repo folder itself": (repo, None),
    }


CASES = list(traversal_paths("/outputs"))


@pytest.mark.parametrize("case", CASES)
def test_file_route_refuses_paths_outside_the_outputs(app_server, served_png, case):
    url, settings = app_server
    path, target = traversal_paths(str(Path(settings.outputs).resolve()))[case]
    status, body = raw_get(url, "/gradio_api/file=" + path)
    assert status in (400, 403, 404), (status, body[:200])
    if target is not None:
        assert target.read_bytes()[:64] not in body, body[:200]


def test_file_route_serves_a_picture_the_app_saved(app_server, served_png):
    """The control for the refusals above: the same route does serve what it should."""
    status, body = raw_get(app_server[0], "/gradio_api/file=" + urllib.parse.quote(served_png))
    assert status == 200 and body.startswith(b"\x89PNG")


# ------------------------------------------- one visitor's pictures are not another's to fetch

def pictures_of_a_visitor(url: str) -> list[str]:
    """Every kind of picture a visitor is given, as server paths (nothing downloaded): a txt2img
    result, an X/Y grid and its single images, a viewer GIF and contact sheet."""
    client = Client(url, verbose=False, download_files=False)
    gallery = client.predict(**{**TXT2IMG, "seed": 21}, api_name="/txt2img")[1]
    grid, singles, _ = client.predict(**TXT2IMG, x_type="guidance_scale", x_values="1, 7",
                                      api_name="/xy_plot")
    gif, sheet = client.predict(None, "fast", api_name="/viewer_export")
    return [item["image"]["path"] for item in gallery + singles] + [f["path"] for f in (grid, gif, sheet)]


@pytest.fixture(scope="module", params=["saved", "--no-save"])
def visited(request, bundled_manager, tmp_path_factory):
    """A studio (saving to --outputs, or with --no-save as on a Space) after one visitor's runs."""
    settings = Settings(model=DEFAULT_MODEL, port=free_port(), outputs=str(tmp_path_factory.mktemp("visited")),
                        no_save=request.param == "--no-save")
    with serve(bundled_manager, settings) as url:
        yield url, settings, pictures_of_a_visitor(url)


def test_another_visitor_can_fetch_no_saved_file_whatever_name_it_guesses(visited):
    """Saved names are sequential (00012-5.png, 00013-xy-grid.png) and the --no-save folder is
    named by the PID: a new client fetched another session's grid by guessing. Here the guess is
    perfect, every file's real path, and still nothing is served."""
    url, settings, _ = visited
    saved = [p for p in settings.output_root().rglob("*") if p.is_file()]
    assert len(saved) >= 6  # the result, 2 cells, the grid, the GIF and the sheet
    for path in saved:
        status, body = raw_get(url, "/gradio_api/file=" + urllib.parse.quote(str(path)))
        assert status in (403, 404) and path.read_bytes()[:64] not in body, (path, status)


def test_a_visitor_fetches_its_own_pictures_under_names_nobody_can_guess(visited):
    url, settings, given = visited
    cache = Path(gradio_utils.get_upload_folder()).resolve()
    for path in given:
        assert Path(path).resolve().is_relative_to(cache) and not Path(path).resolve().is_relative_to(
            settings.output_root())
        assert len(Path(path).parent.name) == 64  # a seeded SHA-256 of the content
        status, body = raw_get(url, "/gradio_api/file=" + urllib.parse.quote(path))
        assert status == 200 and body[:4] in (b"\x89PNG", b"GIF8"), path
    with Image.open(given[0]) as picture:  # the copy is the saved PNG, parameters and all
        assert "Seed: 21" in picture.info["parameters"]


def test_an_upload_over_the_size_limit_gets_413(app_server):
    limit = gradio_utils._parse_file_size(MAX_UPLOAD)
    upload = httpx.post(app_server[0] + "gradio_api/upload",
                        files={"files": ("big.png", b"\0" * (limit + 1), "image/png")}, timeout=120)
    assert upload.status_code == 413, upload.text[:200]


def test_an_upload_under_the_size_limit_is_accepted(app_server):
    upload = httpx.post(app_server[0] + "gradio_api/upload", files={"files": ("small.png", b"x" * 1000)},
                        timeout=60)
    assert upload.status_code == 200 and upload.json()[0].endswith("small.png")


@pytest.mark.parametrize("api_name", ["img2img", "forward_process"])
def test_the_api_refuses_a_server_side_path_as_an_input_picture(app_server, client, api_name):
    """gradio_client would upload a local file itself; a raw call can name any path on the server."""
    picture = {"path": str(REPO_ROOT / "models" / "tiny-shapes" / "samples.png"),
               "meta": {"_type": "gradio.FileData"}}
    data = {**TXT2IMG, "image": picture, "strength": 0.5} if api_name == "img2img" else \
        {"image": picture, "timestep": 500}
    event, payload = call_raw(app_server[0], api_name, data)
    assert event == "error" and "not uploaded by a user" in payload, payload[:300]
    assert len(txt2img(client)) == 1  # and the server is fine


# ---------------------------------------------------------------- public mode

@pytest.fixture(scope="module")
def public_app(tiny_dirs, tmp_path_factory):
    """A public-mode studio (its settings say host 0.0.0.0; it listens on 127.0.0.1 only) on the
    tiny SD1 model, whose list allows one more model: tiny SD2."""
    from studio.manager import PipelineManager

    outputs = tmp_path_factory.mktemp("public-outputs")
    settings = Settings(model=str(tiny_dirs["sd1"]), host="0.0.0.0", port=free_port(), outputs=str(outputs),
                        allowed_models=(str(tiny_dirs["sd2v"]),))
    assert settings.public
    manager = PipelineManager(settings)
    manager.load()
    with serve(manager, settings) as url:
        yield Client(url, verbose=False), manager, settings


@pytest.fixture
def held_model(public_app, monkeypatch):
    """The public app's runs wait at their first step until `release` is set; `running` is set
    when the first run got there, so the model is busy and later requests queue."""
    manager, running, release = public_app[1], threading.Event(), threading.Event()
    original = manager.stream

    def held(request, cancel=None):
        for event in original(request, cancel):
            running.set()
            assert release.wait(120), "the test never released the model"
            yield event

    monkeypatch.setattr(manager, "stream", held)
    yield running, release
    release.set()


def test_public_mode_keeps_each_session_to_two_runs_in_the_queue(public_app, held_model):
    """One visitor's queued requests kept everyone else behind them, or out with "queue full"."""
    from studio.ui.admission import MAX_RUNS_PER_SESSION

    url, (running, release) = public_app[0].src, held_model
    visitor = Client(url, verbose=False)
    jobs = [visitor.submit(**TXT2IMG, api_name="/txt2img") for _ in range(MAX_RUNS_PER_SESSION)]
    assert running.wait(60)
    with pytest.raises(Exception, match="429 Too Many Requests"):  # the page shows the detail
        visitor.submit(**TXT2IMG, api_name="/txt2img").result(timeout=60)
    other = Client(url, verbose=False).submit(**TXT2IMG, api_name="/txt2img")  # has room
    release.set()
    assert [len(job.result(timeout=120)[1]) for job in [*jobs, other]] == [1, 1, 1]
    assert len(txt2img(visitor)) == 1  # its runs ended, so the visitor may queue again


def test_public_mode_keeps_one_address_to_half_the_queue(public_app, held_model):
    """gradio_client's /call/ route makes a new session for every call, so the address counts too."""
    url, settings, (running, release) = public_app[0].src, public_app[2], held_model
    answers = [httpx.post(f"{url}gradio_api/call/v2/txt2img", json=TXT2IMG, timeout=30)
               for _ in range(settings.max_queue // 2 + 1)]
    assert running.wait(60)
    assert [a.status_code for a in answers] == [200] * (settings.max_queue // 2) + [429]
    assert f"{settings.max_queue // 2} runs from your address" in answers[-1].json()["detail"]
    release.set()
    for answer in answers[:-1]:  # each queued run completes
        with httpx.stream("GET", f"{url}gradio_api/call/txt2img/{answer.json()['event_id']}", timeout=120) as s:
            assert "event: complete" in s.read().decode()


def refused_models(tiny_dirs) -> dict[str, str]:
    return {"absolute path": "/etc/passwd", "path-like name": "../../etc/passwd",
            "a loadable local folder not on the list": str(tiny_dirs["lcm"]),
            "the bundled model's folder": DEFAULT_MODEL,
            "a Hub id": "stabilityai/sdxl-turbo", "a folder of the list, respelled": str(tiny_dirs["sd2v"]) + "/"}


@pytest.mark.parametrize("case", ["absolute path", "path-like name", "a loadable local folder not on the list",
                                  "the bundled model's folder", "a Hub id", "a folder of the list, respelled"])
def test_public_mode_loads_no_model_outside_the_allowed_list(public_app, tiny_dirs, case):
    client, manager, settings = public_app
    before = manager.info.name
    with pytest.raises(Exception, match="not in the list of choices|not offered on this server"):
        client.predict(refused_models(tiny_dirs)[case], api_name="/load_model")
    assert manager.info.name == before
    assert len(txt2img(client)) == 1


def test_public_mode_says_nothing_about_paths(public_app, tiny_dirs):
    """Locally the model box tells a folder that is no model from a missing path; a public server
    must answer every path alike, or it maps the disk for a visitor."""
    from studio.models import check_allowed

    answers = set()
    for name in ("/etc", "/no/such/path", str(tiny_dirs["lcm"]), str(REPO_ROOT)):
        with pytest.raises(Exception) as refused:
            check_allowed(public_app[2], name)
        answers.add(str(refused.value).replace(repr(name), "NAME"))
    assert len(answers) == 1 and "not offered on this server" in answers.pop()


def test_public_mode_loads_a_model_of_the_allowed_list_and_back(public_app, tiny_dirs):
    client, manager, settings = public_app
    try:
        assert "sd2" in client.predict(settings.allowed_models[0], api_name="/load_model")
        assert manager.info.name == settings.allowed_models[0]
        assert len(txt2img(client)) == 1
    finally:
        client.predict(settings.model, api_name="/load_model")
    assert manager.info.name == settings.model


class WriteRecorder:
    """Every path the server in this process opens for writing, creates or copies to while `on`
    (Python audit events, from every thread). The test's gradio_client is left out: it stages
    each download in a folder of its own under the temp dir (and leaves that folder behind)."""

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    EVENTS = ("open", "os.mkdir", "shutil.copyfile", "shutil.copytree", "os.rename", "os.link", "os.symlink")

    def __init__(self):
        self.on, self.paths = False, []
        sys.addaudithook(self.hook)  # hooks cannot be removed: this one only records while `on`

    def hook(self, event: str, args: tuple) -> None:
        if not self.on or event not in self.EVENTS:
            return
        if event == "open":
            path, mode, flags = args
            writes = (mode and any(c in mode for c in "wax+")) or (mode is None and flags & self.WRITE_FLAGS)
            if not writes or not isinstance(path, (str, bytes, os.PathLike)):
                return
        else:
            path = args[0] if event == "os.mkdir" else args[1]
        if not self.by_the_client():
            self.paths.append(Path(os.fsdecode(path)))

    @staticmethod
    def by_the_client() -> bool:
        frame = sys._getframe()
        while frame is not None:
            if frame.f_code.co_filename.endswith(os.path.join("gradio_client", "client.py")):
                return True
            frame = frame.f_back
        return False


RECORDER = WriteRecorder()


@pytest.fixture
def writes_outside_outputs(public_app, tmp_path):
    """The paths the app writes, while the test runs, outside --outputs, Gradio's cache (whose
    pruning test_load checks) and the fast preview's fitted maps. The test's own client downloads to tmp_path."""
    _, _, settings = public_app
    fine = [Path(settings.outputs).resolve(), Path(gradio_utils.get_upload_folder()).resolve(), tmp_path.resolve(),
            Path(settings.cache_dir).resolve()]  # the fitted preview maps: no pictures, never served
    start = tmp_path / "start.png"
    Image.new("RGB", (64, 64), "blue").save(start)
    client = Client(public_app[0].src, verbose=False, download_files=str(tmp_path / "downloads"))

    def outside() -> list[Path]:
        return [p for p in RECORDER.paths if not any(p.resolve().is_relative_to(f) for f in fine)]

    RECORDER.paths.clear()
    RECORDER.on = True
    try:
        yield client, start, outside
    finally:
        RECORDER.on = False


def test_the_write_recorder_sees_writes_from_other_threads(tmp_path):
    """The control for the two tests below: a write in a worker thread is recorded."""
    import threading

    RECORDER.paths.clear()
    RECORDER.on = True
    worker = threading.Thread(target=(tmp_path / "x.txt").write_text, args=("x",))
    worker.start()
    worker.join()
    RECORDER.on = False
    assert tmp_path / "x.txt" in RECORDER.paths


def test_public_mode_generation_writes_nothing_outside_outputs(public_app, writes_outside_outputs):
    _, _, settings = public_app
    client, start, outside = writes_outside_outputs
    saved_before = len(list(Path(settings.outputs).rglob("*.png")))
    txt2img(client, seed=7)
    client.predict(**TXT2IMG, image=handle_file(str(start)), strength=1.0, api_name="/img2img")
    client.predict(image=handle_file(str(start)), timestep=300, api_name="/forward_process")
    client.predict(None, "fast", api_name="/viewer_load")
    client.predict(settings.allowed_models[0], api_name="/load_model")
    client.predict(settings.model, api_name="/load_model")
    assert len(list(Path(settings.outputs).rglob("*.png"))) == saved_before + 2
    assert RECORDER.paths  # the recorder saw the pictures being written
    assert "\n".join(map(str, outside())) == ""


def test_public_mode_viewer_export_writes_nothing_outside_outputs(public_app, writes_outside_outputs):
    client, _, outside = writes_outside_outputs
    txt2img(client, seed=8)
    gif, sheet = client.predict(None, "fast", api_name="/viewer_export")
    assert Path(gif).exists() and Path(sheet).exists()
    assert "\n".join(map(str, outside())) == ""


# ---------------------------------------------------------------- --auth

@pytest.fixture(scope="module")
def auth_app(bundled_manager, tmp_path_factory):
    settings = Settings(model=DEFAULT_MODEL, port=free_port(), auth="ann:s3cret-pass",
                        outputs=str(tmp_path_factory.mktemp("auth-outputs")))
    with serve(bundled_manager, settings) as url:
        yield url, settings


@pytest.mark.parametrize("page", ["", "?view=api"])
def test_auth_sign_in_page_carries_no_api_description(auth_app, page):
    """It embedded every endpoint, its defaults and the model's server path."""
    response = httpx.get(auth_app[0] + page, timeout=30)
    assert response.status_code == 200 and '"auth_required":true' in response.text
    assert "named_endpoints" not in response.text and DEFAULT_MODEL not in response.text


def test_a_wrong_password_waits_in_line_and_a_right_one_does_not():
    import asyncio

    from studio import web

    waits = []

    async def recorded(seconds):
        waits.append(seconds)

    check = web.slow_failures("ann", "s3cret-pass", wait=recorded)

    answers = []

    async def tries():
        answers.append((await check("ann", "s3cret-pass"), list(waits)))
        answers.append((await check("ann", "guess"), await check("bob", "s3cret-pass")))

    # one event loop, as in the server, in a thread of its own (the browser tests' loop runs here)
    worker = threading.Thread(target=asyncio.run, args=(tries(),))
    worker.start()
    worker.join()
    assert answers == [(True, []), (False, False)]  # the right one did not wait
    assert waits == [1.0, 1.0]


def test_auth_refuses_a_client_without_credentials(auth_app):
    with pytest.raises(Exception, match="credentials|login|Login"):
        Client(auth_app[0], verbose=False)


def test_auth_refuses_a_client_with_a_wrong_password(auth_app):
    with pytest.raises(Exception):
        Client(auth_app[0], verbose=False, auth=("ann", "wrong"))


@pytest.mark.parametrize("body", ['{"data": [], "fn_index": 999, "session_hash": "s"}', "NaN"])
def test_auth_says_nothing_of_the_apps_events_before_sign_in(auth_app, body):
    """The JSON checks name the app's events ("its events are 0 to 48"): only after the gate."""
    response = httpx.post(auth_app[0] + "gradio_api/queue/join", content=body,
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 401 and "events" not in response.text, response.text


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "config"), ("GET", "gradio_api/info"), ("POST", "gradio_api/call/txt2img"),
    ("POST", "gradio_api/upload"), ("POST", "gradio_api/queue/join"),
    # answered without a session until the sign-in gate (studio/web.py SignInGate):
    ("GET", "gradio_api/runs"), ("POST", "gradio_api/cancel"), ("GET", "gradio_api/heartbeat/x"),
    ("GET", "gradio_api/queue/data?session_hash=x")])
def test_auth_refuses_raw_api_calls_without_a_session(auth_app, method, path):
    payload = {"files": {"files": ("a.png", b"x")}} if path.endswith("upload") else \
        {"json": {"data": list(TXT2IMG.values()), "fn_index": 0, "session_hash": "x"}}
    response = httpx.request(method, auth_app[0] + path, timeout=30, **(payload if method == "POST" else {}))
    assert response.status_code == 401, (response.status_code, response.text[:200])


def test_auth_shows_the_sign_in_page_not_the_ui(auth_app):
    page = httpx.get(auth_app[0], timeout=30)
    assert "txt2img-generate" not in page.text  # the UI's config is not in the page
    config = httpx.get(auth_app[0] + "config", timeout=30)
    assert config.status_code == 401 and "sign in" in config.text


def test_auth_lets_a_signed_in_client_generate_and_keeps_its_pictures_private(auth_app):
    url, settings = auth_app
    client = Client(url, verbose=False, auth=("ann", "s3cret-pass"), download_files=False)
    given = txt2img(client)[0]["image"]["path"]
    saved = sorted(Path(settings.outputs).rglob("*.png"))[-1]
    status, _ = raw_get(url, "/gradio_api/file=" + urllib.parse.quote(given))
    assert status == 401
    with httpx.Client(base_url=url, timeout=30) as session:
        assert session.post("login", data={"username": "ann", "password": "s3cret-pass"}).status_code == 200
        assert session.get("config").status_code == 200
        assert session.get("gradio_api/file=" + given).content == saved.read_bytes()
        assert session.get("gradio_api/file=" + str(saved)).status_code in (403, 404)  # never the saved name


# ------------------------------------------------ pictures are checked from their header, once

def header_only_png(width: int, height: int, text: str | None = None) -> bytes:
    """A PNG that claims `width` x `height` pixels but carries almost no pixel data: decoding it
    fails, so a server that answers with the size (or the text) never decoded it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    words = chunk(b"tEXt", b"parameters\0" + text.encode()) if text else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + words
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def inline(data: bytes) -> dict:
    """A FileData holding the file inline as a data: URL: it skips the upload route and its limit."""
    import base64

    return {"path": None, "url": "data:image/png;base64," + base64.b64encode(data).decode(),
            "meta": {"_type": "gradio.FileData"}}


def call_raw(url: str, api: str, data: dict) -> tuple[str, str]:
    """POST the named inputs to /gradio_api/call/v2/<api>, then read its event stream: (last event
    name, its data)."""
    event_id = httpx.post(f"{url}gradio_api/call/v2/{api}", json=data, timeout=60).json()["event_id"]
    event, payload = "", ""
    with httpx.stream("GET", f"{url}gradio_api/call/{api}/{event_id}", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                payload = line.split(":", 1)[1].strip()
            if event in ("complete", "error") and payload:
                break
    return event, payload


BOMB_SIDE = 13376  # the probe's 680 KB PNG of zeros: 179 million pixels, 4 GB once decoded


def test_png_info_reads_the_text_of_a_huge_picture_without_decoding_it(app_server):
    bomb = header_only_png(BOMB_SIDE, BOMB_SIDE, "a cat\nSteps: 20, Seed: 1, Size: 512x512")
    event, payload = call_raw(app_server[0], "png_info", {"picture": inline(bomb)})
    assert event == "complete" and "Steps: 20, Seed: 1" in payload, (event, payload[:300])


@pytest.mark.parametrize("route", ["inline data: URL", "upload"])
def test_an_input_picture_with_too_many_pixels_is_refused_from_its_header(app_server, route, tmp_path):
    """Decoding came first (4 GB for this one, refused after 65 s); now the header decides."""
    bomb = header_only_png(BOMB_SIDE, BOMB_SIDE)
    if route == "upload":
        path = httpx.post(app_server[0] + "gradio_api/upload", files={"files": ("bomb.png", bomb)},
                          timeout=60).json()[0]
        picture = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "bomb.png"}
    else:
        picture = inline(bomb)
    event, payload = call_raw(app_server[0], "img2img", {**TXT2IMG, "image": picture, "strength": 0.5})
    assert event == "error" and f"is {BOMB_SIDE}x{BOMB_SIDE} pixels" in payload, (event, payload[:300])
    assert len(txt2img(Client(app_server[0], verbose=False))) == 1  # and the server goes on


# ------------------------------------------------------------------ request size and Host

def test_a_body_declared_over_the_limit_is_refused_before_it_is_read(app_server):
    from app import MAX_BODY

    parts = urllib.parse.urlsplit(app_server[0])
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:  # the headers only: a server that waited for the 100 MB would time out here
        connection.putrequest("POST", "/gradio_api/call/png_info")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(100 * 1024 * 1024))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413 and f"{MAX_BODY:,}" in response.read().decode()
    finally:
        connection.close()


def test_a_streamed_body_over_the_limit_is_refused(app_server):
    from app import MAX_BODY

    def chunks():
        for _ in range(MAX_BODY // (1 << 20) + 2):
            yield b"[" + b" " * ((1 << 20) - 1)

    response = httpx.post(app_server[0] + "gradio_api/call/png_info", content=chunks(),
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413


# Gradio answered these with a bare HTTP 500 ("Internal Server Error"): its JSON response for the
# NaN could not be written, and it looked the event index up unchecked.
@pytest.mark.parametrize(("route", "body", "named"), [
    ("queue/join", "NaN", "NaN"),
    ("call/txt2img", '{"data": [Infinity]}', "Infinity"),
    ("queue/join", '{"data": [], "fn_index": -1, "session_hash": "s"}', "fn_index=-1"),
    ("run/predict", '{"data": [], "fn_index": 999, "session_hash": "s"}', "fn_index=999"),
    ("queue/join", '{"data": [], "fn_index": true, "session_hash": "s"}', "fn_index=true"),
    ("queue/join", '{"data": [', "not JSON"),
])
def test_a_malformed_json_request_gets_a_named_refusal_not_a_500(app_server, route, body, named):
    response = httpx.post(app_server[0] + "gradio_api/" + route, content=body,
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 422 and named in response.text, response.text
    assert len(txt2img(Client(app_server[0], verbose=False))) == 1  # and the server goes on


def test_no_rest_route_runs_an_event_beside_the_queue(app_server, recorded_runs):
    """Gradio opens /run/<api_name> off Spaces: a run there skipped the queue and its limit of one
    generation at a time."""
    response = httpx.post(app_server[0] + "gradio_api/run/txt2img", json={"data": list(TXT2IMG.values())},
                          timeout=30)
    assert response.status_code == 404 and "join the queue" in response.json()["detail"]
    assert not recorded_runs


@pytest.mark.parametrize(("host", "status"), [("evil.example", 400), ("evil.example:7860", 400),
                                               ("127.0.0.1", 200), ("localhost:7860", 200), ("[::1]:7860", 200)])
def test_a_local_server_answers_only_to_its_own_host_names(app_server, host, status):
    """DNS rebinding: a page at evil.example whose name resolves to 127.0.0.1 reached the studio."""
    parts = urllib.parse.urlsplit(app_server[0])
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("GET", "/config", skip_host=True)
        connection.putheader("Host", host)
        connection.endheaders()
        assert connection.getresponse().status == status
    finally:
        connection.close()


# ------------------------------------------------------- a client that goes away stops its run

GONE_CLIENT = """
import sys
from gradio_client import Client
client = Client(sys.argv[1], verbose=False)
job = client.submit(**eval(sys.argv[2]), api_name="/txt2img")
for update in job:  # the first status line: the run is going; then this process is killed
    print("running", flush=True)
    break
import time
time.sleep(600)
"""


@pytest.fixture
def recorded_runs(bundled_manager, monkeypatch):
    """The steps of the runs the app streams from the manager, and whether each run ended."""
    runs = []
    original = bundled_manager.stream

    def recording(request, cancel=None):
        run = {"steps": [], "started": threading.Event(), "ended": threading.Event()}
        runs.append(run)
        try:
            for event in original(request, cancel):
                if isinstance(event, Step):
                    run["steps"].append(event.number)
                    run["started"].set()
                yield event
        finally:
            run["ended"].set()

    monkeypatch.setattr(bundled_manager, "stream", recording)
    return runs


@pytest.mark.parametrize("client_kind", ["raw HTTP/SSE", "gradio_client"])
def test_a_client_that_goes_away_stops_its_run_within_a_step(app_server, recorded_runs, client_kind):
    """A 150-step job whose client was killed ran on (31+ minutes at 2048x2048) and a small
    request behind it waited 900 s."""
    import subprocess

    values = {**TXT2IMG, "num_inference_steps": 150, "preview": "none"}
    if client_kind == "raw HTTP/SSE":
        event_id = httpx.post(f"{app_server[0]}gradio_api/call/v2/txt2img", json=values,
                              timeout=60).json()["event_id"]
        with httpx.stream("GET", f"{app_server[0]}gradio_api/call/txt2img/{event_id}", timeout=60) as stream:
            for line in stream.iter_lines():
                if line.startswith("event: generating"):
                    break  # the run is going: drop the connection
    else:
        process = subprocess.Popen([sys.executable, "-c", GONE_CLIENT, app_server[0], repr(values)],
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout.readline().strip() == "running"
        finally:
            process.kill()
            process.wait()
    assert recorded_runs and recorded_runs[-1]["started"].wait(60)  # recorded before any status line
    at_drop = recorded_runs[-1]["steps"][-1]
    assert recorded_runs[-1]["ended"].wait(120), "the abandoned run did not stop"
    steps = recorded_runs[-1]["steps"]
    assert steps[-1] < 150 and steps[-1] - at_drop <= 3, (at_drop, steps[-1])
    assert len(txt2img(Client(app_server[0], verbose=False))) == 1  # the next request is served
