"""Load and soak test of the running studio: `python -m benchmarks.load [--clients 8 --requests 10
--soak 300]`.

It starts `python app.py` on 127.0.0.1 with the bundled model (a fresh process, its own Gradio
cache folder, --no-save as on a Space), then:
1. load: N concurrent gradio_client sessions x M requests, mixing /txt2img, /img2img and
   /viewer_load; every request must succeed, every picture must equal the one its own request
   gives alone (made in this process by a PipelineManager with the same settings; each session
   uses another sampler, so shared scheduler state would show), and every viewer call must show
   that session's own last run;
2. queue: one long run plus more requests than --max-queue holds; the extra ones must be told
   "queue full" while the long run is still going, and the rest must finish;
3. soak: S generations in a row; the server's RSS after warm-up must grow less than 5%, and
   Gradio's cache must be pruned (no file older than --cache-max-age plus one pruning period).
It prints throughput and latency percentiles, writes a JSON (--json), and exits 1 if a check
failed. tests/test_load.py runs a short form. This module does not measure generation speed
alone (see benchmarks/benchmark.py).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import percentile
from benchmarks.appserver import Server, cache_files, no_save_folder, oldest_file, running_app
from benchmarks.calls import COLOURS, SHAPES, Call, pictures, pixels, plan, references, start_image
from studio.config import REPO_ROOT

REQUEST_TIMEOUT = 600
RSS_GROWTH_LIMIT = 0.05


# ---------------------------------------------------------------- the server


# ---------------------------------------------------------------- references, made in this process


# ---------------------------------------------------------------- load


def run_session(url: str, calls: list[Call], start: str, expected: dict) -> list[dict]:
    """One gradio_client session making its calls in order; each call's outcome and latency."""
    from gradio_client import Client

    # Only the answer's pictures are fetched: with download_files, gradio_client also downloads
    # every step preview a run streams, which took these clients half a core (a browser shows them
    # from another machine).
    client, records, last = Client(url, verbose=False, download_files=False), [], None
    for call in calls:
        began = time.perf_counter()
        record = {"client": call.client, "index": call.index, "kind": call.kind, "ok": False}
        try:
            if call.kind == "viewer":
                outputs = client.predict(None, "full", api_name="/viewer_load")
                # the session's own last run, seen through its x0 at the last step
                record["own_history"] = last is not None and np.array_equal(pixels(outputs[2]), expected[last][1])
                record["ok"] = record["own_history"]
            else:
                outputs = client.predict(**call.arguments(start), api_name="/" + call.kind)
                record["same_as_alone"] = np.array_equal(pixels(pictures(outputs[1])[0]["image"]),
                                                         expected[call.client, call.index][0])
                record["ok"] = record["same_as_alone"]
                last = (call.client, call.index)
        except Exception as exc:  # noqa: BLE001 - every failure is a counted result
            record["error"] = f"{type(exc).__name__}: {exc}"[:300]
        record["seconds"] = time.perf_counter() - began
        records.append(record)
    return records


def load_phase(url: str, sessions: list[list[Call]], starts: dict[int, str], expected: dict) -> dict:
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(sessions)) as pool:
        futures = [pool.submit(run_session, url, calls, starts[i], expected) for i, calls in enumerate(sessions)]
        records = [r for f in futures for r in f.result()]
    wall = time.perf_counter() - began
    generations = [r for r in records if r["kind"] != "viewer"]
    return {"requests": len(records), "failed": sum(not r["ok"] for r in records),
            "errors": [r for r in records if "error" in r][:10],
            "mismatched_pictures": sum(r.get("same_as_alone") is False for r in generations),
            "foreign_history": sum(r.get("own_history") is False for r in records if r["kind"] == "viewer"),
            "wall_seconds": wall, "requests_per_second": len(records) / wall,
            "generations_per_second": len(generations) / wall,
            "latency": latency(records), "latency_by_kind": {
                kind: latency([r for r in records if r["kind"] == kind]) for kind in ("txt2img", "img2img", "viewer")}}


def latency(records: list[dict]) -> dict:
    seconds = [r["seconds"] for r in records]
    if not seconds:
        return {}
    return {"count": len(seconds), **{f"p{q}": percentile(seconds, q / 100) for q in (50, 90, 99)},
            "max": max(seconds)}


# ---------------------------------------------------------------- queue bound

def queue_phase(url: str, max_queue: int, steps: int) -> dict:
    """A long run holds the model; then more requests than the queue holds, each from its own
    session. The extra ones must be refused while the long run is still going."""
    from gradio_client import Client

    long_call = Call(0, 0, "txt2img", "a red circle", seed=1, steps=150)
    holder = Client(url, verbose=False)
    long_job = holder.submit(**long_call.arguments(None), api_name="/txt2img")
    while long_job.status().code.name not in ("PROCESSING", "ITERATING", "PROGRESS", "FINISHED"):
        time.sleep(0.05)
    extra = max_queue + 3
    outcomes = [None] * extra

    def one(i: int) -> None:
        call = Call(i, 0, "txt2img", "a blue square", seed=i, steps=steps)
        client = Client(url, verbose=False)
        began = time.perf_counter()
        try:
            client.predict(**call.arguments(None), api_name="/txt2img")
            outcomes[i] = ("ok", time.perf_counter() - began, long_job.done())
        except Exception as exc:  # noqa: BLE001 - "queue full" is expected here
            outcomes[i] = (f"{type(exc).__name__}: {exc}"[:200], time.perf_counter() - began, long_job.done())

    workers = [threading.Thread(target=one, args=(i,)) for i in range(extra)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(REQUEST_TIMEOUT)
    long_ok = long_job.result(timeout=REQUEST_TIMEOUT) is not None
    refused = [o for o in outcomes if o and "queue" in o[0].lower() and "full" in o[0].lower()]
    served = [o for o in outcomes if o and o[0] == "ok"]
    return {"max_queue": max_queue, "sent_while_busy": extra, "refused_queue_full": len(refused),
            "served": len(served), "other_errors": [o[0] for o in outcomes if o and o not in refused + served],
            "refused_before_the_long_run_ended": all(not o[2] for o in refused),
            "refusal_seconds_max": max((o[1] for o in refused), default=None), "long_run_ok": long_ok}


# ---------------------------------------------------------------- soak


def soak_phase(server: Server, generations: int, steps: int, cache_max_age: int, start: str) -> dict:
    from gradio_client import Client

    from app import cache_policy
    from studio.config import Settings

    client = Client(server.url, verbose=False, download_files=False)
    warmup = max(5, generations // 10)
    rss, seconds, failures, seen_in_cache = [], [], 0, 0
    frequency, age = cache_policy(Settings(cache_max_age=cache_max_age))
    limit = age + frequency + 5  # a file may wait one pruning period; 5 s for a slow round
    began = time.perf_counter()
    i = 0
    # Pruning can only be judged once a file could have outlived the limit: a fast soak goes on
    # past it (the generations it took are the ones reported).
    while i < generations or time.perf_counter() - began <= limit + 1:
        call = Call(0, i, "img2img" if i % 4 == 3 else "txt2img", f"a {COLOURS[i % 6]} {SHAPES[i % 3]}",
                    seed=i, steps=steps)
        t0 = time.perf_counter()
        try:
            client.predict(**call.arguments(start), api_name="/" + call.kind)
        except Exception:  # noqa: BLE001 - counted
            failures += 1
        seconds.append(time.perf_counter() - t0)
        rss.append(server.rss_mb())
        seen_in_cache = max(seen_in_cache, len(cache_files(server.cache)))
        i += 1
    wall, generations = time.perf_counter() - began, i
    oldest, oldest_unsaved = oldest_file(server.cache), oldest_file(no_save_folder(server))
    settled = float(np.median(rss[warmup:warmup + 5]))
    final = float(np.median(rss[-5:]))
    return {"generations": generations, "failed": failures, "wall_seconds": wall,
            "generations_per_second": generations / wall, "latency": latency([{"seconds": s} for s in seconds]),
            "rss_mb_after_warmup": settled, "rss_mb_final": final, "rss_mb_max": max(rss),
            "rss_growth": (final - settled) / settled, "warmup_generations": warmup,
            # the RSS over the soak, a median per tenth of its generations: does it level off?
            "rss_mb_by_tenth": [round(float(np.median(part)), 1) for part in np.array_split(rss, 10)],
            "cache_max_age": age, "cache_prune_every": frequency,
            "cache_files_max": seen_in_cache, "cache_files_final": len(cache_files(server.cache)),
            "cache_oldest_file_seconds": oldest, "cache_pruned": wall > limit and oldest <= limit,
            "no_save_folder_files": len(cache_files(no_save_folder(server))),
            "no_save_oldest_file_seconds": oldest_unsaved, "no_save_pruned": wall > limit and oldest_unsaved <= limit}


# ---------------------------------------------------------------- the whole run

def run(clients: int = 8, requests: int = 10, soak: int = 300, steps: int = 8, max_queue: int | None = None,
        cache_max_age: int = 30, threads: int = 1, workdir: Path | None = None) -> dict:
    max_queue = max_queue or clients
    with contextlib.ExitStack() as stack:
        workdir = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="studio-load-")))
        sessions = plan(clients, requests, steps)
        starts = {c: start_image(workdir, c) for c in range(clients)}
        server = stack.enter_context(running_app(workdir, max_queue, cache_max_age, threads))
        expected = references(sessions, starts, threads)
        results = {"clients": clients, "requests_per_client": requests, "steps": steps, "threads": threads,
                   "load": load_phase(server.url, sessions, starts, expected),
                   "queue": queue_phase(server.url, max_queue, steps)}
        results["soak"] = soak_phase(server, soak, steps, cache_max_age, starts[0]) if soak else None
    results["checks"] = checks(results)
    return results


def ray_comparison(clients: int, requests: int, steps: int, replicas: int) -> dict:
    """`--ray`: the load phase against `app.py --ray --replicas N --replica-threads 1`, against one
    replica at 1 thread (the throughput ratio), and against the in-process studio at N threads
    (latency). Each picture is checked against its request run alone at the server's threads.
    Generations only (txt2img and img2img): the viewer's decoding is the front end's own work,
    which replicas do not share, so it would measure the front end, not the replicas."""
    configs = {f"ray, {replicas} replicas x 1 thread": (1, ("--ray", "--replicas", str(replicas))),
               "ray, 1 replica x 1 thread": (1, ("--ray", "--replicas", "1")),
               f"in-process, {replicas} threads": (replicas, ())}
    out = {}
    with tempfile.TemporaryDirectory(prefix="studio-load-ray-") as folder:
        workdir = Path(folder)
        sessions = plan(clients, requests, steps, kinds=("txt2img", "img2img"))
        starts = {c: start_image(workdir, c) for c in range(clients)}
        expected = {threads: references(sessions, starts, threads) for threads in {1, replicas}}
        for name, (threads, extra) in configs.items():
            with running_app(workdir, clients * requests, 30, threads, extra) as server:
                # the CPU the front end and these clients take from the cores the replicas share
                front, clients_cpu = server.cpu_seconds(), time.process_time()
                out[name] = load_phase(server.url, sessions, starts, expected[threads])
                wall = out[name]["wall_seconds"]
                out[name]["cores_used"] = {"front end": (server.cpu_seconds() - front) / wall,
                                           "benchmark clients": (time.process_time() - clients_cpu) / wall}
    ray_many, ray_one = list(out.values())[:2]
    return {"clients": clients, "requests_per_client": requests, "steps": steps, "replicas": replicas,
            "runs": out, "throughput_ratio": ray_many["generations_per_second"] / ray_one["generations_per_second"]}


def ray_report(results: dict) -> str:
    lines = [f"Ray Serve load: {results['clients']} clients x {results['requests_per_client']} requests, "
             f"{results['steps']} steps"]
    for name, load in results["runs"].items():
        figures = load["latency_by_kind"]["txt2img"] or load["latency"]
        lines.append(f"  {name:32s} {load['failed']} failed, {load['mismatched_pictures']} pictures unlike their "
                     f"run alone, {load['generations_per_second']:.2f} generations/s, txt2img p50 "
                     f"{figures['p50']:.2f} s p99 {figures['p99']:.2f} s; cores used by the front end "
                     f"{load['cores_used']['front end']:.2f}, by the clients {load['cores_used']['benchmark clients']:.2f}")
    lines.append(f"  throughput, {results['replicas']} replicas / 1: {results['throughput_ratio']:.2f}x (goal 1.6x)")
    return "\n".join(lines)


def checks(results: dict) -> dict[str, bool]:
    load, queue, soak = results["load"], results["queue"], results["soak"]
    found = {"every load request succeeded": load["failed"] == 0,
             "every picture equals its request run alone": load["mismatched_pictures"] == 0,
             "every viewer call showed its own session's run": load["foreign_history"] == 0,
             "a full queue answers 'queue full'": queue["refused_queue_full"] >= 1 and not queue["other_errors"],
             "'queue full' comes while the model is busy, not after": queue["refused_before_the_long_run_ended"],
             "requests the queue took were served": queue["served"] + queue["refused_queue_full"] == queue["sent_while_busy"]
             and queue["long_run_ok"]}
    if soak:
        found |= {"every soak generation succeeded": soak["failed"] == 0,
                  f"RSS grew less than {RSS_GROWTH_LIMIT:.0%} after warm-up": soak["rss_growth"] < RSS_GROWTH_LIMIT,
                  "Gradio's cache was pruned": soak["cache_pruned"],
                  "the --no-save folder was pruned": soak["no_save_pruned"]}
    return found


def report(results: dict) -> str:
    load, queue, soak = results["load"], results["queue"], results["soak"]
    lines = [f"load: {results['clients']} clients x {results['requests_per_client']} requests, "
             f"{results['steps']} steps: {load['requests']} requests, {load['failed']} failed, "
             f"{load['requests_per_second']:.2f} requests/s ({load['generations_per_second']:.2f} generations/s)"]
    for kind, figures in [("all", load["latency"]), *load["latency_by_kind"].items()]:
        if figures:
            lines.append(f"  latency {kind:8s} p50 {figures['p50']:.2f} s  p90 {figures['p90']:.2f} s  "
                         f"p99 {figures['p99']:.2f} s  (n={figures['count']})")
    lines.append(f"queue: max {queue['max_queue']}, {queue['sent_while_busy']} sent while busy: "
                 f"{queue['refused_queue_full']} refused 'queue full' (slowest answer "
                 f"{queue['refusal_seconds_max'] or 0:.2f} s), {queue['served']} served")
    if soak:
        lines.append(f"soak: {soak['generations']} generations, {soak['failed']} failed, "
                     f"{soak['generations_per_second']:.2f}/s, p50 {soak['latency']['p50']:.2f} s "
                     f"p90 {soak['latency']['p90']:.2f} s p99 {soak['latency']['p99']:.2f} s; RSS "
                     f"{soak['rss_mb_after_warmup']:.0f} -> {soak['rss_mb_final']:.0f} MB "
                     f"({soak['rss_growth']:+.1%}); Gradio cache at most {soak['cache_files_max']} files, "
                     f"oldest at the end {soak['cache_oldest_file_seconds']:.0f} s; --no-save folder holds "
                     f"{soak['no_save_folder_files']} files, oldest {soak['no_save_oldest_file_seconds']:.0f} s")
    lines += [f"  [{'ok' if ok else 'FAILED'}] {name}" for name, ok in results["checks"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=10, help="requests per client")
    p.add_argument("--soak", type=int, default=300, help="generations in the soak (0: no soak)")
    p.add_argument("--steps", type=int, default=8, help="denoising steps per generation")
    p.add_argument("--max-queue", type=int, default=None, help="the server's --max-queue (default: --clients)")
    p.add_argument("--cache-max-age", type=int, default=30, help="the server's --cache-max-age in seconds")
    p.add_argument("--threads", type=int, default=1, help="torch threads, in the server and the references")
    p.add_argument("--json", default=None, help="where the results go (default: benchmarks/load-results.json, "
                                                "with --ray load-ray-results.json)")
    p.add_argument("--ray", action="store_true", help="compare Ray Serve replicas (app.py --ray) with one replica "
                                                      "and with the in-process studio; load phase only")
    p.add_argument("--replicas", type=int, default=2, help="with --ray: replicas at 1 thread each")
    args = p.parse_args(argv)
    if args.ray:
        results = ray_comparison(args.clients, args.requests, args.steps, args.replicas)
        path = Path(args.json or REPO_ROOT / "benchmarks" / "load-ray-results.json")
        path.write_text(json.dumps(results, indent=2, default=str))
        print(ray_report(results))
        ok = all(r["failed"] == 0 and r["mismatched_pictures"] == 0 for r in results["runs"].values())
        return 0 if ok and results["throughput_ratio"] >= 1.6 else 1
    args.json = args.json or str(REPO_ROOT / "benchmarks" / "load-results.json")
    results = run(args.clients, args.requests, args.soak, args.steps, args.max_queue, args.cache_max_age,
                  args.threads)
    Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print(report(results))
    print(f"written: {args.json}")
    return 0 if all(results["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
