"""Validate and decode image bytes with Pillow. Shared by the importer, the crawler and dedup."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pool.errors import InvalidImage

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"})
DEFAULT_MAX_PIXELS = 40_000_000  # refuse decompression bombs before decoding pixels
DEFAULT_MIN_SIDE = 8


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str  # Pillow's format name, e.g. "JPEG"
    frames: int


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open `data` lazily, refusing decompression bombs from the header alone."""
    if not data:
        raise InvalidImage("empty", "no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage("too_many_pixels", str(exc)) from None
    except UnidentifiedImageError:
        raise InvalidImage("not_an_image", "no known image signature") from None
    except Exception as exc:  # a known signature whose header is cut or broken
        raise InvalidImage("truncated_or_corrupt", f"{type(exc).__name__}: {exc}") from None
    try:
        check_size(*img.size, max_pixels=max_pixels, min_side=0)
    except InvalidImage:
        img.close()
        raise
    return img


def check_size(
    width: int,
    height: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> None:
    """Refuse an image of width x height pixels: too many pixels, or a side too short."""
    if width * height > max_pixels:
        raise InvalidImage("too_many_pixels", f"{width}x{height}")
    if min(width, height) < min_side:
        raise InvalidImage("too_small", f"{width}x{height}")


def inspect_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    formats: frozenset[str] = ALLOWED_FORMATS,
) -> ImageInfo:
    """Fully decode `data` (first frame) and return its size and format, or raise InvalidImage.

    The pixel count is checked from the header, before any pixel is decoded, so a small file
    that declares 30000x30000 pixels costs nothing.
    """
    with _open(data, max_pixels) as img:
        fmt = img.format or "?"
        if fmt not in formats:
            raise InvalidImage("format_not_allowed", fmt)
        width, height = img.size
        check_size(width, height, max_pixels=max_pixels, min_side=min_side)
        try:
            img.seek(0)
            img.load()  # decodes the pixels: truncated files fail here
        except Exception as exc:
            raise InvalidImage("truncated_or_corrupt", f"{type(exc).__name__}: {exc}") from None
        frames = getattr(img, "n_frames", 1)
    return ImageInfo(width=width, height=height, format=fmt, frames=frames)


BACKGROUND = (255, 255, 255)  # transparent areas are composited on white
_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit gray; "I" is read as 0..65535


def decode_rgb(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode the first frame as 8-bit RGB, or raise InvalidImage.

    EXIF orientation is applied; any transparency (alpha channel, palette or tRNS entry) is
    composited on BACKGROUND; 16-bit grayscale is scaled to 8 bits (0..65535 -> 0..255);
    CMYK goes through Pillow's conversion. Decompression bombs are refused as in inspect_image.
    """
    img = _open(data, max_pixels)
    try:
        img.seek(0)
        img = ImageOps.exif_transpose(img)
        if img.mode in _WIDE_GRAY:
            wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
            img = Image.fromarray(((wide + 128) // 257).astype(np.uint8), "L")
        elif img.has_transparency_data:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
            img = Image.alpha_composite(background, rgba)
        return img.convert("RGB")
    except Exception as exc:
        raise InvalidImage("truncated_or_corrupt", f"{type(exc).__name__}: {exc}") from None


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` and crop the centre square.

    Area averaging (BOX) when shrinking keeps small images faithful; bicubic when enlarging.
    """
    shrinking = min(img.size) >= size
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
    return ImageOps.fit(img, (size, size), method=method, centering=(0.5, 0.5))


EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
}


def extension_for(fmt: str) -> str:
    return EXTENSIONS.get(fmt, "img")


def split_concatenated(blob: np.ndarray, offsets: np.ndarray, where: str) -> list[bytes]:
    """The files of an npz's compact form: 'jpeg' holds the files' bytes end to end and
    'offsets' the N+1 rising positions where each starts (the last: where the bytes end)."""
    if (
        blob.dtype != np.uint8
        or blob.ndim != 1
        or offsets.dtype.kind not in "iu"
        or offsets.ndim != 1
        or len(offsets) < 2
        or offsets[0] < 0
        or offsets[-1] > len(blob)
        or (np.diff(offsets) < 0).any()
    ):
        raise InvalidImage(
            f"{where}: 'jpeg' must be bytes and 'offsets' N+1 rising positions in it"
        )
    bounds = offsets.tolist()
    return [blob[a:b].tobytes() for a, b in zip(bounds, bounds[1:], strict=False)]
