"""Hashes and the Hamming radius convention with real FAISS binary indexes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from dedup import binary_index, grouping
from dedup.hashing import hamming, image_hashes, to_codes


def _smooth_image(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return small.resize((size, size), Image.Resampling.BICUBIC)


def test_mirror_hash_matches_hash_of_mirrored_image():
    img = _smooth_image(1)
    h, hm = image_hashes(img), image_hashes(ImageOps.mirror(img))
    assert h["phash_mirror"] == hm["phash"] and h["dhash_mirror"] == hm["dhash"]
    assert h["phash"] != hm["phash"]


def test_pixel_digest_ignores_encoding_but_not_pixels():
    img = _smooth_image(2)
    png, bmp = io.BytesIO(), io.BytesIO()
    img.save(png, "PNG")
    img.save(bmp, "BMP")
    a = image_hashes(Image.open(png))["pixel_sha256"]
    b = image_hashes(Image.open(bmp))["pixel_sha256"]
    assert a == b
    changed = np.asarray(img).copy()
    changed[0, 0, 0] ^= 1
    assert image_hashes(Image.fromarray(changed))["pixel_sha256"] != a


def _flip_bits(code: np.ndarray, n: int) -> np.ndarray:
    bits = np.unpackbits(code)
    bits[:n] ^= 1
    return np.packbits(bits)


@pytest.mark.parametrize("method", ["flat", "multihash", "ivf"])
@pytest.mark.parametrize("radius", [0, 3, 6])
def test_radius_is_inclusive_at_the_boundary(method, radius):
    rng = np.random.default_rng(radius)
    base = rng.integers(0, 256, (200, 8), dtype=np.uint8)
    at = _flip_bits(base[0], radius)  # exactly `radius` bits away: must match
    beyond = _flip_bits(base[1], radius + 1)  # one more: must not
    index = binary_index.build_index(base, method, radius, nprobe=10_000)
    found = binary_index.range_search(index, np.stack([at, beyond]), radius)
    pairs = set(zip(found.query.tolist(), found.db.tolist(), strict=True))
    assert (0, 0) in pairs
    assert (1, 1) not in pairs
    assert hamming(base[:1], at[None])[0] == radius


def test_near_pairs_counts_mirrored_codes_and_groups_chain():
    rng = np.random.default_rng(7)
    codes = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    mirrors = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    codes[1] = _flip_bits(codes[0], 2)
    codes[2] = _flip_bits(codes[1][::-1], 0)[::-1]  # identical to 1 -> chain 0-1-2
    mirrors[4] = codes[3]  # 4 is 3 mirrored
    found = binary_index.near_pairs(codes, mirrors, radius=2, method="flat")
    pairs = set(zip(found.query.tolist(), found.db.tolist(), strict=True))
    assert pairs == {(0, 1), (0, 2), (1, 2), (3, 4)}
    labels = grouping.components(6, found.query, found.db)
    assert labels[0] == labels[1] == labels[2] != labels[3] == labels[4] != labels[5]


def test_representative_is_largest_then_earliest():
    labels = np.array([0, 0, 0, 1, 1])
    area = np.array([100, 400, 400, 50, 50])
    fetched = np.array([1, 9, 5, 3, 2])
    assert grouping.representatives(labels, area, fetched).tolist() == [2, 2, 2, 4, 4]
    assert to_codes(["00000000000000ff"]).tolist() == [[0, 0, 0, 0, 0, 0, 0, 255]]
