"""The studio as a separate process for the load command: `python app.py` on 127.0.0.1 with the
bundled model, its own Gradio cache folder and --no-save (as on a Space), and what it leaves on disk."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from studio.config import DEFAULT_MODEL, REPO_ROOT


SERVER_START_TIMEOUT = 300


@dataclasses.dataclass
class Server:
    url: str
    process: subprocess.Popen
    cache: Path

    def cpu_seconds(self) -> float:
        """The server process's CPU time so far (user + system), from /proc."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(workdir: Path, max_queue: int, cache_max_age: int, threads: int, extra: tuple = ()):
    """`python app.py` with the bundled model on 127.0.0.1, its own Gradio cache; stopped after."""
    port, cache = free_port(), workdir / "gradio-cache"
    log = open(workdir / "server.log", "w")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(cache), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "OMP_NUM_THREADS": str(threads)}
    env.pop("SPACE_ID", None)
    command = [sys.executable, "app.py", "--model", DEFAULT_MODEL, "--host", "127.0.0.1", "--port", str(port),
               "--no-save", "--max-queue", str(max_queue), "--cache-max-age", str(cache_max_age), *extra]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, process)
        yield Server(url, process, cache)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def wait_until_serving(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with status {process.returncode}; see server.log")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=5) as page:
                if page.status == 200:
                    return
        time.sleep(0.5)
    raise RuntimeError(f"the app did not serve {url} within {SERVER_START_TIMEOUT} s")


def cache_files(cache: Path) -> list[Path]:
    """The files under `cache` now. The server prunes it meanwhile: a folder that goes while it
    is walked is skipped (rglob raised FileNotFoundError there and ended a soak)."""
    return [Path(root) / name for root, _, names in os.walk(cache) for name in names]


def no_save_folder(server: Server) -> Path:
    """The server's --no-save folder (Settings.output_root): its PNGs, until pruned."""
    return Path(tempfile.gettempdir()) / f"diffusion-studio-{server.process.pid}"


def oldest_file(folder: Path) -> float:
    now, ages = time.time(), []
    for path in cache_files(folder):
        with contextlib.suppress(FileNotFoundError):  # pruned since it was listed
            ages.append(now - path.stat().st_ctime)
    return max(ages, default=0.0)
