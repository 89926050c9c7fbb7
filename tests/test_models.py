"""studio.models: what a model name is, the pickle policy (by content, not by name, and before
anything is unpickled), offline loading of Hub ids and single files, families and fingerprints.

Everything is offline (conftest sets HF_HUB_OFFLINE=1) and uses the tiny random pipelines."""
from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from studio import models
from studio.errors import StudioError
from studio.requests import GenerationRequest
from tests import tiny_pipelines as tiny

REQUEST = GenerationRequest(prompt=tiny.PROMPT, num_inference_steps=2, seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pixels(manager) -> np.ndarray:
    return np.asarray(manager.generate(REQUEST).images[0])


# ---------------------------------------------------------------- resolve()

def test_diffusers_folder_resolves_as_folder(sd1_dir):
    source = models.resolve(str(sd1_dir))
    assert (source.kind, source.format, source.location) == ("folder", "diffusers", str(sd1_dir))


def test_folder_without_model_index_is_refused_naming_it(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(StudioError, match="model_index.json") as error:
        models.resolve(str(tmp_path))
    assert str(tmp_path) in str(error.value)


def test_safetensors_file_resolves_as_safetensors_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    source = models.resolve(str(path))
    assert (source.kind, source.format) == ("file", "safetensors")


def test_hub_id_resolves_as_hub():
    source = models.resolve("someone/some-model")
    assert (source.kind, source.location) == ("hub", "someone/some-model")


@pytest.mark.parametrize("name", ["../../etc/passwd", "/nonexistent/x.safetensors",
                                  "someone/missing.safetensors", "no-such-model", "owner/../x", ""])
def test_unknown_or_path_like_name_is_refused_naming_it(name):
    with pytest.raises(StudioError) as error:
        models.resolve(name)
    assert f"model={name!r}" in str(error.value)


# ---------------------------------------------------------------- the pickle policy

class PlantsMarker:
    """Unpickling this creates the marker file: a stand-in for a checkpoint that runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "code-ran"


WRITERS = {"torch.save": torch.save, "pickle.dump": lambda obj, path: pickle.dump(obj, path.open("wb"))}
NAMES = ["x.ckpt", "x.safetensors", "X.SAFETENSORS", "x.bin"]


def malicious(tmp_path, marker, writer: str, name: str) -> Path:
    """A checkpoint whose unpickling creates `marker`, written by `writer`, called `name`."""
    path = tmp_path / name
    WRITERS[writer]({"state_dict": {"w": torch.ones(2)}, "payload": PlantsMarker(marker)}, path)
    return path


@pytest.mark.parametrize("writer", WRITERS)
def test_malicious_checkpoint_really_creates_its_marker_when_unpickled(tmp_path, marker, writer):
    path = malicious(tmp_path, marker, writer, "x.ckpt")
    torch.load(path, weights_only=False) if writer == "torch.save" else pickle.loads(path.read_bytes())
    assert marker.exists()  # so the refusals below guard against something real


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("writer", WRITERS)
def test_pickle_checkpoint_is_refused_by_resolve_whatever_its_name(tmp_path, marker, writer, name):
    path = malicious(tmp_path, marker, writer, name)
    with pytest.raises(StudioError, match="--trust-pickle") as error:
        models.resolve(str(path))
    assert str(path) in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("writer", WRITERS)
def test_pickle_checkpoint_is_refused_by_the_manager(tmp_path, marker, make_manager, writer, name):
    with pytest.raises(StudioError, match="--trust-pickle"):
        make_manager(malicious(tmp_path, marker, writer, name))
    assert not marker.exists()


def test_trust_pickle_accepts_a_pickle_checkpoint_without_unpickling_it(tmp_path, marker):
    source = models.resolve(str(malicious(tmp_path, marker, "torch.save", "x.safetensors")),
                            trust_pickle=True)
    assert (source.kind, source.format) == ("file", "pickle")
    assert not marker.exists()


def pickled_folder(sd1_dir, tmp_path, marker, parts=("unet", "vae", "text_encoder")) -> Path:
    """A copy of the SD1 folder whose `parts` hold their weights as .bin pickles that plant
    `marker` when unpickled (plain weights when `marker` is None)."""
    folder = Path(shutil.copytree(sd1_dir, tmp_path / "pickled"))
    for part in parts:
        for weights in (folder / part).glob("*.safetensors"):
            payload = {} if marker is None else {"payload": PlantsMarker(marker)}
            state = {**load_file(str(weights)), **payload}
            bin_name = "pytorch_model.bin" if weights.stem == "model" else weights.stem + ".bin"
            torch.save(state, weights.with_name(bin_name))
            weights.unlink()
    return folder


def test_folder_with_only_pickle_weights_is_refused(sd1_dir, tmp_path, marker, make_manager):
    folder = pickled_folder(sd1_dir, tmp_path, marker)
    assert not any(folder.rglob("*.safetensors"))
    with pytest.raises(StudioError, match="--trust-pickle"):
        make_manager(folder)
    assert not marker.exists()


def test_folder_with_one_pickled_part_is_refused_naming_the_part(sd1_dir, tmp_path, marker):
    folder = pickled_folder(sd1_dir, tmp_path, marker, parts=("unet",))
    with pytest.raises(StudioError, match=r"--trust-pickle") as error:
        models.resolve(str(folder))
    assert "in unet;" in str(error.value)
    assert not marker.exists()


def test_trust_pickle_loads_a_folder_with_pickled_parts(sd1_dir, tmp_path, make_manager):
    folder = pickled_folder(sd1_dir, tmp_path, marker=None, parts=("unet",))
    manager = make_manager(folder, trust_pickle=True)
    assert manager.loaded.source.format == "pickle"
    assert manager.generate(REQUEST).images[0].size == (64, 64)


def test_safetensors_content_named_ckpt_sniffs_as_safetensors(tmp_path):
    path = tmp_path / "renamed.ckpt"
    save_file({"w": torch.ones(2)}, str(path))
    assert models.sniff_format(path) == "safetensors"


@pytest.mark.parametrize("content", [b"", b"just some text, no weights here"])
def test_other_content_sniffs_as_unknown(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    assert models.sniff_format(path) == "unknown"


# ---------------------------------------------------------------- Hub ids offline

def test_uncached_hub_id_offline_fails_clearly_and_keeps_the_current_model(sd1_dir, make_manager):
    manager = make_manager(sd1_dir)
    before = pixels(manager)
    with pytest.raises(StudioError) as error:
        manager.load("someone/not-cached-model")
    message = str(error.value)
    assert "someone/not-cached-model" in message and "cache" in message and "offline" in message
    assert "Error" not in message and "local_files_only" not in message  # no library internals
    assert manager.info.name == str(sd1_dir)
    np.testing.assert_array_equal(pixels(manager), before)


# ---------------------------------------------------------------- single files

@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory) -> Path:
    """The tiny SD1 pipeline as one original-layout .safetensors file."""
    return tiny.sd1_single_file(tiny.sd1_pipeline(), tmp_path_factory.mktemp("single") / "sd1.safetensors")


@pytest.fixture(scope="module")
def sd1_configs(sd1_dir, tmp_path_factory) -> Path:
    """The SD1 folder's configs and tokenizer without its weights: these must come from the file."""
    folder = Path(shutil.copytree(sd1_dir, tmp_path_factory.mktemp("configs") / "sd1"))
    for weights in folder.rglob("*.safetensors"):
        weights.unlink()
    return folder


@pytest.fixture(scope="module")
def folder_pixels(sd1_dir) -> np.ndarray:
    from studio.config import Settings
    from studio.manager import PipelineManager

    manager = PipelineManager(Settings(model=str(sd1_dir)))
    manager.load()
    return pixels(manager)


@pytest.mark.parametrize("name", ["sd1.safetensors", "SD1.SAFETENSORS", "sd1.ckpt"])
def test_single_file_with_model_config_loads_offline_and_matches_the_folder(
        name, sd1_file, sd1_configs, folder_pixels, tmp_path, make_manager):
    path = shutil.copy(sd1_file, tmp_path / name)  # diffusers reads by suffix; we read by content
    manager = make_manager(path, model_config=str(sd1_configs))
    assert manager.loaded.source.kind == "file" and manager.info.family == "sd1"
    np.testing.assert_array_equal(pixels(manager), folder_pixels)


def test_single_file_without_model_config_offline_asks_for_it(sd1_file, make_manager):
    with pytest.raises(StudioError, match="--model-config") as error:
        make_manager(sd1_file)
    assert str(sd1_file) in str(error.value)


def test_model_config_that_is_not_a_diffusers_folder_is_refused(sd1_file, tmp_path, make_manager):
    with pytest.raises(StudioError, match=r"model_config='.*' is not a diffusers folder"):
        make_manager(sd1_file, model_config=str(tmp_path))


# ---------------------------------------------------------------- family() and model_hash()

@pytest.mark.parametrize("build, expected", [
    (tiny.sd1_pipeline, "sd1"), (tiny.sd2_v_pipeline, "sd2"), (tiny.sdxl_pipeline, "sdxl"),
    (tiny.lcm_pipeline, "few-step"), (tiny.unet2d_pipeline, "unconditional")],
    ids=lambda value: getattr(value, "__name__", value))
def test_family_of_each_tiny_pipeline(build, expected):
    assert models.family(build()) == expected


def test_v_prediction_alone_does_not_make_sd2():
    from diffusers import DDIMScheduler

    pipe = tiny.sd1_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    assert models.family(pipe) == "sd1"


def test_model_hash_is_stable_across_calls(sd1_dir):
    source = models.resolve(str(sd1_dir))
    assert models.model_hash(source) == models.model_hash(source)
    assert len(models.model_hash(source)) == 10


def test_model_hash_differs_between_models(tiny_dirs):
    sd1, sd2 = (models.resolve(str(tiny_dirs[name])) for name in ("sd1", "sd2v"))
    assert models.model_hash(sd1) != models.model_hash(sd2)


def test_model_hash_differs_between_folders_with_the_same_configs_but_other_weights(sd1_dir, tmp_path):
    other = Path(shutil.copytree(sd1_dir, tmp_path / "finetuned"))
    weights = other / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v + 0.01 for k, v in load_file(str(weights)).items()}, str(weights))
    assert models.model_hash(models.resolve(str(other))) != models.model_hash(models.resolve(str(sd1_dir)))


def test_model_hash_of_a_folder_ignores_its_model_card_and_pictures(sd1_dir, tmp_path):
    """Editing the bundled model's card changed its hash, so a saved run refused to resume."""
    other = Path(shutil.copytree(sd1_dir, tmp_path / "documented"))
    (other / "README.md").write_text("# A model card\n")
    Image.new("RGB", (8, 8)).save(other / "samples.png")
    assert models.model_hash(models.resolve(str(other))) == models.model_hash(models.resolve(str(sd1_dir)))
    (other / "model_index.json").write_text((other / "model_index.json").read_text().replace("{", '{"x": 1, ', 1))
    assert models.model_hash(models.resolve(str(other))) != models.model_hash(models.resolve(str(sd1_dir)))


def test_model_hash_differs_between_small_files(tmp_path):
    hashes = set()
    for value in (1.0, 2.0):  # files under 1 MiB: AUTOMATIC1111's window would be empty
        path = tmp_path / f"{value}.safetensors"
        save_file({"w": torch.full((8,), value)}, str(path))
        hashes.add(models.model_hash(models.resolve(str(path))))
    assert len(hashes) == 2


def test_model_hash_of_a_large_file_starts_with_automatic1111s_old_hash(sd1_file):
    data = sd1_file.read_bytes()
    assert len(data) > 0x110000
    expected = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert models.model_hash(models.resolve(str(sd1_file)))[:8] == expected


def test_a_model_name_too_long_for_any_file_system_is_refused_by_name():
    """A 100,000-character name reached the file system ("File name too long")."""
    from studio import models
    from studio.errors import StudioError

    with pytest.raises(StudioError, match=r"model='aaaa.*' is 100,000 characters long; .* at most 1024"):
        models.resolve("a" * 100_000)
