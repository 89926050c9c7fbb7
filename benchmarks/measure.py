"""Measuring tools for the benchmark: summary statistics, interleaved repeats, forward-call timers
and the process's resident memory.

Everything here times with `time.perf_counter` and, on CUDA, synchronises first so the clock
reads finished work. This module knows nothing of the studio or Gradio and runs no models itself.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import statistics
import threading
import time
from pathlib import Path

import torch


@dataclasses.dataclass
class Stats:
    """A median with its spread (min and max) over the samples it came from."""
    median: float
    low: float
    high: float
    samples: list[float]

    @classmethod
    def of(cls, samples: list[float]) -> "Stats":
        values = [float(v) for v in samples]
        return cls(statistics.median(values), min(values), max(values), values)


def ratio(numerator: Stats, denominator: Stats) -> Stats:
    """The median of the per-repeat ratios when the samples pair up (A and B interleaved in each
    repeat, so a slow spell of the machine falls on both), with their spread; otherwise the
    ratio of the medians."""
    if len(numerator.samples) != len(denominator.samples):
        value = numerator.median / denominator.median
        return Stats(value, value, value, [value])
    return Stats.of([a / b for a, b in zip(numerator.samples, denominator.samples)])


def percentile(values: list[float], share: float) -> float:
    """The `share` (0..1) percentile by linear interpolation between the sorted values."""
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def interleave(runs: dict, repeats: int, warmup: int = 1) -> dict[str, dict[str, list[float]]]:
    """Call every run once per repeat, the starting one rotating, so drift and order effects fall
    on all of them alike. Each run returns a dict of measurements; the result collects them:
    {run name: {measurement: [value per repeat]}}. Warm-up calls are not kept."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            for key, value in runs[name]().items():
                samples[name].setdefault(key, []).append(value)
    return samples


def in_new_thread(run):
    """A run that does `run` in a fresh thread and waits for it, the way PipelineManager.stream()
    (and so the app) runs every generation."""
    def threaded() -> dict:
        results: list = []
        worker = threading.Thread(target=call_into, args=(run, results))
        worker.start()
        worker.join()
        if isinstance(results[0], BaseException):
            raise results[0]
        return results[0]
    return threaded


def call_into(run, results: list) -> None:
    """Append run()'s result, or the exception it raised, to `results`."""
    try:
        results.append(run())
    except BaseException as exc:  # handed to the waiting thread, raised there
        results.append(exc)


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so a clock read after it counts that work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class ForwardTimer:
    """Sums the wall time spent inside chosen modules' forward calls (pre/post forward hooks)."""

    def __init__(self, modules: dict[str, torch.nn.Module], device: str):
        self.device = device
        self.totals = {name: 0.0 for name in modules}
        self._started: dict[str, float] = {}
        self._handles = []
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
            self._handles.append(module.register_forward_hook(self._post_hook(name)))

    def _pre_hook(self, name: str):
        def hook(module, args) -> None:
            synchronize(self.device)
            self._started[name] = time.perf_counter()
        return hook

    def _post_hook(self, name: str):
        def hook(module, args, output) -> None:
            synchronize(self.device)
            self.totals[name] += time.perf_counter() - self._started.pop(name)
        return hook

    def reset(self) -> None:
        self.totals = dict.fromkeys(self.totals, 0.0)

    def total(self) -> float:
        return sum(self.totals.values())

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class GcTimer:
    """Sums the time the garbage collector runs (any generation, any thread) via gc.callbacks."""

    def __init__(self):
        self.seconds = 0.0
        self.full_collections = 0
        self._started: float | None = None
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self.full_collections += info["generation"] == 2
            self._started = None

    def reset(self) -> None:
        self.seconds, self.full_collections = 0.0, 0

    def remove(self) -> None:
        gc.callbacks.remove(self._callback)


def compute_modules(pipe) -> dict[str, torch.nn.Module]:
    """The modules whose forward calls are the pipeline's real work: the UNet, the text
    encoder(s) and the VAE's decoder path. The pipeline calls `vae.decode`, not `vae.forward`,
    so the hooks go on the decoder's own submodules."""
    found = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    if getattr(pipe, "text_encoder_2", None) is not None:
        found["text_encoder_2"] = pipe.text_encoder_2
    found["vae.decoder"] = pipe.vae.decoder
    if getattr(pipe.vae, "post_quant_conv", None) is not None:
        found["vae.post_quant_conv"] = pipe.vae.post_quant_conv
    return found


def rss_mb() -> float:
    """This process's resident set size (VmRSS) in MiB, from /proc/self/status; NaN elsewhere."""
    return proc_status_mb("VmRSS")


def proc_status_mb(field: str) -> float:
    """A kB field of /proc/self/status (VmRSS, VmHWM) in MiB; NaN where there is no /proc."""
    status = Path("/proc/self/status")
    if not status.exists():
        return float("nan")
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # the value is in kB
    return float("nan")


# ----- other work on the machine ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CpuSnapshot:
    machine_busy: float   # CPU-seconds all processes have used since boot (/proc/stat), NaN elsewhere
    own: float            # CPU-seconds of this process and its finished children
    wall: float


def cpu_snapshot() -> CpuSnapshot:
    times = os.times()
    own = times.user + times.system + times.children_user + times.children_system
    return CpuSnapshot(machine_busy_seconds(), own, time.perf_counter())


def machine_busy_seconds() -> float:
    """Busy CPU time of the whole machine (user, nice, system, irq, softirq, steal), in seconds."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return float("nan")
    fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    busy = sum(fields[i] for i in (0, 1, 2, 5, 6, 7) if i < len(fields))
    return busy / os.sysconf("SC_CLK_TCK")


def other_cores(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """Cores used on average by other processes between two snapshots: their work competes for
    the same cores and skews every timing taken meanwhile."""
    others = (after.machine_busy - before.machine_busy) - (after.own - before.own)
    return max(0.0, others / max(after.wall - before.wall, 1e-9))
