"""The short form of the load and soak command (`python -m benchmarks.load`, see its docstring):
2 gradio_client sessions x 3 requests, a queue overflow, and a 30-generation soak against
`python app.py` on 127.0.0.1 with the bundled model. The full form is 8 x 10 and 300."""
from __future__ import annotations

import contextlib
import io
import json

import pytest

from benchmarks import load

# The cache age must outlast a request from its first cached frame to the client's last download:
# at 4 s a viewer request on a busy CI machine (about 2 s to answer, then its frames fetched one
# by one) once had its x0 pruned before the client fetched it (403). 12 s is 3x that; the soak
# runs past age + one pruning period + 5 s to judge the pruning, so this costs it 12 s more.
SHORT = ["--clients", "2", "--requests", "3", "--soak", "30", "--cache-max-age", "12", "--max-queue", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[int, dict, str]:
    path = tmp_path_factory.mktemp("load") / "results.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = load.main([*SHORT, "--json", str(path)])
    return status, json.loads(path.read_text()), printed.getvalue()


def test_the_command_passes_every_check_and_exits_0(run):
    status, results, printed = run
    failed = [name for name, ok in results["checks"].items() if not ok]
    assert failed == [] and status == 0, printed


def test_every_load_request_succeeds_with_its_own_picture_and_history(run):
    load_ = run[1]["load"]
    assert load_["requests"] == 6 and load_["failed"] == 0, load_["errors"]
    assert load_["mismatched_pictures"] == 0 and load_["foreign_history"] == 0
    assert set(load_["latency_by_kind"]) == {"txt2img", "img2img", "viewer"}


def test_a_full_queue_is_refused_while_busy_and_the_rest_is_served(run):
    queue = run[1]["queue"]
    assert queue["refused_queue_full"] >= 1 and queue["refused_before_the_long_run_ended"]
    assert queue["served"] + queue["refused_queue_full"] == queue["sent_while_busy"] and queue["long_run_ok"]
    assert queue["other_errors"] == []


def test_the_soak_keeps_memory_flat_and_prunes_the_caches(run):
    soak = run[1]["soak"]
    # At least the 30 asked for: a fast server goes on until cache pruning can be judged.
    assert soak["generations"] >= 30 and soak["failed"] == 0
    assert soak["rss_growth"] < load.RSS_GROWTH_LIMIT
    assert soak["cache_pruned"] and soak["no_save_pruned"]


def test_the_command_prints_throughput_and_latency_percentiles(run):
    printed = run[2]
    assert "requests/s" in printed and "generations/s" in printed
    assert all(p in printed for p in ("p50", "p90", "p99"))
