"""Train a LoRA for the bundled model: every shape drawn further to the left, captions unchanged.

    python -m training.lora                        # models/loras/shift-left.safetensors, a few minutes on 2 cores

The base model stays frozen; peft adds rank-`--rank` adapters to the UNet's attention
projections and convolutions (`unet.add_adapter`), and only those train, on pictures drawn as
the caption says but with the shape's centre `--shift` pixels to the left (kept on the canvas:
a shape already at the left edge moves less). The loss is the base model's own (train.VLoss:
v-prediction, min-SNR, extra weight on the shape's pixels), with its caption dropout, so guidance
works with the LoRA too. The EMA adapters are saved in diffusers' LoRA format as one
.safetensors file, which `pipe.load_lora_weights` (and the studio's --lora-dir) reads. Only the
training pictures' (colour, shape, background) triples are drawn; the tests read the held-out
ones. This file only trains; tests/test_loras.py measures what the LoRA does.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig, get_peft_model_state_dict

from training import shapes, train

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("models/tiny-shapes"))
    p.add_argument("--out", type=Path, default=Path("models/loras/shift-left.safetensors"))
    p.add_argument("--work", type=Path, default=Path("training/runs/lora-shift-left"),
                   help="checkpoints and logs; an existing run here is resumed")
    p.add_argument("--shift", type=float, default=16.0, help="pixels (of 64) the shape moves left")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--images", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p.parse_args(argv)


def shifted(scene: shapes.Scene, pixels: float) -> shapes.Scene:
    return dataclasses.replace(scene, cx=max(scene.cx - pixels, scene.half + 1))


def dataset(args, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 64, 64) shifted pictures in [-1, 1] and the unshifted scenes' caption ids."""
    rng = random.Random(args.seed)
    scenes = shapes.scenes(args.seed, args.images, shapes.training_triples())
    pictures = torch.from_numpy(shapes.render_batch([shifted(s, args.shift) for s in scenes])).permute(0, 3, 1, 2)
    # the base model's caption rule: only a centred shape may go unplaced
    captions = [shapes.caption(s, rng, train.CAPTION_KEEP, centre_keep=train.CENTRE_PLACE_KEEP) for s in scenes]
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return pictures.float() / 127.5 - 1.0, ids


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    train.begin(args)
    started = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(args.model)
    pictures, ids = dataset(args, pipe.tokenizer)
    latents = train.encode_latents(pipe.vae, pictures, "cpu") * pipe.vae.config.scaling_factor
    pixel_weights = train.foreground_weights(pictures, 4.0)
    empty_ids = pipe.tokenizer("", padding="max_length", max_length=pipe.tokenizer.model_max_length,
                               return_tensors="pt").input_ids[0]

    model = train.Denoiser(pipe.unet, pipe.text_encoder).requires_grad_(False)
    pipe.unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                     target_modules=TARGETS))  # only the adapters require grad
    loss = train.VLoss()

    def loss_fn(g: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, len(latents), (args.batch,), generator=g)
        cond = ids[index].clone()
        cond[torch.rand(len(cond), generator=g) < train.CAPTION_DROPOUT] = empty_ids
        return loss(model, latents[index], loss.timesteps(len(index), g), cond, pixel_weights[index], g, "cpu")

    generator = torch.Generator().manual_seed(args.seed)
    ema = train.run_phase("lora", model, args.steps, args.lr, args.work, loss_fn, generator)
    # peft's own keys (lora_A/lora_B), which load_lora_weights reads as they are; diffusers' older
    # names (convert_state_dict_to_diffusers) would rename only the attention ones, and those are then lost
    layers = get_peft_model_state_dict(ema.unet)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(args.out.parent, unet_lora_layers=layers, weight_name=args.out.name,
                                              safe_serialization=True)
    summary = {"minutes": round((time.time() - started) / 60, 1), "torch_threads": torch.get_num_threads(),
               **{k: v if isinstance(v, (int, float)) else str(v) for k, v in vars(args).items()}}
    (args.work / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) after {summary['minutes']} min")


if __name__ == "__main__":
    main()
