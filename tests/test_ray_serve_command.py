"""`python -m studio serve`: the generation backend alone on a Ray instance of its own, and a front
end joining it by the address it prints, as `python app.py --ray ADDRESS` does (with Ray's token,
which Ray asks for on the local instances it starts).

Bounded: every wait has a ceiling, and the backend is killed with its process group at the end.
"""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading

import pytest

from studio.config import REPO_ROOT

CEILING = 300  # seconds: a ceiling for Ray to start or stop, never a measure of speed
UP = re.compile(r"are up as Serve application .*python app\.py --ray (\S+) --replicas 1")

FRONT_END = """
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
from studio.config import Settings
from studio.manager import PipelineManager
from studio.requests import GenerationRequest
from studio.scale.backend import RayManager

address = sys.argv[1]
request = GenerationRequest(prompt="a small green triangle at the top left on a purple background", seed=5,
                            num_inference_steps=6)
remote = RayManager(Settings(ray=address, replicas=1), replicas=1, threads=1, address=address)
remote.load()
local = PipelineManager(Settings())
local.load()
a, b = (np.asarray(m.generate(request).images[0]) for m in (remote, local))
print(json.dumps({"same": bool((a == b).all()), "shape": list(a.shape)}))
"""


def lines_of(process: subprocess.Popen) -> queue.Queue:
    out: queue.Queue = queue.Queue()

    def pump():
        for line in process.stdout:
            out.put(line)
        out.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return out


def test_studio_serve_runs_the_replicas_and_a_front_end_joins_them_by_the_printed_address():
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "PYTHONPATH": str(REPO_ROOT),
           "OMP_NUM_THREADS": "1"}
    backend = subprocess.Popen([sys.executable, "-m", "studio", "serve", "--replicas", "1", "--replica-threads", "1"],
                               cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    seen: list[str] = []
    try:
        out, address = lines_of(backend), None
        while address is None:
            try:
                line = out.get(timeout=CEILING)
            except queue.Empty:
                pytest.fail(f"`studio serve` printed no address within {CEILING} s:\n{''.join(seen[-20:])}")
            if line is None:
                pytest.fail(f"`studio serve` exited ({backend.wait()}) before it was up:\n{''.join(seen[-20:])}")
            seen.append(line)
            if match := UP.search(line):
                address = match[1]
        # Ray asks a driver that names an address for its token only when told to: without it, a clear refusal
        refused = subprocess.run([sys.executable, "-c", FRONT_END, address], cwd=REPO_ROOT, env=env,
                                 capture_output=True, text=True, timeout=CEILING)
        assert refused.returncode != 0
        assert f"--ray {address}: could not join the Ray cluster" in refused.stderr
        assert "RAY_AUTH_MODE=token" in refused.stderr
        front = subprocess.run([sys.executable, "-c", FRONT_END, address], cwd=REPO_ROOT,
                               env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=CEILING)
        assert front.returncode == 0, front.stderr[-3000:]
        assert json.loads(front.stdout.strip().splitlines()[-1]) == {"same": True, "shape": [64, 64, 3]}
        # Not asserted: that Ctrl+C stops it. In one fresh-clone CI run it had not exited 300 s after SIGINT
        # (alone it exits 0 at once); the backend and its Ray instance go with their process group below.
    finally:
        try:  # whatever of its Ray instance is left (it started the group)
            os.killpg(backend.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        backend.wait(timeout=CEILING)


def test_the_in_process_default_never_imports_ray():
    """Without --ray the studio is what it was before Ray Serve came in: Ray is not even imported."""
    code = ("import sys, app; from studio.config import parse_settings; "
            "manager = app.make_manager(parse_settings([])); manager.load(); "
            "print(type(manager).__name__, sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=CEILING,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["PipelineManager", "[]"]
