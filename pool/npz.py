"""The one reader of image .npz files, for every stage (pool import, dedup's evaluation set,
distill's datasets). Two forms:

    x        uint8 (N,H,W,3) or (N,H,W,1) pixels (grayscale is repeated to RGB)
    jpeg + offsets   the original files end to end, and the N+1 positions where each starts
    y        optional, N integer class indices (-1: unknown; whole-number floats accepted)
    class_names      optional, the names the indices point into

Encoded files are decoded by pool.images.decode_rgb (EXIF orientation, transparency on white,
16-bit grayscale, CMYK), the same as images in a pool. Every problem is a one-line PoolError
naming the file.
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pool.errors import InvalidImage, PoolError
from pool.images import DEFAULT_MAX_PIXELS, decode_rgb, split_concatenated


@dataclass
class NpzImages:
    path: Path
    labels: np.ndarray | None  # int64, -1 = unknown; None when the file has no 'y'
    class_names: list[str] | None
    pixels: np.ndarray | None = None  # the 'x' form, (N,H,W,3) uint8
    files: list[bytes] | None = None  # the 'jpeg' form, one encoded file per image

    def __len__(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.files)

    def name(self, i: int) -> str:
        return f"{self.path.name}#{i}"

    def encoded(self, i: int) -> bytes:
        """Image i as a file: the original bytes, or a PNG of its pixels."""
        if self.files is not None:
            return self.files[i]
        buf = io.BytesIO()
        Image.fromarray(self.pixels[i]).save(buf, "PNG")
        return buf.getvalue()

    def byte_sha256(self, i: int) -> str | None:
        """sha256 of image i's original file (None for the pixel form, which has no file)."""
        return hashlib.sha256(self.files[i]).hexdigest() if self.files is not None else None

    def rgb(self, i: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """Image i as 8-bit RGB, or PoolError naming it."""
        if self.pixels is not None:
            return Image.fromarray(self.pixels[i])
        try:
            return decode_rgb(self.files[i], max_pixels=max_pixels)
        except InvalidImage as exc:
            raise PoolError(f"{self.name(i)}: not a readable image ({exc})") from None


def loaded_bytes(path: str | Path) -> int:
    """What the arrays of an npz take once loaded, from their .npy headers (numpy allocates each
    array from its header before it reads and inflates the data), so a caller can refuse a
    file before loading it."""
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = np.lib.format.read_array_header_1_0
                    if version != (1, 0):
                        read = np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(fh)
                total += math.prod(shape) * dtype.itemsize
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise PoolError(f"{path}: not a readable .npz ({type(exc).__name__})") from None
    return total


def read_npz(path: str | Path) -> NpzImages:
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
        keys = set(archive.files)
    except FileNotFoundError:
        raise PoolError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise PoolError(f"{path}: not a readable .npz ({type(exc).__name__})") from None
    with archive:
        if "x" in keys:
            pixels, files = _pixels(_array(archive, "x", path), path), None
            count = len(pixels)
        elif {"jpeg", "offsets"} <= keys:
            blob, offsets = _array(archive, "jpeg", path), _array(archive, "offsets", path)
            pixels, files = None, split_concatenated(blob, offsets, str(path))
            count = len(files)
        else:
            raise PoolError(f"{path}: no 'x' array (uint8 N,H,W,3) and no 'jpeg'+'offsets' arrays")
        if count == 0:
            raise PoolError(f"{path}: no images in it")
        labels = _labels(_array(archive, "y", path), count, path) if "y" in keys else None
        names = (
            _names(_array(archive, "class_names", path), path) if "class_names" in keys else None
        )
    if labels is not None and names is not None and labels.max() >= len(names):
        raise PoolError(
            f"{path}: label {labels.max()} out of range for its {len(names)} class names"
        )
    return NpzImages(path, labels, names, pixels, files)


def _array(archive, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # object arrays: ValueError
        raise PoolError(f"{path}: '{key}' is not a plain array ({exc})") from None


def _pixels(x: np.ndarray, path: Path) -> np.ndarray:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3) or 0 in x.shape[1:]:
        raise PoolError(f"{path}: 'x' must be uint8 (N,H,W,3), got {x.dtype} {x.shape}")
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _labels(y: np.ndarray, count: int, path: Path) -> np.ndarray:
    """`y` as int64 class indices (-1 = unknown); whole-number floats are accepted."""
    if y.ndim != 1:
        raise PoolError(f"{path}: 'y' must be 1-D class indices, got shape {y.shape}")
    if len(y) != count:
        raise PoolError(f"{path}: 'y' has {len(y)} labels for {count} images")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise PoolError(f"{path}: 'y' has NaN or infinite labels")
    if y.dtype.kind not in "iuf" or (y != np.round(y)).any():
        raise PoolError(f"{path}: 'y' must be integer class indices, got {y.dtype} values")
    y = y.astype(np.int64)
    if y.min(initial=-1) < -1:
        raise PoolError(f"{path}: label {y.min()} is negative (-1 means unknown)")
    return y


def _names(names: np.ndarray, path: Path) -> list[str]:
    if names.dtype.kind != "U" or names.ndim != 1:
        raise PoolError(f"{path}: 'class_names' must be a list of strings")
    result = [str(n) for n in names]
    if len(set(result)) != len(result):
        raise PoolError(f"{path}: class names must be distinct, got {result}")
    return result
