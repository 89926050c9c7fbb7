"""LoRA (studio.loras) on the bundled model with its shift-left LoRA (training/lora.py): weight 0
and unloading leave the base pixels exactly, weight 1 moves the shape left (read by geometry),
the field and prompt syntax, refused files, the PNG and the command line."""
from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from studio import loras, metadata
from studio.config import REPO_ROOT, Settings
from studio.errors import StudioError
from studio.requests import GenerationRequest, check_inputs
from training import classify

LORA = "shift-left"
# Held-out (colour, shape, background) triples, placed where there is room to move left
PROMPTS = [f"a large {c} {s} {p} on a {b} background" for (c, s, b), p in zip(
    [("red", "circle", "blue"), ("green", "square", "white"), ("blue", "triangle", "yellow"),
     ("yellow", "circle", "purple"), ("purple", "square", "orange"), ("black", "square", "red"),
     ("white", "circle", "green"), ("orange", "square", "blue")],
    ["at the right", "in the center", "at the top right", "at the bottom right"] * 2)]


def run(manager, prompt: str, seed: int = 0, **options):
    return manager.generate(GenerationRequest(prompt=prompt, seed=seed, **options))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(int)


def centre_x(picture: np.ndarray) -> float | None:
    """The shape's centre, left to right, in pixels: its box where coverage passes 1/2."""
    _, foreground, alpha = classify.read_colours(picture.astype(np.uint8))
    cols = np.nonzero((alpha > 0.5).any(axis=0))[0] if foreground is not None else []
    return None if len(cols) == 0 else (cols.min() + cols.max() + 1) / 2


def test_the_bundled_lora_is_offered_and_small():
    library = loras.Library(Settings().lora_dir)
    assert library.names() == [LORA]
    assert library.files()[LORA].stat().st_size < 2_000_000


def test_weight_one_moves_the_shape_left_and_keeps_its_colours(bundled_manager):
    moves, colours = [], 0
    for k, prompt in enumerate(PROMPTS):
        base, shifted = run(bundled_manager, prompt, k), run(bundled_manager, prompt, k, loras=f"{LORA}:1")
        before, after = centre_x(pixels(base)), centre_x(pixels(shifted))
        moves.append(after - before if None not in (before, after) else 0.0)
        verdict = classify.classify(pixels(shifted).astype(np.uint8))
        colours += (verdict.colour, verdict.background) == tuple(prompt.split()[2:3] + prompt.split()[-2:-1])
    assert np.median(moves) <= -8, moves  # trained to move 16 px (of 64) left
    assert sum(m <= -4 for m in moves) >= 6, moves
    assert colours >= 6, colours


def test_weight_zero_and_unloading_give_the_base_pixels_exactly(bundled_manager):
    prompt = PROMPTS[0]
    base = pixels(run(bundled_manager, prompt))
    assert np.array_equal(pixels(run(bundled_manager, prompt, loras=f"{LORA}:0")), base)
    assert np.array_equal(pixels(run(bundled_manager, prompt + f" <lora:{LORA}:0>")), base)
    assert not np.array_equal(pixels(run(bundled_manager, prompt, loras=f"{LORA}:1")), base)
    assert bundled_manager.loaded.adapters.loaded  # loaded, and a run that names none takes it off
    assert np.array_equal(pixels(run(bundled_manager, prompt)), base)
    assert bundled_manager.loaded.adapters.loaded == []
    run(bundled_manager, prompt, loras=f"{LORA}:1")
    bundled_manager.unload_loras()
    assert np.array_equal(pixels(run(bundled_manager, prompt)), base)


def test_a_prompt_tag_gives_the_pixels_of_the_field(bundled_manager):
    prompt = PROMPTS[1]
    field = pixels(run(bundled_manager, prompt, loras=f"{LORA}:0.8"))
    assert np.array_equal(pixels(run(bundled_manager, f"{prompt} <lora:{LORA}:0.8>")), field)
    assert np.array_equal(pixels(run(bundled_manager, f"<lora:{LORA}:0.8>{prompt}", loras=f"{LORA}:0.2")), field)
    assert np.array_equal(pixels(run(bundled_manager, f"<lora:{LORA}> {prompt}")),  # weight 1 when left out
                          pixels(run(bundled_manager, prompt, loras=LORA)))


@pytest.mark.parametrize("text, expected", [
    ("", []), ("shift-left", [("shift-left", 1.0)]), ("a:0.8, b", [("a", 0.8), ("b", 1.0)]),
    (" a : -0.5 ,, ", [("a", -0.5)]), ("a:1, a:0.3", [("a", 0.3)]),
])
def test_the_field_reads_names_and_weights(text, expected):
    assert loras.parse_selection(text) == expected


@pytest.mark.parametrize("text, named", [
    ("a:x", "loras='a:x'"), ("a:3", "loras='a:3'"), (":1", "loras=':1'"), ("a:nan", "loras='a:nan'"),
    (", ".join(f"l{k}" for k in range(9)), "at most 8"),
])
def test_a_bad_field_is_refused_naming_it(text, named):
    with pytest.raises(StudioError, match=named.replace("(", r"\(")):
        check_inputs(GenerationRequest(prompt="a", loras=text))


def test_the_field_is_written_the_studios_way():
    assert check_inputs(GenerationRequest(prompt="a", loras=" b:0.50,c ")).loras == "b:0.5, c:1"


def test_prompt_tags_are_taken_out_of_the_text_and_win_over_the_field():
    prompt = "a red circle <lora:a:0.5> at the left <lora:b>"
    assert loras.strip_tags(prompt) == "a red circle  at the left "
    assert loras.selection("a:1, c:0.2", prompt) == [("a", 0.5), ("c", 0.2), ("b", 1.0)]
    with pytest.raises(StudioError, match=r"prompt=.*<lora:a:big>"):
        loras.tags("x <lora:a:big>")


def test_a_tag_is_no_token_of_the_prompt(bundled_manager):
    from studio import weighting

    tokenizer = bundled_manager.loaded.txt2img.tokenizer
    assert weighting.token_count(tokenizer, f"a red circle <lora:{LORA}:1>") == weighting.token_count(tokenizer, "a red circle")


def test_a_name_not_in_the_folder_is_refused_with_what_it_has_and_the_next_run_works(bundled_manager):
    with pytest.raises(StudioError, match=r"lora='nope' is not in --lora-dir .* it has: shift-left"):
        run(bundled_manager, "a red circle", loras="nope:1")
    with pytest.raises(StudioError, match="lora='../shift-left'"):
        run(bundled_manager, "a red circle <lora:../shift-left:1>")
    assert run(bundled_manager, "a red circle").images


def pickle_file(path):
    torch.save({"lora_unet_down.weight": torch.zeros(2)}, path)  # a torch zip (pickle) archive
    return path


def test_pickle_lora_files_are_refused_unless_trusted(tmp_path):
    pickle_file(tmp_path / "old.pt")
    pickle_file(tmp_path / "renamed.safetensors")
    library = loras.Library(tmp_path)
    assert library.names() == ["renamed"]  # by suffix; read, it is refused all the same
    for name in ("old", "renamed"):
        with pytest.raises(StudioError, match=rf"lora='{name}' .* is a pickle file .*--trust-pickle"):
            library.resolve([(name, 1.0)])
    assert [p.name for p in loras.Library(tmp_path, trust_pickle=True).resolve([("old", 1.0)])] == ["old"]


def test_a_lora_for_another_model_is_refused_and_the_model_still_draws(bundled_manager, tmp_path):
    library = bundled_manager.loras
    save_file({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 320),
               "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.zeros(320, 4)},
              str(tmp_path / "sd15.safetensors"))
    save_file({"some.other.weight": torch.zeros(3)}, str(tmp_path / "unrelated.safetensors"))
    bundled_manager.loras = loras.Library(tmp_path)
    try:
        for name in ("sd15", "unrelated"):
            with pytest.raises(StudioError, match=rf"lora='{name}'"):
                run(bundled_manager, "a red circle", loras=name)
            assert run(bundled_manager, "a red circle", seed=1).images
    finally:
        bundled_manager.loras = library


def test_the_hash_is_a1111s_of_the_tensors_so_new_metadata_keeps_it(tmp_path):
    tensors = {"w": torch.arange(6.0)}
    save_file(tensors, str(tmp_path / "a.safetensors"))
    save_file(tensors, str(tmp_path / "b.safetensors"), metadata={"ss_output_name": "renamed"})
    save_file({"w": torch.arange(6.0) + 1}, str(tmp_path / "c.safetensors"))
    library = loras.Library(tmp_path)
    a, b, c = (p.hash for p in library.resolve([("a", 1), ("b", 1), ("c", 1)]))
    data = (tmp_path / "a.safetensors").read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    assert a == b == hashlib.sha256(data[8 + header:]).hexdigest()[:12] != c


def test_the_folder_is_walked_again_only_for_a_name_it_did_not_have(tmp_path, monkeypatch):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    library = loras.Library(tmp_path)
    assert [p.name for p in library.resolve([("a", 1)])] == ["a"]
    walks = []
    real_rglob = Path.rglob
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: walks.append(self) or real_rglob(self, pattern))
    library.resolve([("a", 0.5)])
    assert walks == []  # a known name: no walk
    (tmp_path / "sub").mkdir()
    save_file({"w": torch.ones(2)}, str(tmp_path / "sub" / "b.safetensors"))
    assert [p.name for p in library.resolve([("a", 1), ("b", 1)])] == ["a", "b"]  # added since: found
    assert len(walks) == 1
    (tmp_path / "a.safetensors").unlink()
    with pytest.raises(StudioError, match=r"lora='a' is not in --lora-dir .*it has: b"):
        library.resolve([("a", 1)])  # gone since: said so, not a stale path
    assert loras.hash_notes("a: 0123456789ab", library)[0].startswith("LoRA 'a' (hash 0123456789ab) made this")


def test_the_png_records_the_pick_and_its_hash_and_reads_them_back(bundled_manager):
    result = run(bundled_manager, PROMPTS[0] + f" <lora:{LORA}:0.5>", loras=f"{LORA}:1")
    text = metadata.format_parameters(result, result.seeds[0])
    values = metadata.parse_parameters(text)
    short = bundled_manager.loras.resolve([(LORA, 1)])[0].hash
    assert values["LoRA"] == f"{LORA}:1" and values["Lora hashes"] == f"{LORA}: {short}"
    assert values["Prompt"].endswith(f"<lora:{LORA}:0.5>")  # as A1111 keeps it
    fields, notes = metadata.request_fields(values)
    assert notes == [] and fields["loras"] == f"{LORA}:1" and fields["prompt"] == result.request.prompt
    again = bundled_manager.generate(GenerationRequest(**fields))
    assert np.array_equal(pixels(again), pixels(result))


def test_a_png_without_loras_clears_the_pick_and_a_bad_one_is_a_note():
    fields, _ = metadata.request_fields(metadata.parse_parameters("a\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1"))
    assert fields["loras"] == ""
    fields, notes = metadata.request_fields(metadata.parse_parameters(
        'a\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, LoRA: "x:9"'))
    assert "loras" not in fields and notes[0].startswith("LoRA: 'x:9' cannot be used")


def test_the_command_line_takes_lora_name_weight(tmp_path):
    out = tmp_path / "left.png"
    done = subprocess.run([sys.executable, "-m", "studio", "generate", "--prompt", PROMPTS[0], "--seed", "0",
                           "--lora", f"{LORA}:1", "--lora", f"{LORA}:0.8", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    values = metadata.parse_parameters(metadata.parameters_in_file(out))
    assert values["LoRA"] == f"{LORA}:0.8" and values["Lora hashes"].startswith(f"{LORA}: ")
    bad = subprocess.run([sys.executable, "-m", "studio", "generate", "--prompt", "a", "--lora", "x:9",
                          "--out", str(tmp_path / "x.png")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "loras='x:9'" in bad.stderr and not (tmp_path / "x.png").exists()


def test_a_saved_run_keeps_its_loras_and_opens_with_them(bundled_manager, tmp_path):
    from studio import runs

    result = run(bundled_manager, PROMPTS[0], loras=f"{LORA}:1")
    runs.save(result, tmp_path / "run")
    opened = runs.load(tmp_path / "run")
    assert opened.request.loras == f"{LORA}:1" and opened.card["Lora hashes"] == result.card["Lora hashes"]


def test_png_info_notes_a_lora_missing_here_or_of_another_version(bundled_manager, tmp_path):
    from PIL import Image, PngImagePlugin

    from studio.ui import pnginfo_tab

    short = bundled_manager.loras.resolve([(LORA, 1)])[0].hash
    assert loras.hash_notes(f"{LORA}: {short}", bundled_manager.loras) == []
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f'a red circle <lora:{LORA}:1> <lora:gone:1>\nSteps: 20, Sampler: Euler, '
                                f'CFG scale: 7, Seed: 1, Lora hashes: "{LORA}: 000000000000, gone: 123456789abc"')
    Image.new("RGB", (64, 64)).save(tmp_path / "a1111.png", pnginfo=info)
    _, _, notes = pnginfo_tab.png_info(str(tmp_path / "a1111.png"), bundled_manager)
    assert f"LoRA '{LORA}' here has hash {short}, the picture's had 000000000000: another version of it." in notes
    assert "LoRA 'gone' (hash 123456789abc) made this picture and is not in --lora-dir here." in notes


def random_lora(pipe, folder, name: str) -> None:
    """A LoRA of random weights on the UNet and every text encoder of `pipe`, in diffusers' format."""
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(0)
    layers = {}
    for part in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, part, None)
        if module is None:
            continue
        targets = ["to_q", "to_k", "to_v", "to_out.0"] if part == "unet" else ["q_proj", "k_proj", "v_proj", "out_proj"]
        module.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=targets))
        layers[f"{part}_lora_layers"] = get_peft_model_state_dict(module)
    type(pipe).save_lora_weights(folder, weight_name=f"{name}.safetensors", safe_serialization=True, **layers)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_lora_on_the_unet_and_text_encoders_of_sd_and_sdxl_acts_and_unloads(family, tiny_dirs, make_manager, tmp_path):
    from tests import tiny_pipelines as tiny

    random_lora({"sd1": tiny.sd1_pipeline, "sdxl": tiny.sdxl_pipeline}[family](), tmp_path, "noise")
    manager = make_manager(tiny_dirs[family], lora_dir=str(tmp_path))
    ask = dict(prompt="a cat", seed=1, num_inference_steps=3)
    base = pixels(run(manager, **ask))
    assert not np.array_equal(pixels(run(manager, **ask, loras="noise:1")), base)
    assert np.array_equal(pixels(run(manager, **ask, loras="noise:0")), base)
    assert np.array_equal(pixels(run(manager, **ask)), base)
    start = run(manager, **ask).images[0]
    img2img = dict(ask, image=start, strength=0.7)
    assert not np.array_equal(pixels(run(manager, **img2img, loras="noise:1")), pixels(run(manager, **img2img)))


def test_two_loras_at_once_add_up(bundled_manager, tmp_path):
    """Two adapters active together: the LoRA at 0.5 twice (under two names) is the LoRA at 1,
    up to float rounding (peft adds each adapter's output in turn)."""
    import shutil

    source = bundled_manager.loras.files()[LORA]
    for name in ("left-a", "left-b"):
        shutil.copy(source, tmp_path / f"{name}.safetensors")
    library, bundled_manager.loras = bundled_manager.loras, loras.Library(tmp_path)
    try:
        both = run(bundled_manager, PROMPTS[0], loras="left-a:0.5, left-b:0.5")
        one = run(bundled_manager, PROMPTS[0], loras="left-a:1")
    finally:
        bundled_manager.loras = library
    assert both.card["Lora hashes"] == f"left-a: {one.card['Lora hashes'].split(': ')[1]}, left-b: " \
                                       f"{one.card['Lora hashes'].split(': ')[1]}"
    assert np.abs(pixels(both) - pixels(one)).max() <= 2
    assert centre_x(pixels(both)) < centre_x(pixels(run(bundled_manager, PROMPTS[0]))) - 8
