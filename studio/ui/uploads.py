"""Picture uploads that check a file from its header before anything decodes it, and name the
file and what is wrong with it (for API callers too)."""
from __future__ import annotations

import base64
import binascii

import gradio as gr
from PIL import Image

from studio import images
from studio.errors import StudioError
from studio.ui.cache import cached_file


class PictureUpload(gr.Image):
    """gr.Image for uploads that says what is wrong with a bad file, naming it.

    gr.Image decodes the upload before the event runs, so a zero-byte file, text named .png or a
    decompression bomb otherwise fails as "Could not preprocess input component at index N",
    which names neither the file nor the problem (for API callers too). The front end is the
    stock image widget (`is_template`)."""

    is_template = True
    argument = "image"  # the name error messages give it (Gradio builds props from __init__: not overridden)
    decode = True       # PNG info needs only the file (PngUpload)

    def get_block_name(self) -> str:  # the stock front end, for subclasses too (is_template looks one level up)
        return "image"

    get_block_class = get_block_name

    def preprocess(self, payload):
        if payload is not None and (payload.url or "").startswith("data:"):
            payload = self.inline_to_file(payload)  # Gradio would decode it before any check
        if payload is not None:
            self.check_header(payload)  # whatever route the file came by: upload, data: URL, API
        if not self.decode:
            return None if payload is None else payload.path
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Image.DecompressionBombError as exc:
            raise gr.Error(f"{self.argument}={upload_name(payload)!r} has too many pixels to decode "
                           f"safely ({exc}).") from exc
        except Exception as exc:
            raise gr.Error(f"{self.argument}={upload_name(payload)!r} could not be read as a picture "
                           f"({type(exc).__name__}: {exc}). Upload a PNG, JPEG or WebP file.") from exc


    def inline_to_file(self, payload):
        """A picture sent inline (a data: URL) as a file in the cache, its bytes as they came."""
        head, _, data = payload.url.partition(",")
        try:
            if not head.endswith(";base64"):
                raise ValueError("not base64")
            raw = base64.b64decode(data, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise gr.Error(f"{self.argument}=<data: URL> is not a base64 picture ({exc}).") from None
        return payload.model_copy(update={"path": cached_file(raw, "inline"), "url": None,
                                          "orig_name": payload.orig_name or "inline data: URL"})

    def check_header(self, payload) -> None:
        """Refuse a file that is no picture, or (when it will be decoded) one with too many
        pixels, from its header alone. A 680 KB PNG of 13376x13376 zeros, sent inline as a
        data: URL, was decoded to 4 GB before any check; now nothing is decoded to refuse it."""
        name = f"{self.argument}={upload_name(payload)!r}"
        try:
            with images.open_header(payload.path) as picture:  # no pixels yet
                if self.decode:
                    images.check_size(picture, name)
        except StudioError as exc:
            raise gr.Error(str(exc)) from None
        except images.READ_ERRORS as exc:
            raise gr.Error(f"{name} could not be read as a picture ({type(exc).__name__}: {exc}). "
                           "Upload a PNG, JPEG or WebP file.") from None


class PngUpload(PictureUpload):
    """The PNG info tab's upload: the file itself, never decoded (its text is all it needs), so
    a picture of any size can be read."""

    is_template = True
    decode = False


def upload_name(payload) -> str:
    """The name the person gave the upload, else the server's name for it."""
    return getattr(payload, "orig_name", None) or getattr(payload, "path", None) or "the upload"
