"""Build or extend a pool from an image folder or a .npz array file (`kd3 pool import`)."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pool.classes import ClassList
from pool.errors import InvalidImage, PoolError
from pool.images import inspect_image, split_concatenated
from pool.store import NewImage, Pool


@dataclass
class ImportReport:
    pool: Pool
    seen: int = 0
    added: int = 0
    already_present: int = 0
    skipped: list[str] = field(default_factory=list)  # "path: reason" when --skip-invalid


def import_into_pool(
    source: str | Path,
    out: str | Path,
    classes: list[str] | None = None,
    skip_invalid: bool = False,
    progress: bool = False,
    follow_symlinks: bool = False,
) -> ImportReport:
    """Import every image of `source` into the pool at `out`; all or nothing.

    Every input is read and validated before anything is written, so a bad input leaves the
    pool as it was (unless `skip_invalid`, which leaves bad files out and lists them). In a
    folder, a symbolic link to a file outside it is such a bad input unless `follow_symlinks`.
    """
    source = Path(source)
    if not source.exists():
        raise PoolError(f"{source}: no such file or directory")
    if source.is_dir():
        names, items, skipped = _read_folder(
            source, classes, skip_invalid, progress, follow_symlinks
        )
    else:
        names, items, skipped = _read_npz(source, classes, progress)
    pool = Pool.create(out, ClassList.from_names(names) if names else None)
    result = pool.add(items)
    return ImportReport(
        pool=pool,
        seen=len(items),
        added=len(result.added),
        already_present=len(result.already_present),
        skipped=skipped,
    )


def _read_npz(path: Path, classes: list[str] | None, progress: bool):
    try:
        archive = np.load(path, allow_pickle=False)
        keys = set(archive.files)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise PoolError(f"{path}: not a readable .npz ({type(exc).__name__})") from None
    labels = _labels(_array(archive, "y", path), path) if "y" in keys else None
    names = classes or (
        [str(n) for n in _array(archive, "class_names", path)] if "class_names" in keys else None
    )
    if "x" in keys:
        x = _array(archive, "x", path)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise PoolError(f"{path}: 'x' must be uint8 (N,H,W,3), got {x.dtype} {x.shape}")
        count, encoded = len(x), (_png_bytes(img) for img in x)
    elif {"jpeg", "offsets"} <= keys:  # compact form: the original JPEG files, concatenated
        blob, offsets = _array(archive, "jpeg", path), _array(archive, "offsets", path)
        files = split_concatenated(blob, offsets, str(path))
        count, encoded = len(files), iter(files)
    else:
        raise PoolError(f"{path}: no 'x' array (expected uint8 images of shape N,H,W,3)")
    if count <= 0:
        raise PoolError(f"{path}: no images in it")
    if labels is not None and len(labels) != count:
        raise PoolError(f"{path}: 'y' has {len(labels)} labels for {count} images")
    if labels is not None and names is None:
        names = [str(i) for i in range(int(labels.max()) + 1)]
    if labels is not None and names and labels.max(initial=-1) >= len(names):
        raise PoolError(f"{path}: label {labels.max()} out of range for {len(names)} classes")
    items = []
    for i, data in enumerate(tqdm(encoded, total=count, disable=not progress, desc="read")):
        label = int(labels[i]) if labels is not None else -1
        items.append(
            NewImage(
                data=data,
                url=f"npz:{path.name}#{i}",
                source="import",
                class_index=label,
                class_name=names[label] if label >= 0 else None,
            )
        )
        _validate(items[-1], path)
    return names, items, []


def _array(archive, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # object arrays: ValueError
        raise PoolError(f"{path}: '{key}' is not a plain array ({exc})") from None


def _labels(y: np.ndarray, path: Path) -> np.ndarray:
    """`y` as int64 class indices (-1 = unknown); whole-number floats are accepted."""
    if y.ndim != 1:
        raise PoolError(f"{path}: 'y' must be 1-D class indices, got shape {y.shape}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise PoolError(f"{path}: 'y' has NaN or infinite labels")
    if y.dtype.kind not in "iuf" or (y != np.round(y)).any():
        raise PoolError(f"{path}: 'y' must be integer class indices, got {y.dtype} values")
    y = y.astype(np.int64)
    if y.min(initial=-1) < -1:
        raise PoolError(f"{path}: label {y.min()} is negative (-1 means unknown)")
    return y


def _png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(buf, "PNG")
    return buf.getvalue()


def _read_folder(
    root: Path, classes: list[str] | None, skip_invalid: bool, progress: bool, follow_symlinks: bool
):
    """Class per sub-folder (root/<class>/...); files directly in root have no class."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    folder_classes = sorted({p.relative_to(root).parts[0] for p in files if p.parent != root})
    names = classes or folder_classes or None
    unknown = set(folder_classes) - set(names or [])
    if unknown:
        raise PoolError(f"{root}: sub-folders {sorted(unknown)} are not in --classes {names}")
    items, skipped = [], []
    real_root = root.resolve()
    for path in tqdm(files, disable=not progress, desc="read"):
        class_name = path.relative_to(root).parts[0] if path.parent != root else None
        try:
            real = path.resolve()
            if not follow_symlinks and not real.is_relative_to(real_root):
                raise PoolError(
                    f"{path}: symbolic link to {real}, outside the imported folder "
                    "(--follow-symlinks imports it)"
                )
            item = NewImage(
                data=real.read_bytes(),
                url=str(real),
                source="import",
                keyword=class_name or "",
                class_name=class_name,
            )
            _validate(item, path)
        except PoolError as exc:
            if not skip_invalid:
                raise
            skipped.append(str(exc))
            continue
        items.append(item)
    return names, items, skipped


def _validate(item: NewImage, where: Path) -> None:
    try:
        inspect_image(item.data)
    except InvalidImage as exc:
        label = where if item.url.startswith("/") else f"{where} ({item.url})"
        raise PoolError(f"{label}: {exc}") from None
