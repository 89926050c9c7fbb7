"""Debian's Chromium, as the browser tests and the benchmark's browser sections start it: never a
downloaded browser, and no background traffic (the machine has no network but the registries)."""
from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
