"""Small generated images for the dedup tests (real pixels, real encoders)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def smooth(seed: int, size: int = 32) -> Image.Image:
    """A natural-looking (smooth) random image; distinct seeds give unrelated images."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return small.resize((size, size), Image.Resampling.BICUBIC)


def textured(seed: int, size: int = 32) -> Image.Image:
    """A random image with detail at several scales; distinct seeds give unrelated images."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    fine = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    coarse = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), np.float32)
    fine = np.asarray(fine.resize((size, size), Image.Resampling.BICUBIC), np.float32)
    return Image.fromarray(np.clip(0.6 * coarse + 0.4 * fine, 0, 255).astype(np.uint8))


def crop(img: Image.Image, frac: float, fx: float, fy: float) -> Image.Image:
    """Remove `frac` of each side, the window placed at (fx, fy) in [0, 1]."""
    w, h = img.size
    cw, ch = round(w * (1 - frac)), round(h * (1 - frac))
    x, y = round((w - cw) * fx), round((h - ch) * fy)
    return img.crop((x, y, x + cw, y + ch))


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()
