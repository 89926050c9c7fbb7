"""A session's history: its runs and X/Y plots, numbered once, the same in every tab.

Each entry is one thing the person did: a run (one result, its batch of pictures) or an X/Y plot
(every cell's result and the grid). Entries are numbered #1, #2, ... in the order they were made,
and a number is never reused or shifted when old entries are dropped, so "#7" in History is "#7"
in the viewer. A plot's cells are runs "#7.1", "#7.2", ... for the viewer; in History the plot is
one entry, its grid, and counts once against the limit. The UI keeps one of these per session;
this module knows nothing of Gradio.
"""
from __future__ import annotations

import dataclasses

HISTORY_LIMIT = 12  # entries (runs or plots) a session keeps; older ones are dropped
# The trajectories a session keeps, in bytes: older entries are dropped past it (the newest
# always stays). One 2048x2048 run of 8 pictures at 150 steps alone holds about 4.7 GiB.
HISTORY_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True, eq=False)  # equal only to itself: results hold tensors
class Entry:
    number: int                    # the session's entry number: "#number" everywhere
    results: tuple                 # GenerationResult: one for a run, every cell of a plot
    files: tuple                   # each result's PNG paths, as tuples
    grid: str | None = None        # an X/Y plot's grid picture
    title: str = ""                # an X/Y plot's axes, for example "Sampler x Steps"
    parent: str | None = None      # a branch's run ("7" or "7.2") and the step it left it at
    at_step: int | None = None
    origin: str = ""               # where it was made, if not in this session: "API #3"

    @property
    def is_plot(self) -> bool:
        return self.grid is not None


def entry_bytes(entry: Entry) -> int:
    """The bytes an entry's trajectories hold (its pictures are files on disk)."""
    return sum(r.trajectory.nbytes() for r in entry.results if getattr(r, "trajectory", None) is not None)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run the viewer can open: its label number ("7" or "7.3"), its result, its entry."""
    number: str
    result: object
    entry: Entry
    cell: int | None = None        # index among the plot's cells


@dataclasses.dataclass(frozen=True)
class Picture:
    """One picture History shows: a run's image, or a plot's grid (`image` None)."""
    path: str
    entry: Entry
    result: int = 0                # index into entry.results
    image: int | None = 0          # index into that result's pictures; None for a plot's grid


@dataclasses.dataclass(frozen=True)
class SessionHistory:
    entries: tuple[Entry, ...] = ()
    next_number: int = 1
    limit: int = HISTORY_LIMIT
    max_bytes: int = HISTORY_BYTES
    taken_up_to: int = 0           # the last entry number taken from another session (take_from)

    def add_run(self, result, paths) -> SessionHistory:
        return self._add(Entry(self.next_number, (result,), (tuple(paths),)))

    def add_branch(self, result, paths, parent: str, at_step: int) -> SessionHistory:
        """A branch of run `parent` ("7" or "7.2") after its step `at_step`."""
        return self._add(Entry(self.next_number, (result,), (tuple(paths),), parent=parent, at_step=at_step))

    def add_plot(self, results, files, grid: str, title: str) -> SessionHistory:
        return self._add(Entry(self.next_number, tuple(results), tuple(tuple(f) for f in files), grid, title))

    def take_from(self, other: SessionHistory, origin: str) -> tuple[SessionHistory, int]:
        """This history with `other`'s entries made since the last call added (numbered here, each
        marked "<origin> #<its number there>"), and how many were added. The A1111 API's runs
        reach a browser session this way (studio.a1111)."""
        new = [e for e in other.entries if e.number > self.taken_up_to]
        history = self
        for e in new:
            history = history._add(dataclasses.replace(e, number=history.next_number, origin=f"{origin} #{e.number}"))
        taken = max((e.number for e in new), default=self.taken_up_to)
        return dataclasses.replace(history, taken_up_to=taken), len(new)

    def _add(self, entry: Entry) -> SessionHistory:
        entries = (self.entries + (entry,))[-self.limit:]
        while len(entries) > 1 and sum(map(entry_bytes, entries)) > self.max_bytes:
            entries = entries[1:]
        return dataclasses.replace(self, entries=entries, next_number=self.next_number + 1)

    def nbytes(self) -> int:
        return sum(map(entry_bytes, self.entries))

    def runs(self) -> list[Run]:
        """Every run the viewer can open, oldest first; a plot's cells are runs of their own."""
        return [Run(f"{e.number}.{i + 1}" if e.is_plot else str(e.number), result, e, i if e.is_plot else None)
                for e in self.entries for i, result in enumerate(e.results)]

    def pictures(self) -> list[Picture]:
        """What History shows, newest entry first: a run's pictures, or a plot's grid once."""
        shown = []
        for e in reversed(self.entries):
            if e.is_plot:
                shown.append(Picture(e.grid, e, 0, None))
            else:
                shown += [Picture(path, e, 0, i) for i, path in enumerate(e.files[0])]
        return shown

    def __len__(self) -> int:
        return len(self.entries)
