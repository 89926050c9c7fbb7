"""The one Stop registry of every tab: a run holds a flag under its session while it goes; a Stop
(any tab's button, or the API's stop_<tab>) and a closed page set that session's flags. The
manager stops a run at its next step once its flag is set."""
from __future__ import annotations

import contextlib
import threading

_flags: dict[str, set[threading.Event]] = {}
_lock = threading.Lock()


@contextlib.contextmanager
def run_flag(session: str):
    """A fresh flag for one run of `session`, registered until the run ends."""
    flag = threading.Event()
    with _lock:
        _flags.setdefault(session, set()).add(flag)
    try:
        yield flag
    finally:
        with _lock:
            flags = _flags.get(session, set())
            flags.discard(flag)
            if not flags:
                _flags.pop(session, None)


def stop(session: str) -> None:
    """Stop the session's runs at their next step (nothing, if none is going)."""
    with _lock:
        for flag in _flags.get(session, ()):
            flag.set()


def running(session: str) -> int:
    with _lock:
        return len(_flags.get(session, ()))
