"""A pool directory: content-addressed image files, the manifest, classes.json and finds.

    POOL/images/ab/<sha256>.<ext>   original bytes, stored once
    POOL/manifest.parquet           one row per image (pool.manifest)
    POOL/classes.json               class names and keywords (pool.classes)
    POOL/finds/*.parquet            later finds of an already stored image under another URL
    POOL/cache/                     materialised arrays (pool.materialize)

Writers take an exclusive flock on POOL/.lock for every read-modify-write of the manifest;
readers need no lock because the manifest is replaced atomically.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pool import manifest
from pool.classes import ClassList
from pool.errors import InvalidImage, PoolError
from pool.images import ImageInfo, extension_for, inspect_image


@dataclass
class NewImage:
    """One image to add, with where it came from. `extra` holds optional manifest columns."""

    data: bytes
    url: str
    source: str = ""
    page_url: str = ""
    keyword: str = ""
    class_name: str | None = None
    class_index: int = -1
    fetched_at: datetime | None = None
    extra: dict = field(default_factory=dict)
    # Set by a caller that already validated or hashed the bytes (the crawler), so that
    # Pool.add neither decodes nor hashes them again.
    info: ImageInfo | None = None
    sha256: str | None = None


@dataclass
class AddResult:
    added: list[str] = field(default_factory=list)  # sha256 of newly stored images
    already_present: list[str] = field(default_factory=list)
    finds_recorded: int = 0


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Pool:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.parquet"
        self.classes_path = self.root / "classes.json"
        self.finds_dir = self.root / "finds"
        self.cache_dir = self.root / "cache"

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, classes: ClassList | None = None) -> Pool:
        """Create a pool, or open an existing one (then `classes` must agree with it)."""
        pool = cls(Path(root))
        pool.root.mkdir(parents=True, exist_ok=True)
        with pool.locked():
            if not pool.manifest_path.exists():
                (pool.root / "images").mkdir(exist_ok=True)
                manifest.write(pool.manifest_path, manifest.empty_table())
            if classes is not None:
                pool._set_classes(classes)
        return Pool.open(pool.root)

    @classmethod
    def open(cls, root: str | os.PathLike) -> Pool:
        pool = cls(Path(root))
        if not pool.root.is_dir():
            raise PoolError(f"{pool.root}: no such pool directory")
        pool.manifest()  # validates
        return pool

    # -- reading -----------------------------------------------------------------------------
    def manifest(self) -> pa.Table:
        return manifest.read(self.manifest_path, self._num_classes())

    def _num_classes(self) -> int:
        classes = self.classes()
        return len(classes) if classes else 0

    def classes(self) -> ClassList | None:
        return ClassList.read(self.classes_path) if self.classes_path.exists() else None

    def finds(self) -> pa.Table | None:
        parts = sorted(self.finds_dir.glob("*.parquet")) if self.finds_dir.exists() else []
        return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else None

    def image_path(self, row_path: str) -> Path:
        """The real file of a manifest path, refused unless the path has the stored form and
        the file, symlinks followed, is inside the pool."""
        if manifest.path_sha256(row_path) is None:
            raise PoolError(f"{self.root}: image path {row_path!r} is not {manifest.PATH_FORM}")
        real = Path(os.path.realpath(self.root / row_path))
        if not real.is_relative_to(os.path.realpath(self.root)):
            raise PoolError(f"{self.root / row_path}: resolves to {real}, outside the pool")
        return real

    def read_bytes(self, row_path: str) -> bytes:
        """An image's stored bytes, checked against the sha256 its path names."""
        path = self.image_path(row_path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PoolError(f"{self.root / row_path}: cannot read ({exc.strerror})") from None
        if sha256_hex(data) != manifest.path_sha256(row_path):
            raise PoolError(
                f"{self.root / row_path}: sha256 mismatch (the file was changed or replaced)"
            )
        return data

    # -- writing -----------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _set_classes(self, classes: ClassList) -> None:
        current = self.classes()
        if current is None:
            _atomic_write_bytes(self.classes_path, classes.to_json().encode())
        elif current.names != classes.names:
            raise PoolError(
                f"{self.classes_path}: pool has classes {current.names}, got {classes.names}"
            )

    def add(self, items: Sequence[NewImage], **image_limits) -> AddResult:
        """Validate every item, then store the new ones and append their manifest rows.

        All or nothing: if any item is not a valid image, raise PoolError naming its URL and
        leave the pool untouched. An image already stored is not stored again; a find of it
        under a new URL is recorded in finds/.
        """
        shas = [item.sha256 or sha256_hex(item.data) for item in items]  # hashed once per item
        rows: dict[str, dict] = {}
        for sha, item in zip(shas, items, strict=True):
            try:
                info = item.info or inspect_image(item.data, **image_limits)
            except InvalidImage as exc:
                raise PoolError(f"{item.url}: {exc}") from None
            rows.setdefault(sha, self._row(sha, item, info))
        classes = self.classes()
        for row in rows.values():
            self._resolve_class(row, classes)
        data_by_sha = {sha: item.data for sha, item in zip(shas, items, strict=True)}

        # Content-addressed writes are idempotent, so they need no lock.
        for sha, row in rows.items():
            path = self.root / row["path"]
            if not path.exists():
                _atomic_write_bytes(path, data_by_sha[sha])

        result = AddResult()
        with self.locked():
            table = self.manifest()
            known = dict(
                zip(
                    table.column("sha256").to_pylist(), table.column("url").to_pylist(), strict=True
                )
            )
            new_rows = [r for s, r in rows.items() if s not in known]
            result.added = [r["sha256"] for r in new_rows]
            result.already_present = [s for s in rows if s in known]
            if new_rows:
                manifest.write(
                    self.manifest_path,
                    manifest.concat(table, manifest.table_from_rows(new_rows)),
                    self._num_classes(),
                )
            refinds = self._new_finds(shas, items, known, new_rows)
            if refinds:
                self.finds_dir.mkdir(exist_ok=True)
                part = (
                    self.finds_dir / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex}.parquet"
                )
                pq.write_table(pa.Table.from_pylist(refinds), part)
                result.finds_recorded = len(refinds)
        return result

    def _new_finds(
        self, shas: list[str], items, known: dict[str, str], new_rows: list[dict]
    ) -> list[dict]:
        """Finds of images already stored (or repeated in this batch) under a URL not yet seen."""
        previous = self.finds()
        seen = set(known.items()) | {(r["sha256"], r["url"]) for r in new_rows}
        if previous is not None:
            seen |= set(
                zip(previous["sha256"].to_pylist(), previous["url"].to_pylist(), strict=True)
            )
        finds = []
        for sha, item in zip(shas, items, strict=True):
            key = (sha, item.url)
            if key not in seen:
                seen.add(key)
                finds.append(
                    {
                        "sha256": key[0],
                        "url": item.url,
                        "page_url": item.page_url,
                        "source": item.source,
                        "keyword": item.keyword,
                        "class_name": item.class_name,
                        "fetched_at": item.fetched_at or datetime.now(UTC),
                    }
                )
        return finds

    @staticmethod
    def _row(sha: str, item: NewImage, info) -> dict:
        return {
            "sha256": sha,
            "path": f"images/{sha[:2]}/{sha}.{extension_for(info.format)}",
            "source": item.source,
            "url": item.url,
            "page_url": item.page_url,
            "keyword": item.keyword,
            "class_name": item.class_name,
            "class_index": item.class_index,
            "width": info.width,
            "height": info.height,
            "bytes": len(item.data),
            "format": info.format,
            "fetched_at": item.fetched_at or datetime.now(UTC),
            "phash": None,
            "status": "kept",
            "duplicate_of": None,
            **item.extra,
        }

    @staticmethod
    def _resolve_class(row: dict, classes: ClassList | None) -> None:
        """Fill class_index from class_name (or the reverse) using classes.json."""
        if classes is None:
            return
        if row["class_name"] and row["class_index"] < 0:
            row["class_index"] = classes.index(row["class_name"])
        elif row["class_index"] >= 0 and not row["class_name"]:
            if row["class_index"] >= len(classes):
                raise PoolError(
                    f"{row['url']}: class index {row['class_index']} out of range for "
                    f"{len(classes)} classes"
                )
            row["class_name"] = classes.names[row["class_index"]]

    def update(self, change: Callable[[pa.Table], pa.Table]) -> pa.Table:
        """Read-modify-write the manifest under the lock; `change` returns the new table."""
        with self.locked():
            new = change(self.manifest())
            manifest.write(self.manifest_path, new, self._num_classes())
            return new

    # -- summaries ---------------------------------------------------------------------------
    def counts(self) -> dict[tuple[str, str], int]:
        """{(class_name, status): count}; images without a class count under ''."""
        table = self.manifest()
        names = pc.fill_null(table["class_name"], "")
        grouped = (
            pa.table({"c": names, "s": table["status"]})
            .group_by(["c", "s"])
            .aggregate([([], "count_all")])
        )
        return {
            (c, s): n
            for c, s, n in zip(
                grouped["c"].to_pylist(),
                grouped["s"].to_pylist(),
                grouped["count_all"].to_pylist(),
                strict=True,
            )
        }
