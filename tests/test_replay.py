"""The replay page (studio.replay, `python -m studio replay`): one self-contained HTML file of a
run, with nothing fetched from anywhere; and the frames the viewer's scrub receives."""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys

import pytest
from PIL import Image

from studio import replay, runs
from studio.requests import GenerationRequest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved_run(bundled_manager, tmp_path_factory):
    result = bundled_manager.generate(GenerationRequest(
        prompt="a large red circle on a blue background", num_inference_steps=20, seed=5, record_attention=True,
        preview="none"))
    folder = tmp_path_factory.mktemp("replay-run")
    runs.save(result, folder)
    return result, folder


def embedded_data(page: str) -> dict:
    return json.loads(re.search(r'studioPlayer\(document\.getElementById\("player"\), (\{.*\})\);</script>',
                                page, re.DOTALL).group(1))


def test_the_cli_writes_a_self_contained_page_under_2_mb_for_a_20_step_run(saved_run, tmp_path):
    result, folder = saved_run
    out = tmp_path / "run.html"
    done = subprocess.run([sys.executable, "-m", "studio", "replay", str(folder), "--out", str(out)],
                          check=True, capture_output=True, text=True)
    assert f"wrote {out}" in done.stdout and "20 steps" in done.stdout
    page = out.read_text()
    assert out.stat().st_size < 2_000_000
    # nothing from elsewhere: no script, style or picture by address, and a policy that forbids it
    assert not re.search(r'(src|href)="(?!data:)', page) and "<link" not in page
    assert "default-src 'none'" in page
    data = embedded_data(page)
    assert len(data["steps"]) == 20 and data["decoder"] == "the full VAE"
    assert data["words"] == ["a", "large", "red", "circle", "on", "blue", "background"]
    assert all(set(step["attention"]) == set(data["words"]) for step in data["steps"])
    assert "Seed: 5" in page and "a large red circle on a blue background" in page
    first = Image.open(io.BytesIO(base64.b64decode(data["steps"][-1]["x0"].split(",", 1)[1])))
    assert first.size == (64, 64)


def test_larger_pictures_are_scaled_down_and_sent_as_jpeg():
    uri = replay.data_uri(Image.new("RGB", (512, 384), "red"))
    assert uri.startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size == (256, 192)


def test_a_folder_that_is_not_a_run_is_named(tmp_path):
    done = subprocess.run([sys.executable, "-m", "studio", "replay", str(tmp_path), "--out", str(tmp_path / "x.html")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and str(tmp_path) in done.stderr and not (tmp_path / "x.html").exists()
