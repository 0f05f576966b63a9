"""Per-image hashes: exact pixel digest and 64-bit perceptual hashes of the image and its mirror.

A perceptual hash is 16 hex digits (imagehash's string form); as FAISS binary codes it is 8 bytes.
"""

from __future__ import annotations

import hashlib

import imagehash
import numpy as np
from PIL import Image, ImageOps

HASH_KINDS = {"phash": imagehash.phash, "dhash": imagehash.dhash}
HASH_COLUMNS = ["pixel_sha256", "phash", "phash_mirror", "dhash", "dhash_mirror"]


def pixel_digest(img: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and the size: equal for re-encodings that lose nothing."""
    rgb = img.convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}|".encode() + rgb.tobytes()).hexdigest()


def image_hashes(img: Image.Image) -> dict[str, str]:
    """Every hash dedup stores for one image (both kinds, so switching --hash needs no rehash)."""
    gray = img.convert("L")  # imagehash converts anyway; do it once for all four hashes
    mirror = ImageOps.mirror(gray)
    out = {"pixel_sha256": pixel_digest(img)}
    for kind, fn in HASH_KINDS.items():
        out[kind] = str(fn(gray))
        out[f"{kind}_mirror"] = str(fn(mirror))
    return out


def to_codes(hexes) -> np.ndarray:
    """16-hex-digit hashes -> (N, 8) uint8 FAISS binary codes."""
    joined = "".join(hexes)
    return np.frombuffer(bytes.fromhex(joined), dtype=np.uint8).reshape(-1, 8).copy()


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distance between two (N, 8) uint8 code arrays."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=1).astype(np.int32)
