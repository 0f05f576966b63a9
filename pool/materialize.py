"""Decode the kept images once into a resized uint8 array (N, size, size, 3), cached on disk.

The cache file is keyed by the size and the ordered list of kept sha256s, so it is rebuilt
exactly when the set of kept images changes, and opened memory-mapped otherwise.

Building it streams: images are decoded CHUNK at a time (threads) and appended to
`<cache>.partial`, so memory holds one chunk whatever the pool's size, and a build that was
stopped (killed, out of disk) continues from the last whole row of its partial file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from pool.errors import InvalidImage, PoolError
from pool.images import decode_rgb, resize_center_crop
from pool.store import Pool

CACHE_FORMAT = 2  # bump when the decode/resize recipe changes
CHUNK = 512  # images decoded (and held) at a time while the cache is built


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


def _npy_header(shape: tuple[int, ...]) -> bytes:
    import io

    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
    np.lib.format.write_array_header_1_0(buffer, {**header, "shape": shape})
    return buffer.getvalue()


def _build_cache(pool: Pool, paths: list[str], size: int, target, progress: bool) -> None:
    """Write the .npy of `paths` decoded at `size` to `target`, through `target`.partial:
    resumed from its last whole row when one is there, renamed into place when complete."""
    header = _npy_header((len(paths), size, size, 3))
    row = size * size * 3
    partial = target.with_name(target.name + ".partial")
    done = 0
    if partial.exists() and partial.stat().st_size >= len(header):
        with open(partial, "rb") as fh:
            if fh.read(len(header)) == header:
                done = min(len(paths), (partial.stat().st_size - len(header)) // row)
    mode = "r+b" if done else "wb"
    with open(partial, mode) as fh, ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as ex:
        if not done:
            fh.write(header)
        fh.truncate(len(header) + done * row)  # drop a torn last row
        fh.seek(len(header) + done * row)
        bar = tqdm(total=len(paths), initial=done, disable=not progress, desc="decode")
        for start in range(done, len(paths), CHUNK):
            chunk = paths[start : start + CHUNK]
            for image in ex.map(lambda p: _decode_one(pool, p, size), chunk):
                fh.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
            fh.flush()
            bar.update(len(chunk))
        bar.close()
        os.fsync(fh.fileno())
    os.replace(partial, target)


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
        pool.cache_dir.mkdir(parents=True, exist_ok=True)
        # One builder at a time (two jobs on one pool): the other waits, then reads its cache.
        with open(target.with_name(target.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not target.exists():
                _build_cache(pool, paths, size, target, progress)
        for pattern in (f"images-{size}-*.npy", f"images-{size}-*.npy.partial"):
            for old in pool.cache_dir.glob(pattern):
                if not old.name.startswith(target.name):  # other image sets' caches
                    old.unlink(missing_ok=True)
    images = np.load(target, mmap_mode="r")
    return Materialized(images=images, sha256=shas, class_index=labels, path=str(target))
