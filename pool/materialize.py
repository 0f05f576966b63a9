"""Decode the kept images once into a resized uint8 array (N, size, size, 3), cached on disk.

The cache file is keyed by the size and the ordered list of kept sha256s, so it is rebuilt
exactly when the set of kept images changes, and opened memory-mapped otherwise.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from common.files import atomic_write
from pool.errors import InvalidImage, PoolError
from pool.images import decode_rgb, resize_center_crop
from pool.store import Pool

CACHE_FORMAT = 2  # bump when the decode/resize recipe changes


@dataclass
class Materialized:
    images: np.ndarray  # (N, size, size, 3) uint8, memory-mapped read-only
    sha256: list[str]
    class_index: np.ndarray  # (N,) int64, -1 where unknown
    path: str


def _decode_one(pool: Pool, row_path: str, size: int) -> np.ndarray:
    data = pool.read_bytes(row_path)  # refuses paths outside the pool and changed files
    try:
        img = decode_rgb(data)
    except InvalidImage as exc:
        raise PoolError(f"{pool.root / row_path}: cannot decode ({exc})") from None
    return np.asarray(resize_center_crop(img, size), dtype=np.uint8)


def _write_npy(fh, arrays, shape: tuple[int, ...]) -> None:
    """An .npy file of `shape` uint8, written row by row as `arrays` yields them (the whole
    array is never in memory)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
    np.lib.format.write_array_header_1_0(fh, {**header, "shape": shape})
    for arr in arrays:
        fh.write(np.ascontiguousarray(arr, dtype=np.uint8).tobytes())


def materialize(
    pool: Pool, size: int = 32, statuses: tuple[str, ...] = ("kept",), progress: bool = False
) -> Materialized:
    table = pool.manifest()
    table = table.filter(
        pc.is_in(table["status"], value_set=pa.array(list(statuses), type=pa.string()))
    )
    shas = table["sha256"].to_pylist()
    paths = table["path"].to_pylist()
    labels = np.asarray(table["class_index"].fill_null(-1).to_numpy(), dtype=np.int64)
    key = hashlib.sha256(
        f"{CACHE_FORMAT}|{size}|{','.join(statuses)}|{','.join(shas)}".encode()
    ).hexdigest()[:20]
    target = pool.cache_dir / f"images-{size}-{key}.npy"
    if not target.exists():
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as ex:
            decoded = ex.map(lambda p: _decode_one(pool, p, size), paths, chunksize=256)
            bar = tqdm(decoded, total=len(paths), disable=not progress, desc="decode")
            atomic_write(target, lambda fh: _write_npy(fh, bar, (len(paths), size, size, 3)))
        for old in pool.cache_dir.glob(f"images-{size}-*.npy"):
            if old != target:
                old.unlink(missing_ok=True)
    images = np.load(target, mmap_mode="r")
    return Materialized(images=images, sha256=shas, class_index=labels, path=str(target))
