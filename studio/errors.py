"""The errors a user sees. Everything here says what went wrong in words a user can act on.

`StudioError` is the one exception the UI turns into a visible message (gr.Error) and the CLI
prints without a traceback. Programming errors stay ordinary exceptions. This module has no
logic beyond formatting.
"""
from __future__ import annotations


class StudioError(Exception):
    """A problem the user can fix or should know about; the message is shown as it is."""


class GenerationCancelled(StudioError):
    """The user pressed Stop; the run ended early on purpose."""


def bad_argument(name: str, value: object, expected: str) -> StudioError:
    """`steps=0 is not allowed: expected a whole number from 1 to 150`."""
    shown = repr(value) if not isinstance(value, str) or len(value) <= 60 else repr(value[:57] + "...")
    return StudioError(f"{name}={shown} is not allowed: expected {expected}.")
