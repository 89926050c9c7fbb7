"""A run as a stream of small events, for UIs: a Step for each denoising step, then Done.

The run goes in the manager's worker thread and hands each step over, waiting until its consumer
takes it, so the run is never more than one step ahead of what is shown; closing the stream (a
UI's Stop, a client that went away) stops the run after the step under way.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import queue
import threading
import time

import torch

from studio.requests import GenerationRequest, GenerationResult

STEP_HANDOVER_WAIT = 10.0  # seconds a step waits for its consumer; then the run is abandoned


@dataclasses.dataclass(frozen=True)
class Step:
    """A step of a streamed run: its number (from 1) of `total`, its preview pictures (None if
    none was due), and `note`, why a due preview is missing (None when nothing is)."""
    number: int
    total: int
    previews: list | None
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class Done:
    """The end of a streamed run."""
    result: GenerationResult


def stream(manager, request: GenerationRequest, cancel: threading.Event | None = None, run=None, gate=None):
    """`manager.generate(request)` in the manager's worker thread; yield a Step for each step,
    then Done. Closing the generator early (a UI's Stop, a dropped client) cancels the run.
    `run(on_step=..., cancel=...)`, if given, is called instead (a branch of `request`'s run).
    `gate(step)`, if given, returns when the run may go on past that step (a Ray replica waits
    there for its front end, studio.scale)."""
    run = run or functools.partial(manager.generate, request)
    events: queue.Queue = queue.Queue()
    cancel = cancel or threading.Event()
    taken = threading.Semaphore(0)  # released each time the consumer takes a step event

    def report(*event) -> None:
        events.put(Step(*event, manager.preview_note(request) if event[2] is None else None))
        hand_over(taken, cancel)

    threads = torch.get_num_threads()  # the caller's setting holds in the worker too

    def work() -> None:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        try:
            events.put(Done(run(on_step=report, cancel=cancel)))
        except BaseException as exc:  # handed to the consumer, raised there
            events.put(exc)

    job = manager._worker.submit(work)
    try:
        while True:
            event = events.get()
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, Step):
                if gate is not None:
                    gate(event)
                taken.release()
            yield event
            if isinstance(event, Done):
                return
    finally:
        if not job.cancel() and not job.done():  # not started: dropped; running: stopped
            cancel.set()
            concurrent.futures.wait([job])


def hand_over(taken: threading.Semaphore, cancel: threading.Event) -> None:
    """Wait until the consumer takes the step just put, so the run is never more than one step
    ahead of it: a consumer that stops asking (Gradio after a cancel) closes the stream, which
    sets `cancel` while that step is the last one started. A consumer that has not taken a step
    for STEP_HANDOVER_WAIT is gone (a client that went away between two yields): the run stops."""
    deadline = time.monotonic() + STEP_HANDOVER_WAIT
    while not taken.acquire(timeout=0.05):
        if cancel.is_set():
            return
        if time.monotonic() > deadline:
            cancel.set()
            return
