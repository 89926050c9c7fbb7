"""studio.images.prepare: every kind of input picture leaves as an upright RGB image of the asked
size, transparency on white and high bit depths scaled; unreadable or oversized pictures are
refused with a StudioError naming the argument, oversized ones before their pixels are decoded."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from studio.errors import StudioError
from studio.images import MAX_INPUT_PIXELS, prepare

W, H = 40, 30
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encoded(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def reopened(image: Image.Image, **params) -> Image.Image:
    """`image` as Pillow gives it back from a PNG file (info such as tRNS included)."""
    return Image.open(io.BytesIO(encoded(image, **params)))


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def halves(mode: str, left, right, size=(W, H)) -> Image.Image:
    """A picture whose left half is `left` and right half `right`."""
    image = Image.new(mode, size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


def left_and_right(image: Image.Image) -> tuple[tuple, tuple]:
    """The pixel at the middle of each half (away from the seam)."""
    array = pixels(image)
    return tuple(array[H // 2, W // 4]), tuple(array[H // 2, 3 * W // 4])


# ---------------------------------------------------------------- colour modes

def test_rgba_transparent_area_becomes_white():
    source = halves("RGBA", (255, 0, 0, 0), (0, 0, 255, 255))
    out = prepare(source, W, H)
    assert out.size == (W, H)
    assert left_and_right(out) == (WHITE, BLUE)


def test_la_transparent_area_becomes_white():
    out = prepare(halves("LA", (0, 0), (50, 255)), W, H)
    assert left_and_right(out) == (WHITE, (50, 50, 50))


def test_grayscale_gives_equal_channels():
    out = prepare(halves("L", 0, 77), W, H)
    assert out.size == (W, H)
    assert left_and_right(out) == ((0, 0, 0), (77, 77, 77))


def palette_image() -> Image.Image:
    image = halves("P", 0, 1)
    image.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    return image


def test_palette_without_transparency_keeps_its_colours():
    out = prepare(reopened(palette_image()), W, H)
    assert left_and_right(out) == (RED, BLUE)


def test_palette_transparent_index_becomes_white():
    source = reopened(palette_image(), transparency=0)
    assert source.mode == "P" and source.info["transparency"] == 0
    assert left_and_right(prepare(source, W, H)) == (WHITE, BLUE)


def test_rgb_png_transparent_colour_becomes_white():
    source = reopened(halves("RGB", RED, BLUE), transparency=RED)  # a tRNS chunk, no alpha channel
    assert source.mode == "RGB"
    assert left_and_right(prepare(source, W, H)) == (WHITE, BLUE)


def test_16bit_grayscale_scales_to_8_bits_instead_of_clipping():
    values = np.zeros((H, W), np.uint16)
    values[:, W // 2:] = 32768
    values[:10, :] = 65535
    source = reopened(Image.fromarray(values))
    assert source.mode == "I;16"
    array = pixels(prepare(source, W, H))
    assert tuple(array[20, 5]) == (0, 0, 0)
    assert tuple(array[20, 30]) == (128, 128, 128)
    assert tuple(array[2, 5]) == (255, 255, 255)


def test_dark_16bit_grayscale_stays_dark():
    source = Image.fromarray(np.full((H, W), 200, np.uint16))  # 200 of 65535: near black
    assert source.mode == "I;16"
    assert tuple(pixels(prepare(source, W, H))[0, 0]) == (1, 1, 1)


def test_32bit_integer_image_with_16bit_values_scales_to_8_bits():
    source = Image.fromarray(np.full((H, W), 32768, np.int32))
    assert source.mode == "I"
    assert tuple(pixels(prepare(source, W, H))[0, 0]) == (128, 128, 128)


def test_32bit_integer_image_with_8bit_values_keeps_them():
    source = Image.fromarray(np.full((H, W), 77, np.int32))
    assert tuple(pixels(prepare(source, W, H))[0, 0]) == (77, 77, 77)


def test_cmyk_becomes_rgb():
    out = prepare(halves("CMYK", (0, 0, 0, 0), (0, 255, 255, 0)), W, H)
    assert left_and_right(out) == (WHITE, RED)


# ---------------------------------------------------------------- orientation, size, sources

def exif_rotated(fmt: str, orientation: int) -> bytes:
    """A 60x40 grey picture with a red 12x12 marker in its stored top-left corner."""
    image = Image.new("RGB", (60, 40), (128, 128, 128))
    image.paste(RED, (0, 0, 12, 12))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(image, fmt, exif=exif.tobytes())


# orientation 6: shown turned 90 degrees clockwise, so the stored top-left lands top-right;
# orientation 8: turned counter-clockwise, so it lands bottom-left
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation, corner", [(6, (slice(0, 8), slice(32, 40))),
                                                 (8, (slice(52, 60), slice(0, 8)))])
def test_exif_rotated_picture_comes_out_upright(fmt, orientation, corner):
    out = prepare(exif_rotated(fmt, orientation), 40, 60)
    array = pixels(out)
    assert out.size == (40, 60)
    marker = array[corner].reshape(-1, 3).mean(axis=0)
    assert marker[0] > 200 and marker[1] < 60 and marker[2] < 60
    red_rows, red_cols = np.nonzero((array[..., 0] > 200) & (array[..., 1] < 60))
    assert red_rows.size > 0.8 * 144  # the marker is nowhere else
    assert np.ptp(red_rows) < 14 and np.ptp(red_cols) < 14


def test_mismatched_aspect_ratio_is_centre_cropped_not_stretched():
    source = Image.new("RGB", (100, 50), (0, 255, 0))
    source.paste(RED, (0, 0, 25, 50))
    source.paste(BLUE, (75, 0, 100, 50))
    out = prepare(source, 64, 64)
    array = pixels(out)
    assert out.size == (64, 64)
    # only the green middle square is left; Lanczos lets a little red and blue ring in at the edges
    assert (np.abs(array[:, 6:-6] - (0, 255, 0)) <= 2).all()
    assert array[:, 0, 0].max() < 128 and array[:, -1, 2].max() < 128  # stretched, they'd be 255


@pytest.mark.parametrize("kind", ["str path", "Path", "bytes"])
def test_path_and_bytes_sources_give_the_same_picture_as_a_pil_image(kind, tmp_path):
    image = halves("RGB", RED, BLUE, size=(48, 64))
    path = tmp_path / "in.png"
    path.write_bytes(encoded(image))
    source = {"str path": str(path), "Path": path, "bytes": path.read_bytes()}[kind]
    expected = pixels(prepare(image, 24, 32))
    np.testing.assert_array_equal(pixels(prepare(source, 24, 32)), expected)


# ---------------------------------------------------------------- refused inputs

def truncated_png() -> bytes:
    data = encoded(Image.effect_noise((64, 64), 64).convert("RGB"))
    return data[: len(data) // 2]


BAD_FILES = {
    "empty.png": b"",
    "truncated.png": truncated_png(),
    "notes.png": b"These are notes, not a picture.\n" * 10,
    "drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
                   b'<rect width="64" height="64" fill="red"/></svg>',
}


@pytest.mark.parametrize("filename", BAD_FILES)
def test_unreadable_file_is_refused_naming_the_argument_and_file(filename, tmp_path):
    path = tmp_path / filename
    path.write_bytes(BAD_FILES[filename])
    with pytest.raises(StudioError) as error:
        prepare(path, 64, 64, name="init_image")
    assert "init_image" in str(error.value) and filename in str(error.value)


def test_unreadable_bytes_are_refused_naming_the_argument():
    with pytest.raises(StudioError, match=r"init_image=<22 bytes>"):
        prepare(b"definitely not a PNG..", 64, 64, name="init_image")


def test_a_source_of_the_wrong_type_is_refused_naming_the_argument():
    with pytest.raises(StudioError, match=r"init_image='int' is not allowed"):
        prepare(42, 64, 64, name="init_image")


def test_zero_width_is_refused_naming_width():
    with pytest.raises(StudioError, match=r"width=0 is not allowed"):
        prepare(Image.new("RGB", (8, 8)), 0, 64)


def bilevel_png(width: int, height: int) -> bytes:
    """A real, valid all-black 1-bit PNG, compressed row by row (20000x20000 is ~60 KB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the packed bits
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture
def decode_calls(monkeypatch) -> list:
    """Records every pixel decode (ImageFile.load) made while the test runs."""
    calls = []
    original = ImageFile.ImageFile.load

    def load(self):
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


@pytest.mark.parametrize("side", [20000, 9000])  # 400 M pixels; 81 M, under Pillow's own limit
def test_oversized_png_is_refused_before_decoding(side, decode_calls):
    assert side * side > MAX_INPUT_PIXELS
    with pytest.raises(StudioError) as error:
        prepare(bilevel_png(side, side), 64, 64, name="init_image")
    assert "init_image" in str(error.value)
    assert decode_calls == []


def test_oversized_png_is_refused_when_pillows_own_limit_is_off(monkeypatch, decode_calls):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # as some libraries set it
    with pytest.raises(StudioError, match=r"init_image is 20000x20000 pixels"):
        prepare(bilevel_png(20000, 20000), 64, 64, name="init_image")
    assert decode_calls == []


def test_small_bilevel_png_made_the_same_way_is_accepted(decode_calls):
    out = prepare(bilevel_png(64, 48), 64, 48)
    assert (64, 48) in decode_calls  # the control: the spy sees decoding, and this PNG decodes
    assert out.size == (64, 48) and (pixels(out) == 0).all()
