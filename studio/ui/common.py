"""Event plumbing shared by the tabs: a run's stream as what a Gradio event shows, the check
that its client is still there, the buttons while it runs, and its one-line description.

`run_stream` turns a manager stream into Updates, mapping StudioError to gr.Error. No generation
logic lives here: it all goes through the manager. The controls are in panel.py, uploads in
uploads.py, served files in files.py.
"""
from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

import gradio as gr

from studio import loras
from studio.errors import GenerationCancelled, StudioError
from studio.streams import Step

GPU = "gpu"  # every event that runs the model shares this concurrency_id


def generation_queue(manager) -> dict:
    """The concurrency of the events that generate (txt2img, img2img, X/Y plot): one at a time with
    the model, as every GPU event; with Ray Serve replicas (studio.scale), one per replica."""
    replicas = getattr(manager, "concurrency", 1)
    return dict(concurrency_id=GPU if replicas == 1 else "generate", concurrency_limit=replicas)


def whole_index(name: str, value) -> int:
    """An index an API caller sent (a run, a step, a picture) as an int, or gr.Error naming it:
    1.5 became 1 and "0.5" became 0, silently; "abc" was a raw ValueError."""
    if isinstance(value, bool):
        raise gr.Error(f"{name}={value!r} is not allowed: expected a whole number.")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise gr.Error(f"{name}={value!r} is not allowed: expected a whole number.")


class Update(NamedTuple):
    """One thing a run has to show: a preview picture, the finished result, a status line."""
    picture: object = None
    result: object = None
    status: str | None = None
    step: bool = False  # a step's progress, which may be skipped when a newer one comes soon


STATUS_EVERY = 0.25  # seconds between status lines that carry no preview picture


def run_stream(stream, progress: gr.Progress, label: str = ""):
    """Yield Updates from a manager stream; user errors become gr.Error. `label` goes before the
    step count ("batch 2/3 · "). A Stop ends it with the status "Stopped at step k of N."."""
    started = time.perf_counter()
    try:
        for event in stream:
            if isinstance(event, Step):
                step, total = event.number, event.total
                progress((step, total), desc=f"{label}step {step}/{total}")
                rate = step / max(time.perf_counter() - started, 1e-9)
                status = f"{label}step {step} of {total} · {rate:.1f} steps/s" + (f" · {event.note}" if event.note else "")
                yield Update(picture=event.previews[0] if event.previews else None, status=status, step=True)
            else:
                for warning in event.result.warnings:
                    gr.Warning(warning)
                yield Update(result=event.result)
    except GenerationCancelled as exc:
        gr.Info(str(exc))
        yield Update(status=f"**{label}{exc}**")
    except StudioError as exc:
        raise gr.Error(str(exc)) from exc
    finally:
        stream.close()


def client_gone(request: gr.Request):
    """A check of whether the client of the running event went away (its page closed, its
    gradio_client killed, its raw SSE stream dropped).

    Gradio notices a dropped event stream and marks the session's jobs dead (Queue.clean_events),
    but an event that is between two yields learns of it only at its next one, and the run went
    on for 31 minutes. This reads that mark, which is Gradio's internals (pinned gradio 6.31;
    test_security's abandoned-job test fails if it moves)."""
    from gradio.context import LocalContext

    blocks, session = LocalContext.blocks.get(None), request.session_hash

    def gone() -> bool:
        queue = getattr(blocks, "_queue", None)
        jobs = [job for jobs in getattr(queue, "active_jobs", None) or [] if jobs for job in jobs
                if job.session_hash == session]
        return bool(jobs) and not any(job.alive for job in jobs)

    return gone


async def stream_steps(stream, progress: gr.Progress, stop_flag, label: str = "", gone=None):
    """`run_stream` for async event functions: each step is awaited in a worker thread, so the
    event yields only what it has to show (a preview, or a status line every STATUS_EVERY s),
    not once a step.

    Gradio stops an event by cancelling its task (an API client's cancel, a closed page). A sync
    generator learns of that only at its next yield; here the await raises at once, and
    `stop_flag` makes the manager end the run after the step under way. `gone` (client_gone)
    is asked at every step: a client that went away stops its run within a step."""
    steps = run_stream(stream, progress, label)
    shown = 0.0
    try:
        while (item := await asyncio.to_thread(next, steps, None)) is not None:
            if gone is not None and gone():
                stop_flag.set()
            if item.step and item.picture is None and time.monotonic() - shown < STATUS_EVERY:
                continue
            shown = time.monotonic()
            yield item
    except asyncio.CancelledError:
        stop_flag.set()  # the abandoned thread sees the flag and finishes the stream itself
        raise
    except GeneratorExit:  # closed at a yield: no thread is inside `steps`
        stop_flag.set()
        steps.close()
        raise


def running_buttons():
    """While a run goes: Generate waits for it, Stop can stop it."""
    return gr.Button(interactive=False), gr.Button(interactive=True)


def idle_buttons():
    """No run: Generate can start one, Stop has nothing to stop."""
    return gr.Button(interactive=True), gr.Button(interactive=False)


def describe_result(result) -> str:
    seeds = ", ".join(str(s) for s in result.seeds)
    t = result.timings
    return (f"**Seed{'s' if len(result.seeds) > 1 else ''}:** {seeds} · {t['steps']} steps in "
            f"{t['total']:.2f} s ({1 / max(t['seconds_per_step'], 1e-9):.1f} steps/s) · "
            f"{result.request.width}x{result.request.height} · {result.scheduler_name}"
            + "".join(f" · LoRA {name} {weight:g}" for name, weight in loras.selection(result.request.loras, result.request.prompt)))
