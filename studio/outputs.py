"""Where finished images go: PNGs with their parameters, named by the studio, never by the prompt.

Names are `YYYY-MM-DD/NNNNN-SEED.png` under --outputs. With --no-save (the Space default) the
PNGs go to a private temporary folder (Settings.output_root), so the UI can still offer them for
download; that folder is removed when the process exits. This module knows nothing of Gradio.
"""
from __future__ import annotations

import datetime
import itertools
import shutil
import threading
import weakref
from pathlib import Path

from studio import metadata


class OutputWriter:
    def __init__(self, root: str | Path, temporary: bool = False):
        self.root = Path(root)
        if temporary:  # --no-save: gone when the process ends
            self.root.mkdir(parents=True, exist_ok=True)
            weakref.finalize(self, shutil.rmtree, self.root, True)
        self._lock = threading.Lock()

    def folder(self) -> Path:
        day = self.root / datetime.date.today().isoformat()
        day.mkdir(parents=True, exist_ok=True)
        return day

    def next_paths(self, seeds: list[int]) -> list[Path]:
        """Fresh file names, one per seed; the counter continues from what the folder holds."""
        with self._lock:
            folder = self.folder()
            taken = [int(p.name.split("-")[0]) for p in folder.glob("*.png") if p.name.split("-")[0].isdigit()]
            start = max(taken, default=-1) + 1
            paths = [folder / f"{n:05d}-{seed}.png" for n, seed in zip(itertools.count(start), seeds)]
            for path in paths:
                path.touch()  # reserve the name before the lock is released
            return paths

    def write(self, result) -> list[str]:
        paths = self.next_paths(result.seeds)
        for path, image, seed in zip(paths, result.images, result.seeds):
            metadata.save_png(image, path, result, seed)
        return [str(p) for p in paths]
