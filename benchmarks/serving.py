"""Sections of the benchmark that go through a server or a new process: the gradio_client round
trip, throughput with concurrent clients, cold starts of the CLI and the app, and the memory
figures (measured in fresh processes by benchmarks/memory_probe.py).

The in-process app is the studio's own `build_demo` launched on 127.0.0.1 at a free port, as the
tests do. This module does not time the pipeline alone (see benchmarks/generation.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from PIL import Image

from benchmarks import plan as p
from benchmarks.generation import studio_request, studio_run
from benchmarks.measure import Stats, in_new_thread, interleave, percentile, ratio
from benchmarks.report import Figure
from studio.config import REPO_ROOT, Settings

SERVER_TIMEOUT = 300   # seconds a started app may take to serve its first image


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(manager, outputs: str):
    """The studio's Gradio app in this process on 127.0.0.1, with the A1111 API (--api); yields its URL."""
    from app import build

    settings = Settings(model=manager.settings.model, device=manager.settings.device,
                        tiny_vae=manager.settings.tiny_vae, port=free_port(), outputs=outputs, api=True)
    demo, api = build(manager, settings)
    demo.launch(server_name="127.0.0.1", server_port=settings.port, prevent_thread_lock=True, quiet=True,
                app_kwargs={"routes": api.routes()})
    try:
        yield f"http://127.0.0.1:{settings.port}/"
    finally:
        demo.close()


def txt2img_via_client(client, size: int, steps: int = p.STEPS) -> Image.Image:
    """One /txt2img call, preview off, down to the decoded picture."""
    _, gallery, _ = client.predict(**p.gradio_arguments(size, steps), api_name="/txt2img")
    image = Image.open(gallery[0]["image"])
    image.load()
    return image


# ----- 4: round trip --------------------------------------------------------------------------
def client_run(client, size: int, steps: int):
    """A run that times one /txt2img round trip to the decoded picture."""
    def run() -> dict:
        started = time.perf_counter()
        txt2img_via_client(client, size, steps)
        return {"seconds": time.perf_counter() - started}
    return run


def round_trip(manager, url: str, plan: p.Plan) -> list[Figure]:
    """Section 4: gradio_client -> /txt2img -> image, against the direct manager call. Also the
    direct call in a fresh thread (as the app runs it), and all of it at 2 steps as well, which
    splits the app's overhead into a part per request and a part per step."""
    from gradio_client import Client

    client, size = Client(url, verbose=False), manager.loaded.native_size
    runs = {}
    for steps in (p.STEPS, p.FEW_STEPS):
        direct = studio_run(manager, studio_request(manager, steps=steps))
        runs |= {("client", steps): client_run(client, size, steps), ("direct", steps): direct,
                 ("thread", steps): in_new_thread(direct)}
    stats = {key: Stats.of(values["seconds"]) for key, values in interleave(runs, plan.repeats).items()}
    return round_trip_figures(stats)


def round_trip_figures(stats: dict) -> list[Figure]:
    """Section 4's figures; the app's overhead is the round trip minus the threaded direct call."""
    many, few = (stats[("client", n)].median - stats[("thread", n)].median for n in (p.STEPS, p.FEW_STEPS))
    per_step = (many - few) / (p.STEPS - p.FEW_STEPS)
    client, direct, thread = (stats[(kind, p.STEPS)] for kind in ("client", "direct", "thread"))
    return [Figure("4", "gradio_client /txt2img round trip", "s", client, note="preview none, PNG saved"),
            Figure("4", "direct manager.generate()", "s", direct),
            Figure("4", "round trip / direct", "x", ratio(client, direct), at_most=p.GOAL_ROUND_TRIP),
            Figure("4", "direct generate() in a fresh thread (as stream() runs it)", "s", thread),
            Figure("4", "fresh thread / main thread", "x", ratio(thread, direct),
                   note="a second OpenMP team beside the main thread's: libgomp throttles its spin-waits"),
            Figure("4", "app overhead per denoising step", "s", Stats.of([per_step]),
                   note=f"round trip minus threaded call, at {p.STEPS} and {p.FEW_STEPS} steps"),
            Figure("4", "app overhead per request, besides the steps", "s",
                   Stats.of([few - per_step * p.FEW_STEPS]))]


# ----- 13: the A1111 API ---------------------------------------------------------------------
def sdapi_run(url: str, size: int, steps: int = p.STEPS):
    """A run that times one POST /sdapi/v1/txt2img to the decoded picture."""
    import base64
    import io

    import requests

    body = {"prompt": p.PROMPT, "negative_prompt": p.NEGATIVE_PROMPT, "steps": steps, "cfg_scale": p.GUIDANCE,
            "width": size, "height": size, "seed": p.SEED}

    def run() -> dict:
        started = time.perf_counter()
        answer = requests.post(url + "sdapi/v1/txt2img", json=body, timeout=SERVER_TIMEOUT)
        answer.raise_for_status()
        Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))).load()
        return {"seconds": time.perf_counter() - started}
    return run


def a1111_round_trip(manager, url: str, plan: p.Plan) -> list[Figure]:
    """Section 13: the same request through /sdapi/v1/txt2img and through gradio_client's /txt2img,
    interleaved in one run."""
    from gradio_client import Client

    client, size = Client(url, verbose=False), manager.loaded.native_size
    runs = {"sdapi": sdapi_run(url, size), "gradio": client_run(client, size, p.STEPS)}
    stats = {key: Stats.of(values["seconds"]) for key, values in interleave(runs, plan.repeats).items()}
    return [Figure("13", "POST /sdapi/v1/txt2img round trip", "s", stats["sdapi"],
                   note="live preview fast (for /progress), PNG saved, base64 in JSON"),
            Figure("13", "gradio_client /txt2img round trip, same request", "s", stats["gradio"], note="preview none"),
            Figure("13", "/sdapi/v1 / Gradio API", "x", ratio(stats["sdapi"], stats["gradio"]))]


# ----- 7: throughput --------------------------------------------------------------------------
def client_load(url: str, clients: int, requests: int, size: int) -> tuple[float, list[float]]:
    """`clients` threads, each with its own Client, all at once, each doing `requests` calls one
    after another. Returns the wall time from the common start and every request's latency."""
    from gradio_client import Client

    connected = [Client(url, verbose=False) for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    latencies: list[float] = []   # list.append is atomic: no lock needed
    errors: list[BaseException] = []

    def work(client) -> None:
        start.wait()
        try:
            for _ in range(requests):
                began = time.perf_counter()
                txt2img_via_client(client, size)
                latencies.append(time.perf_counter() - began)
        except Exception as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in connected]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} of {clients} clients failed") from errors[0]
    return wall, latencies


def throughput(manager, url: str, plan: p.Plan) -> list[Figure]:
    """Section 7: images per second and latency p50/p95 with 1, 2, 4, 8 concurrent clients."""
    figures = []
    for clients in plan.clients:
        wall, latencies = client_load(url, clients, plan.requests_per_client, manager.loaded.native_size)
        count = len(latencies)
        figures += [
            Figure("7", f"{clients} client(s): throughput", "img/s", Stats.of([count / wall]),
                   note=f"{count} requests in {wall:.1f} s; the server runs one generation at a time"),
            Figure("7", f"{clients} client(s): latency p50", "s", Stats.of(latencies)),
            Figure("7", f"{clients} client(s): latency p95", "s", Stats.of([percentile(latencies, 0.95)])),
        ]
    return figures


# ----- 5: cold start --------------------------------------------------------------------------
def environment() -> dict:
    """The environment for child processes: this one, without Gradio analytics."""
    return {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}


def model_flags(manager) -> list[str]:
    """--model and --device as the benchmark was given them, for the CLI, the app and the probe."""
    return ["--model", manager.settings.model, "--device", manager.settings.device]


def timed_process(command: list[str]):
    """A run that times a subprocess from start to exit; a failure raises with its stderr."""
    def run() -> dict:
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO_ROOT, env=environment(), capture_output=True, text=True,
                              timeout=SERVER_TIMEOUT)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        return {"seconds": seconds}
    return run


def wait_until_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    """Poll the app's page until it answers (or the process dies, or time runs out)."""
    deadline = time.monotonic() + SERVER_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"app.py did not serve {url} within {SERVER_TIMEOUT} s")


def app_to_first_image(manager, outputs: str):
    """A run that starts `python app.py --port P` and times it until /txt2img gives an image."""
    from gradio_client import Client

    def run() -> dict:
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        command = [sys.executable, "app.py", "--port", str(port), "--outputs", outputs, *model_flags(manager)]
        log = Path(outputs) / "app-stderr.log"  # a file, not a pipe nobody reads, which could fill
        started = time.perf_counter()
        with log.open("w") as stderr:
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment(), stdout=subprocess.DEVNULL,
                                       stderr=stderr)
        try:
            wait_until_serving(url, process, log)
            serving = time.perf_counter() - started
            txt2img_via_client(Client(url, verbose=False), manager.loaded.native_size)
            return {"seconds": time.perf_counter() - started, "serving": serving}
        finally:
            process.terminate()
            process.wait(30)
    return run


def import_baseline():
    """A run that times `python -c "import torch, diffusers"`, what every start pays at least."""
    return timed_process([sys.executable, "-c", "import torch, diffusers"])


def cold_start_cli(manager, plan: p.Plan, scratch: str) -> list[Figure]:
    """Section 5: `python -m studio generate ... --out x.png` from nothing, against the imports."""
    cli = [sys.executable, "-m", "studio", "generate", "--prompt", p.PROMPT, "--seed", str(p.SEED),
           "--steps", str(p.STEPS), "--out", str(Path(scratch) / "cold.png"), *model_flags(manager)]
    samples = interleave({"import": import_baseline(), "cli": timed_process(cli)}, plan.cold_repeats,
                         warmup=plan.cold_warmup)
    imports, cli_s = Stats.of(samples["import"]["seconds"]), Stats.of(samples["cli"]["seconds"])
    return [Figure("5", "python -c 'import torch, diffusers'", "s", imports),
            Figure("5", "CLI: python -m studio generate (20 steps) to PNG", "s", cli_s),
            Figure("5", "CLI / import", "x", ratio(cli_s, imports))]


def cold_start_app(manager, plan: p.Plan, scratch: str) -> list[Figure]:
    """Section 5: `python app.py --port P` until its first /txt2img image, against the imports."""
    samples = interleave({"import": import_baseline(), "app": app_to_first_image(manager, scratch)},
                         plan.cold_repeats, warmup=plan.cold_warmup)
    imports, app_s = Stats.of(samples["import"]["seconds"]), Stats.of(samples["app"]["seconds"])
    return [Figure("5", "python -c 'import torch, diffusers' (beside the app)", "s", imports),
            Figure("5", "app: python app.py until the page answers", "s", Stats.of(samples["app"]["serving"])),
            Figure("5", "app: python app.py until the first /txt2img image", "s", app_s),
            Figure("5", "app first image / import", "x", ratio(app_s, imports))]


# ----- 6: memory, in fresh processes ----------------------------------------------------------
def memory_probe(manager) -> dict:
    """One run of benchmarks/memory_probe.py in a new process; its JSON report."""
    command = [sys.executable, "-m", "benchmarks.memory_probe", *model_flags(manager)]
    done = subprocess.run(command, cwd=REPO_ROOT, env=environment(), capture_output=True, text=True,
                          timeout=SERVER_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(manager, plan: p.Plan) -> list[Figure]:
    """Section 6: RSS after load + txt2img against after txt2img + img2img + viewer decodes."""
    reports = [memory_probe(manager) for _ in range(plan.memory_runs)]
    first, everything = (Stats.of([r[k] for r in reports]) for k in ("txt2img_mb", "all_mb"))
    figures = [
        Figure("6", "RSS after load + txt2img", "MiB", first),
        Figure("6", "RSS after txt2img + img2img + viewer decode of every step", "MiB", everything,
               note=f"viewer: {reports[0]['decoded']} full-VAE decodes"),
        Figure("6", "memory: everything / txt2img only", "x", ratio(everything, first), at_most=p.GOAL_MEMORY,
               note="img2img shares the weights (from_pipe); "
                    f"weights shared: {all(r['weights_shared'] for r in reports)}"),
        Figure("6", "peak RSS (VmHWM) of the whole probe", "MiB", Stats.of([r["peak_mb"] for r in reports]))]
    if reports[0].get("cuda_peak_mb") is not None:
        figures.append(Figure("6", "CUDA peak allocated", "MiB", Stats.of([r["cuda_peak_mb"] for r in reports])))
    return figures


def scratch_folder() -> tempfile.TemporaryDirectory:
    """A temporary folder for outputs of the app and the CLI, removed at the end."""
    return tempfile.TemporaryDirectory(prefix="studio-benchmark-")
