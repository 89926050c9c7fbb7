"""LoRA: the files in --lora-dir, the selection a request names, and the adapters on a pipeline.

A request picks LoRAs two ways, as AUTOMATIC1111 users do: its `loras` field ("shift-left:0.8,
other:1", what the UI's picker and `--lora NAME:W` fill) and `<lora:name:weight>` tags in the
prompt (taken out of the text before it is encoded; a tag's weight wins over the field's for the
same name). Files are found by name in --lora-dir (sub-folders too); only .safetensors are read,
and a pickle (.pt, .ckpt, .bin, .pth, whatever its suffix says) is refused unless --trust-pickle,
as checkpoints are (studio.models). Loading is diffusers' `load_lora_weights` through peft, one
adapter per file; a run sets the adapters it names and their weights (`set_adapters`), and a run
that names none unloads them all, so the base model's pixels are exactly what they were. The hash
is A1111's for LoRA files (sha256 of the tensors after the safetensors header, its first 12
hex digits), written into the PNG as `Lora hashes`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import warnings
from pathlib import Path

from studio.errors import StudioError, bad_argument

TAG = re.compile(r"<lora:([^:>]*)(?::([^:>]*))?(?::[^>]*)?>")
WEIGHT_LOW, WEIGHT_HIGH = -2.0, 2.0
MAX_LORAS = 8            # LoRAs in one request
MAX_LOADED = 8           # adapters kept on the pipeline between runs
PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth", ".pkl")


@dataclasses.dataclass(frozen=True)
class Picked:
    name: str
    weight: float
    path: Path | None = None
    hash: str = ""

    @property
    def adapter(self) -> str:
        """peft's name for it: letters, digits and _ only, and the file's hash, so a changed file
        is another adapter."""
        return re.sub(r"\W", "_", self.name) + "_" + self.hash[:8]


def weight_of(text: str, where: str, name: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        weight = float("nan")
    if not WEIGHT_LOW <= weight <= WEIGHT_HIGH:
        raise bad_argument(where, name, f"a LoRA weight in [{WEIGHT_LOW:g}, {WEIGHT_HIGH:g}] after the name "
                                        f"(got {text!r})")
    return weight


def parse_selection(text: str) -> list[tuple[str, float]]:
    """[(name, weight)] of a `loras` field: "name:0.8, other" (weight 1 when left out)."""
    picked: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.rpartition(":") if ":" in part else (part, "", "1")
        name = name.strip()
        if not name:
            raise bad_argument("loras", text, "LoRA names with optional weights, like shift-left:0.8, other:1")
        picked[name] = weight_of(weight.strip(), "loras", part)
    if len(picked) > MAX_LORAS:
        raise bad_argument("loras", text, f"at most {MAX_LORAS} LoRAs")
    return list(picked.items())


def text_of(picked: list[tuple[str, float]]) -> str:
    """A selection as the studio writes the field: "name:0.8, other:1"."""
    return ", ".join(f"{name}:{weight:g}" for name, weight in picked)


def normalise(text: str) -> str:
    """The field as the studio writes it, or StudioError naming it."""
    return text_of(parse_selection(text))


def strip_tags(prompt: str) -> str:
    return TAG.sub("", prompt)


def tags(prompt: str) -> list[tuple[str, float]]:
    """[(name, weight)] of the prompt's `<lora:name:weight>` tags (weight 1 when left out)."""
    return [(m[1].strip(), 1.0 if m[2] is None else weight_of(m[2], "prompt", m[0])) for m in TAG.finditer(prompt)]


def selection(field: str, prompt: str) -> list[tuple[str, float]]:
    """What a request picks: its field's LoRAs, then the prompt's tags (a tag's weight wins)."""
    picked = dict(parse_selection(field)) | dict(tags(prompt))
    if len(picked) > MAX_LORAS:
        raise bad_argument("loras", ", ".join(picked), f"at most {MAX_LORAS} LoRAs, with the prompt's tags")
    return list(picked.items())


class Library:
    """The LoRA files of one folder (--lora-dir), by name: the file's name without its suffix.

    The folder is walked when it is listed (the picker's "Refresh list", the API's list) and when a
    run names a LoRA the last walk did not find, or found and is gone; a run naming a known one
    reads no folder."""

    def __init__(self, folder: str | Path | None, trust_pickle: bool = False):
        self.folder = Path(folder) if folder else None
        self.trust_pickle = trust_pickle
        self._hashes: dict[tuple, str] = {}
        self._files: dict[str, Path] | None = None

    def files(self, fresh: bool = False) -> dict[str, Path]:
        if self._files is not None and not fresh:
            return self._files
        found: dict[str, Path] = {}
        if self.folder is not None and self.folder.is_dir():
            for path in sorted(self.folder.rglob("*")):
                if path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES) and path.is_file():
                    found.setdefault(path.stem, path)
        self._files = found
        return found

    def find(self, name: str) -> Path | None:
        path = self.files().get(name)
        if path is None or not path.is_file():
            path = self.files(fresh=True).get(name)
        return path

    def names(self) -> list[str]:
        """The LoRAs a request may name (pickles only with --trust-pickle), the folder walked now."""
        return [n for n, p in self.files(fresh=True).items() if self.trust_pickle or p.suffix.lower() == ".safetensors"]

    def resolve(self, picked: list[tuple[str, float]]) -> list[Picked]:
        out = []
        for name, weight in picked:
            path = self.find(name)
            if path is None:
                offered = ", ".join(self.names()) or "none"
                raise StudioError(f"lora={name!r} is not in --lora-dir ({self.folder}); it has: {offered}.")
            out.append(Picked(name, weight, path, self.short_hash(name, path)))
        return out

    def short_hash(self, name: str, path: Path) -> str:
        from studio.models import sniff_format

        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            fmt = sniff_format(path)
            if fmt == "pickle" and not self.trust_pickle:
                raise StudioError(f"lora={name!r} ({path.name}) is a pickle file (whatever its name says), which "
                                  "can run code when loaded; convert it to .safetensors, or pass --trust-pickle "
                                  "if you trust it.")
            if fmt == "unknown":
                raise StudioError(f"lora={name!r} ({path.name}) is neither a safetensors nor a pickle file.")
            self._hashes[key] = file_hash(path, fmt == "safetensors")[:12]
        return self._hashes[key]


def file_hash(path: Path, safetensors: bool) -> str:
    """A1111's LoRA hash: sha256 of a safetensors file's tensor data (after its header), so
    rewritten metadata keeps it; of the whole file for anything else."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if safetensors:
            f.seek(8 + int.from_bytes(f.read(8), "little"))
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hashes_text(picked: list[Picked]) -> str:
    """The PNG's `Lora hashes` value, as A1111 writes it: "name: hash, other: hash"."""
    return ", ".join(f"{p.name}: {p.hash}" for p in picked)


def hash_notes(text: str, library: Library) -> list[str]:
    """What a PNG's `Lora hashes` ("name: hash, ...") says of the LoRAs here: one missing, or another
    version of it (another hash), is a note; matching ones say nothing."""
    notes = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, theirs = (x.strip() for x in part.rpartition(":"))
        path = library.find(name)
        if path is None:
            notes.append(f"LoRA {name!r} (hash {theirs}) made this picture and is not in --lora-dir here.")
            continue
        try:
            ours = library.short_hash(name, path)
        except StudioError as exc:
            notes.append(str(exc))
            continue
        if ours != theirs:
            notes.append(f"LoRA {name!r} here has hash {ours}, the picture's had {theirs}: another version of it.")
    return notes


@contextlib.contextmanager
def quiet():
    """Without what every load says and no user can act on: a second adapter's "Already found a
    peft_config", and "No LoRA keys associated to CLIPTextModel" for a UNet-only LoRA."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            yield
    finally:
        diffusers_logging.set_verbosity(level)


class Adapters:
    """The LoRA adapters on one pipeline (and the pipelines made from it with `from_pipe`, which
    share its UNet and text encoder): `use(picked)` before each run."""

    def __init__(self, pipe, model_name: str):
        self.pipe, self.model_name = pipe, model_name
        self.loaded: list[str] = []        # adapter names, least recently used first
        self.active: tuple = ()            # ((adapter, weight), ...) last set

    def use(self, picked: list[Picked]) -> None:
        if not picked:
            self.unload()
            return
        if not hasattr(self.pipe, "load_lora_weights"):
            raise StudioError(f"model={self.model_name!r} ({type(self.pipe).__name__}) takes no LoRA.")
        for p in picked:
            if p.adapter not in self.loaded:
                self._load(p)
            self.loaded.remove(p.adapter)
            self.loaded.append(p.adapter)
        wanted = tuple((p.adapter, p.weight) for p in picked)
        if wanted != self.active:
            self.pipe.set_adapters([a for a, _ in wanted], adapter_weights=[w for _, w in wanted])
            self.active = wanted
        stale = [a for a in self.loaded[:-MAX_LOADED] if a not in dict(wanted)]
        if stale:
            self.pipe.delete_adapters(stale)
            self.loaded = [a for a in self.loaded if a not in stale]

    def _load(self, p: Picked) -> None:
        try:
            with quiet():
                self.pipe.load_lora_weights(str(p.path), adapter_name=p.adapter)
        except Exception as exc:  # diffusers and peft raise ValueError, KeyError, RuntimeError (shapes) ...
            self._forget(p.adapter)
            raise StudioError(f"lora={p.name!r} could not be loaded into model={self.model_name!r}: {exc}") from exc
        if not any(p.adapter in names for names in self.pipe.get_list_adapters().values()):
            raise StudioError(f"lora={p.name!r} has no weights that model={self.model_name!r} can use: "
                              "it was made for another kind of model.")
        self.loaded.append(p.adapter)

    def _forget(self, adapter: str) -> None:
        if any(adapter in names for names in self.pipe.get_list_adapters().values()):
            self.pipe.delete_adapters(adapter)

    def unload(self) -> None:
        """Every adapter off the pipeline: its layers are the base model's own again."""
        if self.loaded:
            self.pipe.unload_lora_weights()
        self.loaded, self.active = [], ()
