"""Which requests Gradio may queue: studio.web.Guard's JSON checks, which read Gradio's queue.

- `known_event`: an `fn_index` the app has no event for is refused by name (Gradio looked it up
  unchecked and answered -1 and 999 with a bare HTTP 500).
- `fair_share`: on a public server, one visitor may not hold the model's whole queue. A session
  may have MAX_RUNS_PER_SESSION runs waiting or running; one client address half of --max-queue,
  since gradio_client's /call/ route makes a new session for every call. Without it one visitor's
  16 queued requests kept everyone else waiting behind them, or out with "queue full".

These read Gradio's internals (its queue's waiting events and active jobs; gradio 6.31 pinned).
"""
from __future__ import annotations

import json

from studio.ui.common import GPU

MAX_RUNS_PER_SESSION = 2  # one running and one waiting: a second click queues, a third is refused


def known_event(scope, body) -> tuple[int, str] | None:
    index = body.get("fn_index") if isinstance(body, dict) else None
    if isinstance(index, bool):  # Gradio's schema would take true as event 1
        return 422, f"fn_index={json.dumps(index)} is not a whole number."
    if not isinstance(index, int):
        return None  # absent, or a string or such, which Gradio's own schema refuses by name
    events = scope["app"].get_blocks().fns
    if index not in events:
        return 422, f"fn_index={index} is not an event of this app (its events are {min(events)} to {max(events)})."
    return None


def event_of(blocks, path: str, body: dict):
    """The event a queue/join or /call/[v2/]<api_name> request asks for, or None."""
    if isinstance(body.get("fn_index"), int):
        return blocks.fns.get(body["fn_index"])
    parts = path.rstrip("/").split("/")
    if "call" in parts[:-1]:  # /call/<api_name>, /call/v2/<api_name>
        return next((fn for fn in blocks.fns.values() if fn.api_name == parts[-1]), None)
    return None


def model_events(blocks) -> list:
    """Every event waiting for the model or running on it."""
    queue = blocks._queue
    waiting = getattr(queue.event_queue_per_concurrency_id.get(GPU), "queue", [])
    running = [event for job in queue.active_jobs if job for event in job]
    return [event for event in [*waiting, *running] if event.concurrency_id == GPU]


def address_of(event) -> str | None:
    client = getattr(getattr(event, "request", None), "client", None)
    return getattr(client, "host", None)


def fair_share(max_queue: int):
    per_address = max(MAX_RUNS_PER_SESSION, max_queue // 2)

    def check(scope, body) -> tuple[int, str] | None:
        if not isinstance(body, dict):
            return None
        blocks = scope["app"].get_blocks()
        fn = event_of(blocks, scope.get("path", ""), body)
        if fn is None or fn.concurrency_id != GPU:
            return None  # no model work: reading a history entry, a PNG's text
        events, session = model_events(blocks), body.get("session_hash")
        address = (scope.get("client") or (None,))[0]
        if session and sum(e.session_hash == session for e in events) >= MAX_RUNS_PER_SESSION:
            return 429, (f"You have {MAX_RUNS_PER_SESSION} runs waiting or running already; this is a shared "
                    "server, so wait until one of them ends.")
        if address and sum(address_of(e) == address for e in events) >= per_address:
            return 429, (f"{per_address} runs from your address are waiting or running already; this is a "
                    "shared server, so wait until one of them ends.")
        return None

    return check


def checks(settings):
    """Guard's check_json for these settings: every server knows its events; a public one also
    keeps each visitor to a fair share of the queue."""
    share = fair_share(settings.max_queue) if settings.public else None

    def check(scope, body) -> tuple[int, str] | None:
        return known_event(scope, body) or (share(scope, body) if share else None)

    return check
