"""The A1111 API's jobs: each request's batches run through the manager, one at a time with the UI's.

A job is one txt2img or img2img request (its `n_iter` batches). It runs through
`PipelineManager.stream`, the UI's own path: the manager's one worker thread takes runs in the
order they come and its lock keeps a browser's run and an API run from ever overlapping, so both
wait their turn. The board keeps what `/sdapi/v1/progress` reports (the running job's step and
live preview; the batches waiting), stops the running job on `/interrupt`, and keeps the API's
runs in a session history of their own, which a browser session can take in (studio.history's
`take_from`) to open them in the viewer. This module knows nothing of HTTP or Gradio.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import io
import threading
import time
from pathlib import Path

from studio import streams
from studio.errors import GenerationCancelled, StudioError
from studio.fields import FIELD
from studio.history import SessionHistory

LIVE_PREVIEW = FIELD["preview"].ui_default  # the decoder of the UI's live preview: current_image


class Busy(StudioError):
    """Too many API jobs are waiting already (429)."""


@dataclasses.dataclass(eq=False)
class Job:
    batches: int
    address: str | None
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    timestamp: str = dataclasses.field(default_factory=lambda: datetime.datetime.now().strftime("%Y%m%d%H%M%S"))
    started: float | None = None   # time.monotonic() of its first step: None while it waits
    batch: int = 0                 # batches finished
    step: int = 0                  # steps done of the batch under way, of `total`
    total: int = 0
    preview: object = None         # the newest live preview (PIL), for current_image

    def fraction(self) -> float:
        return (self.batch + (self.step / self.total if self.total else 0.0)) / self.batches


@dataclasses.dataclass
class Outcome:
    results: list                  # GenerationResult of each finished batch
    pngs: list[bytes]              # every picture's PNG file, infotext included
    stopped: str | None = None     # "Stopped at step k of N." after an interrupt


class JobBoard:
    def __init__(self, manager, writer, max_jobs: int, per_address: int | None = None):
        self.manager, self.writer = manager, writer
        self.max_jobs, self.per_address = max_jobs, per_address
        self._lock = threading.Lock()
        self._jobs: list[Job] = []
        self._history = SessionHistory()

    @property
    def history(self) -> SessionHistory:
        """The API's runs, as one session's history (immutable: a snapshot)."""
        return self._history

    def run(self, plan: list, address: str | None = None) -> Outcome:
        """Run a request's batches in order, each written to the outputs with its infotext and
        added to the API's history. An interrupt ends it after the step under way; the batches
        finished before stay in the outcome."""
        job = self._enter(len(plan), address)
        outcome = Outcome([], [])
        try:
            for request in plan:
                if job.stop.is_set():
                    break
                request = dataclasses.replace(request, preview=LIVE_PREVIEW)
                try:
                    result = self._stream(job, request)
                except GenerationCancelled as exc:
                    outcome.stopped = str(exc)
                    break
                paths = self.writer.write(result)
                with self._lock:
                    self._history = self._history.add_run(result, paths)
                    job.batch += 1
                outcome.results.append(result)
                outcome.pngs += [Path(path).read_bytes() for path in paths]
        finally:
            with self._lock:
                self._jobs.remove(job)
        return outcome

    def _stream(self, job: Job, request):
        for event in self.manager.stream(request, job.stop):
            if isinstance(event, streams.Done):
                return event.result
            with self._lock:
                job.started = job.started or time.monotonic()
                job.step, job.total = event.number, event.total
                job.preview = event.previews[0] if event.previews else job.preview

    def _enter(self, batches: int, address: str | None) -> Job:
        with self._lock:
            if len(self._jobs) >= self.max_jobs:
                raise Busy(f"{len(self._jobs)} API requests are waiting or running already (at most "
                           f"{self.max_jobs}, --max-queue); try again when one has ended.")
            mine = sum(j.address == address for j in self._jobs)
            if self.per_address and address and mine >= self.per_address:
                raise Busy(f"{mine} API requests from your address are waiting or running already; this is "
                           "a shared server, so wait until one of them ends.")
            job = Job(batches, address)
            self._jobs.append(job)
            return job

    def interrupt(self) -> None:
        """Stop the running API job after the step under way (a browser's run is its own to stop)."""
        with self._lock:
            for job in self._jobs:
                if job.started is not None:
                    job.stop.set()

    def progress(self, with_image: bool = True) -> dict:
        """A1111's /progress body: the running job's share done and its live preview; job_count
        counts the batches of every API job not yet finished, so 0 means idle."""
        with self._lock:
            running = next((j for j in self._jobs if j.started is not None), None)
            left = sum(j.batches - j.batch for j in self._jobs)
            snapshot = dataclasses.replace(running) if running else None
        state = {"skipped": False, "interrupted": False, "job": "", "job_count": left, "job_timestamp": "0",
                 "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        if snapshot is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None,
                    "textinfo": "Waiting…" if left else None}
        fraction, elapsed = snapshot.fraction(), time.monotonic() - snapshot.started
        state |= {"interrupted": snapshot.stop.is_set(), "job": f"batch {snapshot.batch + 1} of {snapshot.batches}",
                  "job_timestamp": snapshot.timestamp, "job_no": snapshot.batch,
                  "sampling_step": snapshot.step, "sampling_steps": snapshot.total}
        image = encoded(snapshot.preview) if with_image and snapshot.preview is not None else None
        return {"progress": fraction, "eta_relative": elapsed / fraction - elapsed if fraction else 0.0,
                "state": state, "current_image": image,
                "textinfo": f"Step {snapshot.step} of {snapshot.total}, {state['job']}"}


def encoded(picture) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
