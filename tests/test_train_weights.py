"""training.train's per-latent-pixel loss weights (where the shape, and where its outline, is) and
its caption-swap windows (small shapes may have their own), --denoiser-seed, and resuming."""
import random
import re

import torch
from safetensors.torch import load_file

from studio import models
from training import shapes, train


def picture(scene: shapes.Scene) -> torch.Tensor:
    return torch.from_numpy(shapes.render_batch([scene])).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_the_shape_and_its_neighbours_weigh_more_and_the_far_background_one():
    square = picture(shapes.Scene("red", "square", "white", "large", "center", 12, 32, 32))  # pixels 20-44
    weights = train.foreground_weights(square, extra=4.0)[0, 0]
    assert weights.shape == (16, 16)
    assert weights[8, 8] == 5 and weights[4, 8] == 5  # inside, and one latent pixel past the edge (rows 5-10)
    assert weights[0, 0] == 1 and weights[15, 8] == 1


def test_the_edge_weight_lands_on_the_latent_pixels_the_outline_crosses_and_their_neighbours():
    circle = picture(shapes.Scene("blue", "circle", "yellow", "large", "center", 12, 32, 32))
    plain = train.foreground_weights(circle, extra=4.0)
    edged = train.foreground_weights(circle, extra=4.0, edge=3.0)
    assert torch.equal(train.foreground_weights(circle, extra=4.0, edge=0.0), plain)
    extra = (edged - plain)[0, 0]
    assert set(extra.unique().tolist()) == {0.0, 3.0}
    assert extra[8, 8] == 0 and extra[0, 0] == 0  # the middle of the circle, and far off: no outline
    assert extra[8, 5] == 3 and extra[5, 8] == 3  # across its left and top edges (x, y about 20)


def test_small_shapes_get_their_own_caption_swap_window_and_by_default_the_same_one():
    small = torch.tensor([True, False])
    args = train.parse_args(["--low-noise-full", "150", "--low-noise-until", "350",
                             "--small-low-noise-full", "40", "--small-low-noise-until", "120"])
    full, until = train.swap_windows(args, small)
    assert full.tolist() == [40, 150] and until.tolist() == [120, 350]
    full, until = train.swap_windows(train.parse_args([]), small)
    assert full.tolist() == [train.LOW_NOISE_FULL] * 2 and until.tolist() == [train.LOW_NOISE_UNTIL] * 2


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def trained_unet(tmp_path, name: str, *extra: str) -> dict[str, torch.Tensor]:
    """The UNet of a tiny run: one VAE step and one denoiser step."""
    train.main(["--work", str(tmp_path / name), "--out", str(tmp_path / name / "model"), "--images", "64",
                "--vae-steps", "1", "--vae-batch", "4", "--unet-steps", "1", "--unet-batch", "4",
                "--threads", "1", *extra])
    return load_file(str(tmp_path / name / "model" / "unet" / "diffusion_pytorch_model.safetensors"))


def test_the_denoiser_seed_draws_another_denoiser_on_the_same_phase_1_in_one_run(tmp_path):
    seed_1 = trained_unet(tmp_path, "one", "--denoiser-seed", "1")
    # --vae-from a seed's phase 1 with the denoiser seed off is --denoiser-seed seed + 1 on it: what
    # two processes did, one does.
    assert same_weights(seed_1, trained_unet(tmp_path, "from", "--vae-from", str(tmp_path / "one" / "model"),
                                             "--denoiser-seed", "off"))
    assert not same_weights(seed_1, trained_unet(tmp_path, "two", "--denoiser-seed", "2"))
    # The default is the bundled model's draw, 5; 'off' is one stream through both phases (v9p).
    plain = trained_unet(tmp_path, "plain")
    assert same_weights(plain, trained_unet(tmp_path, "five", "--denoiser-seed", "5"))
    assert not same_weights(plain, trained_unet(tmp_path, "stream", "--denoiser-seed", "off"))
    assert not same_weights(seed_1, plain)


def test_a_run_resumed_after_phase_1_trains_the_same_denoiser_as_one_uninterrupted_run(tmp_path):
    whole = trained_unet(tmp_path, "whole")
    trained_unet(tmp_path, "resumed")
    for name in ("denoiser.safetensors", "denoiser.log"):  # phase 1's VAE and latents stay, as v5-v8's runs had them
        (tmp_path / "resumed" / name).unlink()
    assert same_weights(whole, trained_unet(tmp_path, "resumed"))


def test_with_centre_place_keep_only_a_centred_shape_goes_unplaced_and_the_draws_stay_the_same():
    scenes = shapes.scenes(0, 2000, shapes.training_triples())
    plain = [shapes.caption(s, rng, train.CAPTION_KEEP) for rng in [random.Random(1)] for s in scenes]
    ruled = [shapes.caption(s, rng, train.CAPTION_KEEP, centre_keep=0.4) for rng in [random.Random(1)] for s in scenes]
    unplaced = [s for s, c in zip(scenes, ruled) if " the " not in c]
    assert unplaced and all(s.position == "center" for s in unplaced)
    centred = [c for s, c in zip(scenes, ruled) if s.position == "center"]
    assert 0.3 < sum("in the center" in c for c in centred) / len(centred) < 0.5  # kept with 0.4
    # Every other attribute is drawn as before: the captions differ only in their place phrase.
    place = re.compile(" (in the center|at the (" + "|".join(sorted(shapes.POSITIONS, key=len, reverse=True)) + "))")
    assert [place.sub("", c) for c in ruled] == [place.sub("", c) for c in plain]
    assert any(" the " not in c and s.position != "center" for s, c in zip(scenes, plain))  # without the rule


def test_the_model_folder_carries_its_guidance_interval_and_none_when_switched_off(tmp_path):
    trained_unet(tmp_path, "faded")
    source = models.ModelSource("faded", "folder", str(tmp_path / "faded" / "model"), "diffusers")
    assert models.model_defaults(source) == {"guidance_min_sigma": 0.2, "guidance_fade_sigma": 1.6}
    trained_unet(tmp_path, "faded", "--guidance-min-sigma", "0", "--guidance-fade-sigma", "0")  # resumed, saved again
    assert models.model_defaults(source) == {}
