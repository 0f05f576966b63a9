"""The user's evaluation set: a pool directory, an image folder or an .npz file (read by
pool.npz, like every stage's npz: pixels or the original files, EXIF, alpha and gray handled)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dedup.errors import DedupError
from pool.errors import PoolError
from pool.images import decode_rgb
from pool.npz import read_npz


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
        images = read_npz(path)
    except PoolError as exc:
        raise DedupError(f"evaluation set {exc}") from None

    def load(i: int) -> Image.Image:
        try:
            return images.rgb(i)
        except PoolError as exc:
            raise DedupError(f"evaluation set {exc}") from None

    ids = [images.name(i) for i in range(len(images))]
    return EvalSet(ids, [images.byte_sha256(i) for i in range(len(images))], load)
