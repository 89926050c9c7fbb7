"""The Ray Serve side: a replica of the pipeline manager, and the board that carries cancels.

A replica is a PipelineManager with its own copy of the model, one run at a time
(`max_ongoing_requests=1`, so the handle sends the next request to a free replica). On a GPU
each replica takes one (`num_gpus=1`); on a CPU it takes `threads` CPUs and sets torch to that
many threads. `stream` yields the studio's own step events (studio.streams: Step, then Done with
the GenerationResult, trajectory included). Serve's own cancel does not reach a running sync
generator, so the front end writes a cancel, and each step it has shown, to a named actor, the
board, which the replica reads at every step: the run stops within one step of what the page shows. This module does not know Gradio.
"""
from __future__ import annotations

import dataclasses
import threading

import ray
from ray import serve

from studio import streams
from studio.config import Settings
from studio.scale import BOARD, JOIN_HINT, NAMESPACE, join

@ray.remote(num_cpus=0)
class CancelBoard:
    """Per run id: the last step its front end has shown, and whether it asked the run to stop.
    An async actor: `until_shown` answers the moment the awaited step is shown or the run is
    cancelled, with no polling."""

    def __init__(self):
        import asyncio

        self.shown: dict[str, int] = {}
        self.cancelled: set[str] = set()
        self.changed = asyncio.Condition()

    async def ack(self, run_id: str, step: int) -> None:
        async with self.changed:
            self.shown[run_id] = max(step, self.shown.get(run_id, 0))
            self.changed.notify_all()

    async def cancel(self, run_id: str) -> None:
        async with self.changed:
            self.cancelled.add(run_id)
            self.changed.notify_all()

    async def until_shown(self, run_id: str, step: int) -> bool:
        """Wait until the front end has shown `step` (or asked to stop); whether it asked to stop."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.shown.get(run_id, 0) >= step or run_id in self.cancelled)
            return run_id in self.cancelled

    async def forget(self, run_id: str) -> None:
        self.shown.pop(run_id, None)
        self.cancelled.discard(run_id)


def board():
    """The cluster's cancel board, made by the first caller."""
    return CancelBoard.options(name=BOARD, namespace=NAMESPACE, get_if_exists=True, lifetime="detached").remote()


@serve.deployment(max_ongoing_requests=1, health_check_period_s=2, graceful_shutdown_timeout_s=5)
class Generator:
    def __init__(self, settings: dict, threads: int = 0):
        import torch

        from studio.manager import PipelineManager

        if threads:
            torch.set_num_threads(threads)
        # a replica writes nothing: the front end saves what it shows
        self.manager = PipelineManager(Settings(**{**settings, "no_save": True}))
        self.board = board()

    def reconfigure(self, config: dict) -> None:
        """Serve's user_config: {"model": name}. The front end loaded it first, so it loads here."""
        name = config.get("model") or self.manager.settings.model
        if self.manager._model is None or self.manager.info.name != name:
            self.manager.load(name)

    def stream(self, request, run_id: str):
        """The run's step events. Each step waits until the front end has shown the one before
        (so the run is never more than a step ahead of the page, as in-process), and reads the
        board's cancel there: the run stops within one step of what the page shows."""
        cancel = threading.Event()

        def gate(step) -> None:
            try:
                stop = ray.get(self.board.until_shown.remote(run_id, step.number - 1), timeout=streams.STEP_HANDOVER_WAIT)
            except ray.exceptions.GetTimeoutError:  # the front end went away: the run is abandoned
                stop = True
            if stop:
                cancel.set()

        try:
            yield from streams.stream(self.manager, request, cancel, gate=gate)
        finally:
            self.board.forget.remote(run_id)

    def model(self) -> str:
        return self.manager.info.name


def application(settings: Settings, replicas: int, threads: int):
    """The Serve application of `replicas` Generators of the settings' model: one GPU each where
    the settings' device is a CUDA GPU, else `threads` CPUs each."""
    from studio import devices

    fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)}
    on_gpu = devices.choose_device(settings.device).startswith("cuda")
    resources = {"num_gpus": 1} if on_gpu else {"num_cpus": max(threads, 1)}
    return Generator.options(num_replicas=replicas, ray_actor_options=resources,
                             user_config={"model": settings.model}).bind(fields, threads)


def build_app(args: dict):
    """A Serve config's application builder (`import_path: studio.scale.deployment:build_app`):
    `args` are Settings fields (model, device, ...) and `replicas`, `replica_threads`."""
    fields = {k: v for k, v in args.items() if k in Settings.__dataclass_fields__}
    return application(Settings(**fields), int(args.get("replicas", 1)), int(args.get("replica_threads", 1)))


def serve_forever(settings: Settings, address: str | None, replicas: int, threads: int) -> None:
    """`python -m studio serve`: the replicas alone, until Ctrl+C; front ends join with --ray ADDRESS."""
    import time

    from studio.scale import APP

    join(address)
    serve.start(proxy_location="Disabled")
    board()
    serve.run(application(settings, replicas, threads), name=APP, route_prefix=None)
    address = ray.get_runtime_context().gcs_address
    print(f"{replicas} generation replica(s) of {settings.model} are up as Serve application {APP!r}; "
          f"start the studio with: python app.py --ray {address} --replicas {replicas} ({JOIN_HINT})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(APP)
