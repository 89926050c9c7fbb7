"""A fresh process for the benchmark's memory figures: `python -m benchmarks.memory_probe --model M`.

It loads the model, runs one txt2img and reads its resident memory; then runs img2img on that
picture and decodes every step of the first run with the full VAE (what the viewer's export
does), and reads it again. It prints one JSON line. benchmarks/serving.py starts it; it is not
a benchmark by itself and times nothing.
"""
from __future__ import annotations

import argparse
import gc
import json

import torch

from benchmarks import plan as p
from benchmarks.measure import proc_status_mb, rss_mb


def settle() -> float:
    """RSS after garbage collection, so what is still referenced is what is counted."""
    gc.collect()
    return rss_mb()


def probe(model: str, device: str) -> dict:
    """Load, txt2img, read RSS; img2img and decode every step, read it again."""
    from studio import export
    from studio.config import Settings
    from studio.manager import PipelineManager
    from studio.requests import GenerationRequest

    manager = PipelineManager(Settings(model=model, device=device))
    manager.load()
    size = manager.loaded.native_size
    first = manager.generate(GenerationRequest(**p.request_arguments(size), seed=p.SEED))
    txt2img_mb = settle()
    manager.generate(GenerationRequest(**p.request_arguments(size), seed=p.SEED, image=first.images[0]))
    pairs = export.step_pictures(manager, first.trajectory, "full")
    report = {"txt2img_mb": txt2img_mb, "all_mb": settle(), "peak_mb": proc_status_mb("VmHWM"),
              "decoded": 2 * len(pairs),
              "weights_shared": manager.loaded.img2img.unet is manager.loaded.txt2img.unet}
    if manager.device.startswith("cuda"):
        report["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_probe")
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.model, args.device)))


if __name__ == "__main__":
    main()
