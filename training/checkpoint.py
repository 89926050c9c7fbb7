"""Training checkpoints in safetensors: model, EMA and optimizer state, and the RNG, no pickle.

A checkpoint is one .safetensors file whose tensors are named `model.*`, `ema.*`, `opt.<i>.<key>`
and `rng`, with the step and optimizer step counts in its metadata. This is for resuming our own
training runs; it is not a general-purpose serialiser.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save(path: Path, step: int, model: torch.nn.Module, ema: torch.nn.Module,
         optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v.contiguous() for k, v in ema.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"opt.{index}.{key}"] = torch.as_tensor(value).contiguous()
    tensors["rng"] = generator.get_state()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"step": str(step)})
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def load(path: Path, model: torch.nn.Module, ema: torch.nn.Module,
         optimizer: torch.optim.Optimizer, generator: torch.Generator) -> int:
    """Restore everything saved by `save`; returns the step to continue from."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        step = int(f.metadata()["step"])
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state = optimizer.state_dict()
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, index, key = name.split(".", 2)
            state["state"].setdefault(int(index), {})[key] = value
    optimizer.load_state_dict(state)
    generator.set_state(tensors["rng"])
    return step
