"""Hamming range search over 64-bit codes with FAISS binary indexes.

Radius convention: a pair matches when its Hamming distance is <= radius (inclusive). FAISS
binary range search returns distances strictly below its threshold, so we pass radius + 1.

Methods:
  flat       IndexBinaryFlat: exhaustive (the brute-force baseline), exact.
  multihash  IndexBinaryMultiHash, 3 tables of 21 bits with nflip = radius // 3: exact by
             pigeonhole (a pair within radius differs in at most radius // 3 bits in one table).
  ivf        IndexBinaryIVF: approximate (a near pair in cells nprobe does not visit is missed),
             much faster on large sets.
  auto       flat while queries x database stays small; else multihash while the radius is
             at most 5 (nflip <= 1: few probes, measured fastest in bench/dedup_scale.py);
             else ivf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import faiss
import numpy as np
from tqdm import tqdm

from dedup.options import IndexMethod

BITS = 64
METHODS = get_args(IndexMethod)
FLAT_LIMIT = 2e11  # query-database pairs; about 90 s of exhaustive search on 2 cores


@dataclass
class Pairs:
    """Matches: query index, database index, Hamming distance (parallel arrays)."""

    query: np.ndarray
    db: np.ndarray
    dist: np.ndarray


def choose_method(n_db: int, n_queries: int, radius: int, method: str = "auto") -> str:
    if method not in METHODS:
        raise ValueError(f"unknown index method {method!r}; choose from {', '.join(METHODS)}")
    if method != "auto":
        return method
    if n_db * n_queries <= FLAT_LIMIT:
        return "flat"
    return "multihash" if radius // 3 <= 1 else "ivf"


def build_index(codes: np.ndarray, method: str, radius: int, nprobe: int | None = None):
    """A FAISS binary index over (N, 8) uint8 codes, ready for range search within `radius`."""
    if method == "flat":
        index = faiss.IndexBinaryFlat(BITS)
    elif method == "multihash":
        index = faiss.IndexBinaryMultiHash(BITS, 3, 21)
        index.nflip = radius // 3
    elif method == "ivf":
        nlist = int(min(4096, max(16, 1024 * (len(codes) / 1e6) ** 0.5)))
        # FAISS wants >= 39 training points per cell; small sets get fewer cells (one: exhaustive)
        nlist = max(1, min(nlist, len(codes) // 39))
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(BITS), BITS, nlist)
        sample = codes[np.random.default_rng(0).permutation(len(codes))[: 64 * nlist]]
        index.train(sample)
        index.nprobe = nprobe or max(1, nlist // 8)
    else:
        raise ValueError(f"unknown index method {method!r}")
    index.add(np.ascontiguousarray(codes))
    return index


def range_search(
    index,
    queries: np.ndarray,
    radius: int,
    chunk: int = 100_000,
    progress: bool = False,
    desc: str = "hash search",
) -> Pairs:
    """All (query, database) pairs with Hamming distance <= radius (inclusive)."""
    parts_q, parts_db, parts_d = [], [], []
    starts = range(0, len(queries), chunk)
    for start in tqdm(starts, disable=not progress, desc=desc, unit="chunk"):
        block = np.ascontiguousarray(queries[start : start + chunk])
        lims, dist, ids = index.range_search(block, radius + 1)  # FAISS: strictly below
        parts_q.append(
            np.repeat(np.arange(start, start + len(block)), np.diff(lims).astype(np.int64))
        )
        parts_db.append(ids)
        parts_d.append(dist)
    if not parts_q:
        return Pairs(*(np.empty(0, np.int64) for _ in range(3)))
    return Pairs(
        np.concatenate(parts_q).astype(np.int64),
        np.concatenate(parts_db).astype(np.int64),
        np.concatenate(parts_d).astype(np.int32),
    )


def near_pairs(
    codes: np.ndarray,
    mirror_codes: np.ndarray | None,
    radius: int,
    method: str = "auto",
    nprobe: int | None = None,
    progress: bool = False,
) -> Pairs:
    """Pairs i < j within `radius` among `codes`; a mirrored image counts as the same image."""
    queries = codes if mirror_codes is None else np.concatenate([codes, mirror_codes])
    index = build_index(
        codes, choose_method(len(codes), len(queries), radius, method), radius, nprobe
    )
    found = range_search(index, queries, radius, progress=progress, desc="duplicate search")
    i = found.query % len(codes)
    j = found.db
    keep = i != j
    lo, hi = np.minimum(i, j)[keep], np.maximum(i, j)[keep]
    return _min_per_pair(lo, hi, found.dist[keep])


def _min_per_pair(lo: np.ndarray, hi: np.ndarray, dist: np.ndarray) -> Pairs:
    """One entry per (lo, hi) pair with its smallest distance."""
    order = np.lexsort((dist, hi, lo))
    lo, hi, dist = lo[order], hi[order], dist[order]
    first = np.ones(len(lo), bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return Pairs(lo[first], hi[first], dist[first])
