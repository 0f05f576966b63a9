"""The user's evaluation set: a pool directory, an image folder or an .npz file of uint8 images."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dedup.errors import DedupError
from pool.images import decode_rgb, split_concatenated


@dataclass
class EvalSet:
    ids: list[str]  # names an overlap is reported with: pool sha256, relative path or npz#i
    byte_sha256: list[str | None]  # sha256 of the file's bytes (None for decoded arrays)
    load: Callable[[int], Image.Image]  # RGB image of item i

    def __len__(self) -> int:
        return len(self.ids)


def load_eval_set(path: str | Path) -> EvalSet:
    path = Path(path)
    if not path.exists():
        raise DedupError(f"{path}: evaluation set not found")
    if (path / "manifest.parquet").exists():
        return _from_pool(path)
    if path.is_dir():
        return _from_files(path, sorted(p for p in path.rglob("*") if _is_data_file(p)))
    if path.suffix == ".npz":
        return _from_npz(path)
    raise DedupError(f"{path}: evaluation set must be a pool, an image folder or an .npz file")


def _is_data_file(p: Path) -> bool:
    return p.is_file() and not any(part.startswith(".") for part in p.parts)


def _decode(data: bytes, where: str) -> Image.Image:
    try:
        return decode_rgb(data)
    except Exception as exc:
        raise DedupError(f"{where}: not a readable image ({type(exc).__name__})") from None


def _from_files(root: Path, files: list[Path], ids: list[str] | None = None) -> EvalSet:
    if not files:
        raise DedupError(f"{root}: evaluation set has no images")
    ids = ids or [str(p.relative_to(root)) for p in files]
    shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    return EvalSet(ids, shas, lambda i: _decode(files[i].read_bytes(), str(files[i])))


def _from_pool(root: Path) -> EvalSet:
    from pool.store import Pool

    pool = Pool.open(root)
    rows = pool.manifest().select(["sha256", "path", "status"]).to_pylist()
    rows = [r for r in rows if r["status"] != "invalid"]
    if not rows:
        raise DedupError(f"{root}: evaluation set has no images")
    shas, paths = [r["sha256"] for r in rows], [r["path"] for r in rows]
    # read through the pool: paths stay inside it and every file's sha256 is checked
    return EvalSet(shas, shas, lambda i: _decode(pool.read_bytes(paths[i]), str(root / paths[i])))


def _from_npz(path: Path) -> EvalSet:
    try:
        data = np.load(path, allow_pickle=False)
        keys = set(data.files)
        if "x" in keys:
            x = data["x"]
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
                raise DedupError(f"{path}: 'x' must be uint8 (N,H,W,3), got {x.dtype} {x.shape}")
            ids = [f"{path.name}#{i}" for i in range(len(x))]
            return EvalSet(ids, [None] * len(x), lambda i: Image.fromarray(x[i]))
        if {"jpeg", "offsets"} <= keys:  # the original files, concatenated
            items = split_concatenated(data["jpeg"], data["offsets"], str(path))
            ids = [f"{path.name}#{i}" for i in range(len(items))]
            shas = [hashlib.sha256(b).hexdigest() for b in items]
            return EvalSet(ids, shas, lambda i: _decode(items[i], ids[i]))
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DedupError(f"{path}: not a readable .npz ({type(exc).__name__})") from None
    raise DedupError(f"{path}: no 'x' array (uint8 N,H,W,3) and no 'jpeg'+'offsets' arrays")
