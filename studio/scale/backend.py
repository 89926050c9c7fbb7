"""The front end's manager when generation runs on Ray Serve replicas.

RayManager is a PipelineManager with its own copy of the model, which does everything but
generate: the viewer's decoding (its VAE), the token counter and attention words (its
tokenizer), the fast preview's fit, branches, and checking a model before the replicas load it.
`generate` sends the request to a free replica and turns its step events back into `on_step`
calls, without the manager's lock, so N replicas run N requests at once. A replica that dies
mid-run ends that request with a StudioError; Serve starts a new one meanwhile.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid

from studio import streams
from studio.config import Settings
from studio.errors import StudioError
from studio.manager import PipelineManager
from studio.requests import GenerationRequest, GenerationResult, check_inputs
from studio.scale import APP, join

FORWARD_WATCH = 0.005  # seconds between the front end's looks at a run's cancel flag


def off_loop(function, *args, **kwargs):
    """`function(...)`, in a thread of its own if this one runs an asyncio loop: Ray's handles
    refuse sync calls there (a caller inside an event loop, such as Playwright's sync API)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return function(*args, **kwargs)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(function, *args, **kwargs).result()


class RayManager(PipelineManager):
    def __init__(self, settings: Settings, replicas: int, threads: int = 1, address: str | None = None):
        import ray
        from ray import serve

        from studio.scale import deployment

        super().__init__(settings)
        self.replicas, self.threads = replicas, threads
        self.concurrency = replicas  # the UI lets this many generations run at once
        # streams of several runs at once (the in-process manager has one worker thread)
        self._worker = concurrent.futures.ThreadPoolExecutor(replicas + 1, thread_name_prefix="studio-ray")
        if not ray.is_initialized():
            join(address, log_to_driver=False, **({} if address else {"num_cpus": max(replicas * max(threads, 1), 1)}))
        serve.start(proxy_location="Disabled")
        self._board = deployment.board()
        self._deploy = lambda: serve.run(deployment.application(self.settings, replicas, threads), name=APP,
                                         route_prefix=None)
        self._handle = None

    def load(self, name: str | None = None):
        """Load here first (a failed load keeps the current model, here and on every replica),
        then on every replica: Serve's `reconfigure` with the new model's name."""
        before = self.info.name if self._model is not None else None
        info = super().load(name)
        self.settings.model = info.name
        try:
            self._handle = off_loop(self._deploy).options(stream=True)
        except Exception as exc:  # loaded here but not on the replicas: go back to what they run
            if before is None or before == info.name:
                raise StudioError(f"Ray Serve could not start the generation replicas: {type(exc).__name__}: {exc}") from None
            self.settings.model = before
            super().load(before)
            raise StudioError(f"model={info.name!r} loaded here, but Ray Serve could not deploy it to the replicas "
                              f"({type(exc).__name__}: {exc}); every part keeps {before!r}.") from None
        return info

    def generate(self, request: GenerationRequest, on_step=None, cancel: threading.Event | None = None,
                 start=None) -> GenerationResult:
        if start is not None:  # a branch resumes a run's kept state: the front end's own copy runs it
            return super().generate(request, on_step, cancel, start)
        return off_loop(self._remote, check_inputs(request), on_step, cancel or threading.Event())

    def _remote(self, request: GenerationRequest, on_step, cancel: threading.Event) -> GenerationResult:
        import ray

        run_id, finished = uuid.uuid4().hex, threading.Event()

        def forward_cancel() -> None:
            while not finished.wait(FORWARD_WATCH):
                if cancel.is_set():
                    self._board.cancel.remote(run_id)
                    return

        threading.Thread(target=forward_cancel, daemon=True, name=f"cancel-{run_id[:8]}").start()
        try:
            for event in self._handle.stream.remote(request, run_id):
                if isinstance(event, streams.Done):
                    return event.result
                if on_step is not None:
                    on_step(event.number, event.total, event.previews)
                self._board.ack.remote(run_id, event.number)  # shown: the replica may run the next step
        except ray.exceptions.RayTaskError as exc:  # the replica raised: a StudioError comes back as its cause
            if isinstance(exc.cause, StudioError):  # a bad value, or Stop (GenerationCancelled), as the replica said it
                raise type(exc.cause)(str(exc.cause)) from None
            raise StudioError(f"The generation replica failed: {type(exc.cause).__name__}: {exc.cause}") from None
        except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError,
                ray.exceptions.ActorUnavailableError) as exc:
            raise StudioError("The generation replica running this request stopped mid-run "
                              f"({type(exc).__name__}); Ray is starting another one. Try again.") from None
        finally:
            finished.set()
        raise StudioError("The generation replica ended the run without its result; try again.")

    def preview_note(self, request: GenerationRequest) -> str | None:
        return None  # the replicas fit their own previews; their step events carry the note
