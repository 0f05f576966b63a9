"""Evaluation-set decontamination: which pool images match an evaluation image.

The evaluation side is the small one, so it is augmented: each evaluation image is indexed as
itself and as crops (removing 7% and 12% of each side, at the corners and centre), each also
mirrored. A pool image matches when it has the same bytes or pixels as an evaluation image, or
when its hash is within the radius (inclusive) of any of those codes, or its features reach the
similarity threshold against any of those features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from dedup import binary_index, embeddings
from dedup.evalset import EvalSet
from dedup.hashing import HASH_KINDS, pixel_digest, to_codes
from pool.images import resize_center_crop

CROPS = [
    (frac, fx, fy)
    for frac in (0.07, 0.12)
    for fx, fy in ((0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5))
]


def variants(img: Image.Image, crops: bool = True) -> list[Image.Image]:
    """The image, its crops (when `crops`), and the mirror of each."""
    out = [img]
    if crops:
        w, h = img.size
        for frac, fx, fy in CROPS:
            cw, ch = round(w * (1 - frac)), round(h * (1 - frac))
            x, y = round((w - cw) * fx), round((h - ch) * fy)
            out.append(img.crop((x, y, x + cw, y + ch)))
    return out + [ImageOps.mirror(v) for v in out]


@dataclass
class EvalIndex:
    """Everything matched against: codes and features of every variant, with their owner item."""

    evalset: EvalSet
    byte_sha: dict[str, int]
    pixel_sha: dict[str, int]
    codes: np.ndarray  # (M * V, 8) uint8
    features: np.ndarray | None  # (M * V, D) float32
    per_item: int  # V: variants per item; rows of item i are i*V .. (i+1)*V-1


def prepare(
    evalset: EvalSet,
    hash_kind: str,
    extractor=None,
    crops: bool = True,
    progress: bool = False,
) -> EvalIndex:
    hash_fn = HASH_KINDS[hash_kind]
    size = getattr(extractor, "input_size", 32)
    byte_sha = {s: i for i, s in enumerate(evalset.byte_sha256) if s}
    pixel_sha, hexes, thumbs, feats = {}, [], [], []
    per_item = 0
    for i in tqdm(range(len(evalset)), disable=not progress, desc="evaluation set"):
        img = evalset.load(i)
        pixel_sha.setdefault(pixel_digest(img), i)
        vs = variants(img, crops)
        per_item = len(vs)
        hexes.extend(str(hash_fn(v)) for v in vs)
        if extractor is not None:
            thumbs.extend(np.asarray(resize_center_crop(v, size)) for v in vs)
            if len(thumbs) >= 4096:
                feats.append(extractor(np.stack(thumbs)))
                thumbs = []
    if extractor is not None and thumbs:
        feats.append(extractor(np.stack(thumbs)))
    features = embeddings.normalize(np.concatenate(feats)) if feats else None
    return EvalIndex(evalset, byte_sha, pixel_sha, to_codes(hexes), features, per_item)


@dataclass
class Overlap:
    eval_item: int
    reason: str  # exact-bytes, exact-pixels, hash or embedding
    hamming: int
    similarity: float | None


def find_overlaps(
    index: EvalIndex,
    byte_sha: list[str],
    pixel_sha: list[str],
    codes: np.ndarray,
    features: np.ndarray | None,
    radius: int,
    sim: float,
    method: str = "auto",
) -> dict[int, Overlap]:
    """{pool row: Overlap} for every pool image that matches an evaluation item."""
    matched: dict[int, tuple[int, str]] = {}
    if features is not None and index.features is not None:
        found = embeddings.similar(index.features, features, sim)
        for row, item in _best(found.query, found.db // index.per_item, -found.sim).items():
            matched[row] = (item, "embedding")
    if len(codes):
        bindex = binary_index.build_index(
            index.codes,
            binary_index.choose_method(len(index.codes), len(codes), radius, method),
            radius,
        )
        found = binary_index.range_search(bindex, codes, radius)
        for row, item in _best(found.query, found.db // index.per_item, found.dist).items():
            matched[row] = (item, "hash")
    for row, (pixels, data) in enumerate(zip(pixel_sha, byte_sha, strict=True)):
        if pixels in index.pixel_sha:
            matched[row] = (index.pixel_sha[pixels], "exact-pixels")
        if data in index.byte_sha:
            matched[row] = (index.byte_sha[data], "exact-bytes")
    out = {}
    for row, (item, reason) in matched.items():
        rows = slice(item * index.per_item, (item + 1) * index.per_item)
        ham = np.bitwise_count(codes[row] ^ index.codes[rows]).sum(axis=1).min()
        similarity = None
        if features is not None and index.features is not None:
            f = embeddings.normalize(features[row : row + 1])
            similarity = float((index.features[rows] @ f[0]).max())
        out[row] = Overlap(item, reason, int(ham), similarity)
    return out


def _best(rows: np.ndarray, items: np.ndarray, score: np.ndarray) -> dict[int, int]:
    """For each row, the item with the lowest score."""
    order = np.lexsort((score, rows))
    rows, items = rows[order], items[order]
    first = np.ones(len(rows), bool)
    first[1:] = rows[1:] != rows[:-1]
    return dict(zip(rows[first].tolist(), items[first].tolist(), strict=True))
