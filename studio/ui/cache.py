"""The files the browser may fetch: copies in Gradio's cache under unguessable (seeded content
hash) names, written whole and once. The --outputs folder itself is never served."""
from __future__ import annotations

import io
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

from gradio.processing_utils import hash_bytes
from gradio.utils import get_upload_folder
from PIL import Image


def picture_file(image: Image.Image) -> str:
    """`image` as a PNG in Gradio's cache under its content's (seeded, unguessable) hash, written
    whole and only once; return this path instead of the PIL image.

    Gradio writes a returned PIL image to <cache>/<hash>/image.png on every return, truncating the
    file first. A picture shown twice (a settled step's x0 is also a filmstrip frame) was then
    served while being rewritten: h11's "Too little data for declared Content-Length" and a
    broken image that stayed broken. Files already in the cache are served as they are."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return cached_file(buffer.getvalue(), "image.png")


def served(path: str | None) -> str | None:
    """The copy of a file of the studio's own (a saved PNG, a grid, a viewer export) that the
    browser may fetch: in Gradio's cache under a folder named by the file's seeded content hash,
    with the file's own name (downloads keep it), made once and remade if pruned.

    The --outputs folder itself is never served: its names (00012-5.png) can be guessed, and
    another visitor would fetch them. A cached copy's URL can only be known to the session that
    was given it."""
    if path is None:
        return None
    source = Path(path)
    if is_cached(source):
        return str(source)
    # History re-serves every picture it lists at each change: read and hash a file only once
    stat = source.stat()
    key = (str(source.resolve()), stat.st_size, stat.st_mtime_ns)
    known = SERVED.get(key)
    if known is not None and touch(known):
        SERVED.move_to_end(key)
        return known
    SERVED[key] = copy = cached_file(source.read_bytes(), source.name)
    while len(SERVED) > SERVED_MEMO:
        SERVED.popitem(last=False)
    return copy


SERVED: OrderedDict = OrderedDict()  # (path, size, mtime) -> its cached copy, newest last


SERVED_MEMO = 4096


def touch(path) -> bool:
    """Mark a cached file as in use (the studio's cache pruning ages files by their time); False if
    it is gone, also when the pruning took it between a look and the touch."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def is_cached(path: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(get_upload_folder()).resolve())


def cached_file(data: bytes, name: str) -> str:
    """`data` as <Gradio cache>/<seeded hash of data>/<name>, written whole, only once."""
    path = Path(get_upload_folder()) / hash_bytes(data) / name
    if touch(path):
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.")
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.replace(staging, path)  # whole or not at all, even with another writer at the same time
    return str(path)
