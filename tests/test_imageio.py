"""Odd and hostile inputs to `imageio.load_rgb`: every one either decodes to sane RGB or raises ImageLoadError."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from conftest import synthetic_lesion
from PIL import Image

from skinlesion.imageio import ImageLoadError, load_rgb


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds no pixel data (a few dozen bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_non_image_bytes_are_refused():
    with pytest.raises(ImageLoadError, match="not an image"):
        load_rgb(b"this is a CSV file, not a photo\n1,2,3\n")


def test_truncated_jpeg_is_refused_not_padded():
    data = _encode(synthetic_lesion(0, size=(200, 150)), "JPEG", quality=90)
    with pytest.raises(ImageLoadError, match="truncated|corrupt"):
        load_rgb(data[: len(data) // 2])


def test_one_pixel_image_decodes():
    img = load_rgb(Image.new("RGB", (1, 1), (10, 20, 30)))
    assert img.size == (1, 1) and img.getpixel((0, 0)) == (10, 20, 30)


@pytest.mark.parametrize("size", [(20000, 20000), (10000, 8000)])  # PIL's bomb guard; our 64 MP limit
def test_huge_png_is_refused_from_its_header_without_allocating(size):
    data = _png_header_only(*size)  # 400 MP would need 1.2 GB decoded
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ImageLoadError, match="refused"):  # PIL's bomb guard or our limit
            load_rgb(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2.0
    assert peak < 20_000_000


def test_huge_real_png_file_is_refused(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(path)  # 1-bit, compresses to a small file
    start = time.perf_counter()
    with pytest.raises(ImageLoadError, match="huge.png"):
        load_rgb(path)
    assert time.perf_counter() - start < 2.0


def test_rgba_transparency_is_composited_on_white():
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 200
    arr[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    img = load_rgb(_encode(Image.fromarray(arr, mode="RGBA"), "PNG"))
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (200, 0, 0)
    assert img.getpixel((0, 3)) == (255, 255, 255)


def test_palette_image_keeps_its_colours():
    pal = Image.new("P", (3, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    pal.putdata([0, 1, 2])
    img = load_rgb(_encode(pal, "PNG"))
    assert [img.getpixel((i, 0)) for i in range(3)] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    img = load_rgb(_encode(cmyk, "JPEG", quality=95))
    r, g, b = img.getpixel((8, 8))
    assert img.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16bit_grayscale_is_rescaled_not_clipped_to_white():
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    img = load_rgb(_encode(Image.fromarray(ramp), "PNG"))
    out = np.asarray(img)[..., 0].astype(int).ravel()
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out) >= 0)             # order kept
    assert (out == 255).mean() < 0.1              # PIL's plain convert('L') would make ~all of it 255


def test_grayscale_becomes_three_equal_channels():
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L")
    arr = np.asarray(load_rgb(_encode(gray, "PNG")))
    assert arr.shape == (8, 8, 3)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(Image.new("RGB", (40, 20), (120, 80, 60)), "JPEG", exif=exif)
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    assert load_rgb(data).size == (20, 40)


def test_missing_path_and_folder_are_named(tmp_path):
    with pytest.raises(ImageLoadError, match="nope.jpg: file not found"):
        load_rgb(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_rgb(tmp_path)


def test_float_and_uint16_arrays():
    as_float = load_rgb(np.full((5, 6, 3), 0.5, dtype=np.float32))
    assert as_float.size == (6, 5) and as_float.getpixel((0, 0)) == (128, 128, 128)
    as_u16 = load_rgb(np.full((5, 6), 65535, dtype=np.uint16))
    assert as_u16.getpixel((0, 0)) == (255, 255, 255)
