"""Diffusion Studio's benchmark: `python -m benchmarks.benchmark [--device cuda] [--model M] [--quick]`.

Measures, in one run, the studio against raw diffusers, preview cost, the compute floor, the
gradio_client round trip, cold starts, memory, throughput under concurrent clients and scaling
with steps and resolution; prints a markdown table and writes RESULTS.md, results.json and
scaling.png (with --quick: RESULTS-quick.md, results-quick.json, scaling-quick.png) to --out.
Variants are interleaved within each repeat; every figure is a median with its min–max spread.

It is a measuring script, not a test: a missed goal is reported as FAIL; a section that breaks
is reported too and the others still run, and then the exit status is 1. It does not tune or
change the studio.
"""
from __future__ import annotations

import argparse
import operator
import os
import sys
import time
import traceback
from pathlib import Path

from studio.config import DEFAULT_MODEL

HERE = Path(__file__).resolve().parent
SECTIONS = ("1", "2", "3", "4", "5", "6", "7", "8", "10", "11", "12", "13", "14", "15")  # 9, the headline, comes with 1


def build_parser() -> argparse.ArgumentParser:
    """The command line: device, model, repeats, --quick, sections and where to write."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps, xpu or auto (default: cpu)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="diffusers folder or Hub id (default: the bundled model)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats per timing (default 7)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and clients, for CI (under ~2 minutes)")
    parser.add_argument("--tiny-vae", default=None, help="TAESD id or folder: also measure 'tiny' previews")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections to run (default: all)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the results (default: benchmarks/)")
    return parser


def prepare_environment(model: str) -> None:
    """Before diffusers and gradio are imported: no analytics, and offline for a local model."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if Path(model).expanduser().exists():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def log(started: float, text: str) -> None:
    """Progress on stderr, so stdout carries only the table."""
    print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)


class Run:
    """One benchmark run: the figures so far, the sections that broke, and how many cores other
    processes used during each section (their work skews the timings taken meanwhile)."""

    def __init__(self, only: set[str]):
        self.only = only
        self.started = time.perf_counter()
        self.figures: list = []
        self.panels: list = []
        self.failures: dict[str, str] = {}
        self.other_load: dict[str, float] = {}

    def section(self, number: str, title: str, measure, *args) -> None:
        """Run one section if it was asked for; a section that raises is reported, not fatal."""
        if number not in self.only:
            return
        from benchmarks.measure import cpu_snapshot, other_cores

        log(self.started, f"section {number}: {title}")
        before = cpu_snapshot()
        try:
            result = measure(*args)
        except Exception as exc:  # one broken section must not lose the others' results
            traceback.print_exc()
            self.failures[f"{number}. {title}"] = f"{type(exc).__name__}: {exc}".strip()[:500]
            result = []
        self.other_load[f"{number}. {title}"] = round(other_cores(before, cpu_snapshot()), 2)
        if isinstance(result, tuple):  # scaling also returns the plot's panels
            result, self.panels = result
        self.figures += result


def in_process_sections(run: Run, manager, plan) -> None:
    """Sections 1, 2, 3, 6 (trajectory size), 8, 10 and 11 on the loaded manager."""
    from benchmarks import explain, generation

    raw = generation.load_raw_pipeline(manager) if run.only & {"1", "3"} else None
    run.section("1", "studio vs raw diffusers", generation.studio_vs_diffusers, manager, raw, plan)
    run.section("2", "preview cost", generation.preview_cost, manager, plan)
    run.section("3", "compute floor", generation.compute_floor, manager, raw, plan)
    run.section("6", "trajectory size", generation.trajectory_sizes, manager, plan)
    run.section("8", "scaling", generation.scaling, manager, plan)
    run.section("10", "what branching and the CFG lens keep", generation.kept_state, manager, plan)
    run.section("11", "what recording attention costs", explain.attention_cost, manager, plan)
    run.section("14", "what prompt weighting costs", explain.weighting_cost, manager, plan)
    run.section("15", "what a loaded LoRA costs", explain.lora_cost, manager, plan)


def serving_sections(run: Run, manager, plan) -> None:
    """Sections 4, 7 and 13 on an in-process app, 12 in Chromium, then 5 and 6 in new processes."""
    from benchmarks import explain, serving

    with serving.scratch_folder() as scratch:
        if run.only & {"4", "7", "13"}:
            with serving.running_app(manager, scratch) as url:
                run.section("4", "round trip", serving.round_trip, manager, url, plan)
                run.section("7", "throughput", serving.throughput, manager, url, plan)
                run.section("13", "the A1111 API's round trip", serving.a1111_round_trip, manager, url, plan)
        run.section("12", "scrub at screen speed", explain.scrub_latency, manager, plan)
        run.section("5", "cold start of the CLI", serving.cold_start_cli, manager, plan, scratch)
        run.section("5", "cold start of the app", serving.cold_start_app, manager, plan, scratch)
    run.section("6", "memory (fresh processes)", serving.memory, manager, plan)


def run_settings(args, manager, plan, run: Run, load_at_start: str) -> dict:
    """How this run was made, for RESULTS.md and results.json."""
    from benchmarks.report import command_line, load_average, now
    from studio import devices

    return {"command": command_line(), "date": now(), "seconds": time.perf_counter() - run.started,
            "model": args.model, "device": devices.describe(manager.device),
            "dtype": devices.dtype_name(manager.dtype), "quick": args.quick, "repeats": plan.repeats,
            "cold start repeats": plan.cold_repeats, "memory processes": plan.memory_runs,
            "clients": list(plan.clients), "requests per client": plan.requests_per_client,
            "scaling repeats": plan.scaling_repeats, "sections": args.only,
            "load average at start": load_at_start, "load average at end": load_average(),
            "cores used by other processes, by section": run.other_load}


def main(argv: list[str] | None = None) -> int:
    """Load the model once, run the chosen sections, print the table and write the files."""
    args = build_parser().parse_args(argv)
    prepare_environment(args.model)
    from benchmarks import report
    from benchmarks.plan import Plan
    from studio.config import Settings
    from studio.manager import PipelineManager

    load_at_start = report.load_average()
    run = Run(set(args.only.split(",")))
    plan = Plan.quick(args.repeats) if args.quick else Plan.full(args.repeats)
    manager = PipelineManager(Settings(model=args.model, device=args.device, tiny_vae=args.tiny_vae))
    manager.load()
    log(run.started, f"loaded {args.model} on {manager.device}")
    in_process_sections(run, manager, plan)
    serving_sections(run, manager, plan)
    run.figures.sort(key=operator.attrgetter("section"))  # stable: the order within a section stays
    suffix = "-quick" if args.quick else ""
    info, settings = report.machine(), run_settings(args, manager, plan, run, load_at_start)
    written = report.write_outputs(args.out, suffix, run.figures, info, settings, run.failures)
    if run.panels:
        written.append(report.scaling_plot(run.panels, args.out / f"scaling{suffix}.png"))
    print(report.markdown_table(run.figures))
    for name, error in run.failures.items():
        print(f"\nSection {name} could not be measured: {error}")
    log(run.started, "wrote " + ", ".join(str(path) for path in written))
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
