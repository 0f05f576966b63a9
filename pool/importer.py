"""Build or extend a pool from an image folder or a .npz file (`kd3 pool import`).

Every input is read, checked (decoded once, or for an npz's pixel array, checked by its shape)
and hashed once before anything is written, so a bad input leaves the pool as it was; then one
Pool.add stores everything, passing the checked size and hash along.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pool.classes import ClassList
from pool.errors import InvalidImage, PoolError
from pool.images import ImageInfo, check_size, inspect_image
from pool.npz import read_npz
from pool.options import ImportOptions
from pool.store import NewImage, Pool, sha256_hex


@dataclass
class ImportReport:
    pool: Pool
    seen: int = 0
    added: int = 0
    already_present: int = 0
    finds_recorded: int = 0  # images read twice under different names, or known under another
    skipped: list[str] = field(default_factory=list)  # "path: reason" with skip_invalid


def import_into_pool(
    source: str | Path,
    out: str | Path,
    options: ImportOptions | None = None,
    progress: bool = False,
) -> ImportReport:
    """Import every image of `source` (a folder, or an .npz) into the pool at `out`; all or
    nothing.

    A bad input leaves the pool as it was (with `skip_invalid`, bad files are left out and
    listed instead). In a folder, a symbolic link to a file outside it is such a bad input
    unless `follow_symlinks`. `progress` shows bars on stderr while reading and storing.
    """
    options = options or ImportOptions()
    source = Path(source)
    if not source.exists():
        raise PoolError(f"{source}: no such file or directory")
    if source.is_dir():
        names, items, skipped = _read_folder(source, options, progress)
    else:
        names, items, skipped = _read_npz(source, options.classes, progress)
    pool = Pool.create(out, ClassList.from_names(names) if names else None)
    with tqdm(total=len(items), disable=not progress, desc="store", unit="img") as bar:
        result = pool.add(items, on_stored=bar.update)
    return ImportReport(
        pool=pool,
        seen=len(items),
        added=len(result.added),
        already_present=len(result.already_present),
        finds_recorded=result.finds_recorded,
        skipped=skipped,
    )


def _read_npz(path: Path, classes: list[str] | None, progress: bool):
    images = read_npz(path)
    labels, names = images.labels, classes or images.class_names
    if labels is not None and names is None:
        names = [str(i) for i in range(int(labels.max()) + 1)]
    if labels is not None and names and labels.max() >= len(names):
        raise PoolError(f"{path}: label {labels.max()} out of range for {len(names)} classes")
    pixel_info = None
    if images.pixels is not None:  # one shape for all: checked once, never decoded
        height, width = images.pixels.shape[1:3]
        try:
            check_size(width, height)
        except InvalidImage as exc:
            raise PoolError(f"{path}: {exc}") from None
        pixel_info = ImageInfo(width=width, height=height, format="PNG", frames=1)
    items = []
    for i in tqdm(range(len(images)), disable=not progress, desc="read", unit="img"):
        data, url = images.encoded(i), f"npz:{images.name(i)}"
        label = int(labels[i]) if labels is not None else -1
        items.append(
            NewImage(
                data=data,
                url=url,
                source="import",
                class_index=label,
                class_name=names[label] if label >= 0 else None,
                info=pixel_info or _inspect(data, f"{path} ({url})"),
                sha256=images.byte_sha256(i) or sha256_hex(data),
            )
        )
    return names, items, []


def _read_folder(root: Path, options: ImportOptions, progress: bool):
    """Class per sub-folder (root/<class>/...); files directly in root have no class."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    folder_classes = sorted({p.relative_to(root).parts[0] for p in files if p.parent != root})
    names = options.classes or folder_classes or None
    unknown = set(folder_classes) - set(names or [])
    if unknown:
        raise PoolError(f"{root}: sub-folders {sorted(unknown)} are not in --classes {names}")
    items, skipped = [], []
    real_root = root.resolve()
    for path in tqdm(files, disable=not progress, desc="read", unit="img"):
        class_name = path.relative_to(root).parts[0] if path.parent != root else None
        try:
            real = path.resolve()
            if not options.follow_symlinks and not real.is_relative_to(real_root):
                raise PoolError(
                    f"{path}: symbolic link to {real}, outside the imported folder "
                    "(--follow-symlinks imports it)"
                )
            try:
                data = real.read_bytes()
            except OSError as exc:
                raise PoolError(f"{path}: cannot read ({exc.strerror})") from None
            info = _inspect(data, str(path))
        except PoolError as exc:
            if not options.skip_invalid:
                raise
            skipped.append(str(exc))
            continue
        items.append(
            NewImage(
                data=data,
                url=str(real),
                source="import",
                keyword=class_name or "",
                class_name=class_name,
                info=info,
                sha256=sha256_hex(data),
            )
        )
    return names, items, skipped


def _inspect(data: bytes, where: str) -> ImageInfo:
    try:
        return inspect_image(data)
    except InvalidImage as exc:
        raise PoolError(f"{where}: {exc}") from None
