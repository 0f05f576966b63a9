"""Decoding through the pool against reference pixels: images built with numpy, encoded with
Pillow, stored in a pool, materialised, and compared to the uint8 array they should give."""

import io

import numpy as np
import pytest
from PIL import Image

from pool import NewImage, Pool, decode_rgb, materialize

SIDE = 16


def _encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _through_pool(tmp_path, data: bytes) -> np.ndarray:
    pool = Pool.create(tmp_path / "p")
    pool.add([NewImage(data, url="x")])
    return materialize(pool, size=SIDE).images[0]  # same size: no resampling


def _gray(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=-1).astype(np.uint8)


WIDE = np.linspace(0, 65535, SIDE * SIDE).round().astype(np.int64).reshape(SIDE, SIDE)
WIDE_AS_8BIT = _gray((WIDE + 128) // 257)  # 0..65535 scaled to 0..255, rounded


@pytest.mark.parametrize(
    "fmt, array",
    [
        ("PNG", WIDE.astype(np.uint16)),  # opens as I;16
        ("TIFF", WIDE.astype(">u2")),  # opens as I;16B
        ("TIFF", WIDE.astype(np.int32)),  # opens as I (32-bit)
    ],
    ids=["png-I;16", "tiff-I;16B", "tiff-I"],
)
def test_16_bit_grayscale_is_scaled_to_8_bits(tmp_path, fmt, array):
    data = _encode(Image.fromarray(array), fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert np.array_equal(_through_pool(tmp_path, data), WIDE_AS_8BIT)


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    index = np.zeros((SIDE, SIDE), np.uint8)
    index[:, 4:8], index[:, 8:] = 1, 2
    img = Image.fromarray(index, "P")
    img.putpalette([200, 0, 0, 0, 0, 255, 0, 120, 0])
    # index 0 fully transparent, 1 opaque, 2 half transparent
    data = _encode(img, "PNG", transparency=bytes([0, 255, 128]))
    expected = np.empty((SIDE, SIDE, 3), np.uint8)
    expected[:, :4] = (255, 255, 255)
    expected[:, 4:8] = (0, 0, 255)
    expected[:, 8:] = np.round(np.array([0, 120, 0]) * 128 / 255 + 255 * 127 / 255)
    got = _through_pool(tmp_path, data).astype(int)
    assert np.abs(got - expected).max() <= 1


@pytest.mark.parametrize("mode, value", [("L", 0), ("RGB", (0, 0, 0))], ids=["gray", "rgb"])
def test_transparent_colour_key_is_composited_on_white(tmp_path, mode, value):
    """A tRNS colour key (no alpha channel): pixels of that colour are transparent."""
    pixels = np.full((SIDE, SIDE), 90, np.uint8)
    pixels[:8] = 0  # the transparent colour
    img = Image.fromarray(pixels).convert(mode)
    data = _encode(img, "PNG", transparency=value)
    expected = _gray(np.where(pixels == 0, 255, 90))
    assert np.array_equal(_through_pool(tmp_path, data), expected)


def test_gray_with_alpha_is_composited_on_white(tmp_path):
    gray = np.full((SIDE, SIDE), 40, np.uint8)
    alpha = np.zeros((SIDE, SIDE), np.uint8)
    alpha[:, SIDE // 2 :] = 255
    data = _encode(Image.fromarray(np.stack([gray, alpha], -1), "LA"), "PNG")
    expected = _gray(np.where(alpha == 255, 40, 255))
    assert np.array_equal(_through_pool(tmp_path, data), expected)


def test_cmyk_jpeg_decodes_to_the_right_colours(tmp_path):
    cmyk = np.zeros((SIDE, SIDE, 4), np.uint8)
    cmyk[:8, :8] = (255, 0, 0, 0)  # cyan
    cmyk[:8, 8:] = (0, 255, 0, 0)  # magenta
    cmyk[8:, :8] = (0, 0, 255, 0)  # yellow
    cmyk[8:, 8:] = (0, 0, 0, 255)  # black
    data = _encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)
    expected = np.empty((SIDE, SIDE, 3), np.uint8)
    expected[:8, :8], expected[:8, 8:] = (0, 255, 255), (255, 0, 255)
    expected[8:, :8], expected[8:, 8:] = (255, 255, 0), (0, 0, 0)
    got = _through_pool(tmp_path, data).astype(int)
    assert np.abs(got - expected).max() <= 8


@pytest.mark.parametrize("fmt, tolerance", [("PNG", 0), ("JPEG", 8)])
def test_exif_orientation_is_applied(tmp_path, fmt, tolerance):
    stored = np.zeros((SIDE, 2 * SIDE, 3), np.uint8)  # as stored: wide, white on the left
    stored[:, :SIDE] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(Image.fromarray(stored), fmt, exif=exif.tobytes(), quality=95)
    shown = np.rot90(stored, k=-1)  # tall: white on top
    assert np.abs(np.asarray(decode_rgb(data), int) - shown).max() <= tolerance
    # materialize crops the centre square of the tall image: the white half's lower part on top
    got = _through_pool(tmp_path, data).astype(int)
    assert np.abs(got - shown[SIDE // 2 : SIDE // 2 + SIDE]).max() <= tolerance
