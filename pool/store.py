"""A pool directory: content-addressed image files, the manifest, classes.json and finds.

    POOL/images/ab/<sha256>.<ext>     original bytes, stored once
    POOL/manifest.parquet             the manifest's base: one row per image (pool.manifest)
    POOL/manifest.d/<seq>.parquet     rows appended since the base was written, one file per add
    POOL/classes.json                 class names and keywords (pool.classes)
    POOL/finds.parquet, POOL/finds/   later finds of a stored image under another URL (pool.finds)
    POOL/cache/                       materialised arrays (pool.materialize)

An add writes its image files, then one manifest part (and one finds part), so it costs what its
own images cost however large the pool is; parts are folded into the base now and then
(pool.parts has the rules that keep reads consistent without a lock). Writers take an exclusive
flock on POOL/.lock around every change of the manifest or finds.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from common.files import atomic_write
from pool import finds, manifest
from pool.classes import ClassList
from pool.errors import InvalidImage, PoolError
from pool.images import ImageInfo, extension_for, inspect_image
from pool.index import FindsIndex, ManifestIndex
from pool.parts import PartedTable, Snapshot

# Fold the parts into the base once there are FOLD_MIN_PARTS and they hold at least a
# FOLD_FRACTION of the base's rows, so that each row is rewritten a few times over the pool's
# life (the base grows geometrically), or once there are FOLD_MAX_PARTS however small they are.
FOLD_MIN_PARTS = 16
FOLD_FRACTION = 0.5
FOLD_MAX_PARTS = 256


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
    # Set by a caller that already validated or hashed the bytes (the crawler, the importer),
    # so that Pool.add neither decodes nor hashes them again.
    info: ImageInfo | None = None
    sha256: str | None = None


@dataclass
class AddResult:
    added: list[str] = field(default_factory=list)  # sha256 of newly stored images
    already_present: list[str] = field(default_factory=list)
    finds_recorded: int = 0


@dataclass
class CompactResult:
    manifest_parts: int  # part files folded into manifest.parquet
    finds_parts: int  # part files folded into finds.parquet
    rows: int  # manifest rows


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fold_due(snap: Snapshot) -> bool:
    count = len(snap.parts) + len(snap.stale)
    return count >= FOLD_MAX_PARTS or (
        count >= FOLD_MIN_PARTS and snap.part_rows >= FOLD_FRACTION * snap.base_rows
    )


def _as_text(column: pa.ChunkedArray) -> pa.Array:
    """A column's values as text, nulls as NUL, for hashing."""
    column = column.combine_chunks()
    try:
        text = pc.cast(column, pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # e.g. a nested column added by hand
        text = pa.array([None if v is None else repr(v) for v in column.to_pylist()], pa.string())
    return pc.fill_null(text, "\x00")


class Pool:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.parquet"
        self.manifest_parts_dir = self.root / "manifest.d"
        self.classes_path = self.root / "classes.json"
        self.finds_path = self.root / "finds.parquet"
        self.finds_dir = self.root / "finds"
        self.cache_dir = self.root / "cache"
        self._rows = PartedTable(self.manifest_path, self.manifest_parts_dir)
        self._finds = PartedTable(self.finds_path, self.finds_dir)
        self._index = ManifestIndex()
        self._finds_index = FindsIndex()
        self._mutex = threading.RLock()  # the caches are shared by this object's threads

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, classes: ClassList | None = None) -> Pool:
        """Create a pool, or open an existing one (then `classes` must agree with it)."""
        pool = cls(Path(root))
        pool.root.mkdir(parents=True, exist_ok=True)
        with pool.locked():
            if not pool.manifest_path.exists():
                snap = pool._rows.snapshot()
                if snap.parts:  # rows without their base: refuse rather than fold them away
                    raise PoolError(
                        f"{pool.manifest_path}: missing, but {pool.manifest_parts_dir} has rows"
                    )
                (pool.root / "images").mkdir(exist_ok=True)
                pool._rows.fold(manifest.empty_table(), snap)
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
        """Every row (base and parts), validated."""
        snap = self._manifest_snapshot()
        return manifest.concat([p.table for p in snap.pieces], str(self.manifest_path))

    def _manifest_snapshot(self) -> Snapshot:
        with self._mutex:
            snap = self._rows.snapshot()
            if snap.base is None:
                raise PoolError(f"{self.manifest_path}: manifest missing")
            self._index.take(snap.pieces, self._num_classes())
            return snap

    def _finds_snapshot(self) -> Snapshot:
        with self._mutex:
            snap = self._finds.snapshot()
            self._finds_index.take(snap.pieces)
            return snap

    def _num_classes(self) -> int:
        classes = self.classes()
        return len(classes) if classes else 0

    def classes(self) -> ClassList | None:
        return ClassList.read(self.classes_path) if self.classes_path.exists() else None

    def finds(self) -> pa.Table | None:
        pieces = self._finds_snapshot().pieces
        return finds.concat([p.table for p in pieces], str(self.finds_dir)) if pieces else None

    def known_sha256(self) -> Set[str]:
        """The sha256 of every stored image: a read-only view, current as of this call (it
        follows later calls on this object; do not iterate it while another thread adds)."""
        with self._mutex:
            self._manifest_snapshot()
            return self._index.url_by_sha.keys()

    def fingerprint(self) -> str:
        """16 hex digits that name the manifest's rows and columns: equal for equal content
        (however it is split into base and parts), different after any change."""
        table = self.manifest()
        digest = hashlib.sha256(str(table.schema.remove_metadata()).encode())
        if table.num_rows:
            rows = pc.binary_join_element_wise(*map(_as_text, table.columns), "\x1f")
            digest.update("\x1e".join(rows.to_pylist()).encode())
        return digest.hexdigest()[:16]

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
            atomic_write(self.classes_path, classes.to_json().encode(), durable=True)
        elif current.names != classes.names:
            raise PoolError(
                f"{self.classes_path}: pool has classes {current.names}, got {classes.names}"
            )

    def add(
        self,
        items: Sequence[NewImage],
        *,
        on_stored: Callable[[int], None] | None = None,
        **image_limits,
    ) -> AddResult:
        """Validate every item, then store the new ones and append their manifest rows.

        All or nothing: if any item is not a valid image, raise PoolError naming its URL and
        leave the pool untouched. An image already stored is not stored again; a find of it
        under a new URL is recorded in finds. `on_stored(n)` is called as image files are
        written (for a progress bar). An item's `info` and `sha256`, when set, are trusted.
        """
        shas = [item.sha256 or sha256_hex(item.data) for item in items]  # hashed once per item
        rows: dict[str, dict] = {}
        data_by_sha: dict[str, bytes] = {}
        for sha, item in zip(shas, items, strict=True):
            if sha in rows:
                continue
            try:
                info = item.info or inspect_image(item.data, **image_limits)
            except InvalidImage as exc:
                raise PoolError(f"{item.url}: {exc}") from None
            rows[sha], data_by_sha[sha] = self._row(sha, item, info), item.data
        classes = self.classes()
        for row in rows.values():
            self._resolve_class(row, classes)
        # Check the rows before any file is written.
        candidates = self._rows_table(list(rows.values()), len(classes) if classes else 0)

        # Content-addressed writes are idempotent, so they need no lock.
        for sha, row in rows.items():
            path = self.root / row["path"]
            if not path.exists():
                atomic_write(path, data_by_sha[sha])
            if on_stored:
                on_stored(1)

        result = AddResult()
        with self.locked(), self._mutex:
            snap = self._manifest_snapshot()
            known = self._index.url_by_sha
            new = [sha not in known for sha in rows]
            result.added = [sha for sha, is_new in zip(rows, new, strict=True) if is_new]
            result.already_present = [
                sha for sha, is_new in zip(rows, new, strict=True) if not is_new
            ]
            if result.added:
                self._rows.append(candidates.filter(pa.array(new)), snap)
                snap = self._manifest_snapshot()
            found = self._new_finds(shas, items)
            finds_snap = self._finds_snapshot()
            if found:
                self._finds.append(finds.table_from_rows(found), finds_snap)
                finds_snap = self._finds_snapshot()
                result.finds_recorded = len(found)
            self._fold_if_due(snap, finds_snap)
        return result

    def _rows_table(self, rows: list[dict], num_classes: int) -> pa.Table:
        try:
            table = manifest.table_from_rows(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise PoolError(
                f"{self.root}: new manifest rows do not fit the schema ({exc})"
            ) from None
        return manifest.validate(table, f"{self.root}: new rows", num_classes)

    def _new_finds(self, shas: list[str], items: Sequence[NewImage]) -> list[dict]:
        """Finds of stored images under a URL not seen before (neither the URL the image was
        stored under nor a recorded find), each once."""
        stored_url, seen = self._index.url_by_sha, self._finds_index.pairs
        found, this_batch = [], set()
        for sha, item in zip(shas, items, strict=True):
            key = (sha, item.url)
            if stored_url.get(sha) == item.url or key in seen or key in this_batch:
                continue
            this_batch.add(key)
            found.append(
                {
                    "sha256": sha,
                    "url": item.url,
                    "page_url": item.page_url,
                    "source": item.source,
                    "keyword": item.keyword,
                    "class_name": item.class_name,
                    "fetched_at": item.fetched_at or datetime.now(UTC),
                }
            )
        return found

    def _fold_if_due(self, snap: Snapshot, finds_snap: Snapshot) -> None:
        if _fold_due(snap):
            self._fold_manifest(snap)
        if _fold_due(finds_snap):
            self._fold_finds(finds_snap)

    def _fold_manifest(self, snap: Snapshot) -> None:
        table = manifest.concat([p.table for p in snap.pieces], str(self.manifest_path))
        self._index.replaced(snap.pieces, self._rows.fold(table, snap))

    def _fold_finds(self, snap: Snapshot) -> None:
        table = finds.concat([p.table for p in snap.pieces], str(self.finds_dir))
        self._finds_index.replaced(snap.pieces, self._finds.fold(table, snap))

    def compact(self) -> CompactResult:
        """Fold every manifest and finds part into manifest.parquet and finds.parquet."""
        with self.locked(), self._mutex:
            snap, finds_snap = self._manifest_snapshot(), self._finds_snapshot()
            result = CompactResult(
                len(snap.parts) + len(snap.stale),
                len(finds_snap.parts) + len(finds_snap.stale),
                snap.base_rows + snap.part_rows,
            )
            if result.manifest_parts:
                self._fold_manifest(snap)
            if finds_snap.parts or finds_snap.stale:
                self._fold_finds(finds_snap)
        return result

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
        """Rewrite the manifest under the lock: `change` gets every row and returns the new
        table, which is validated and written as the new base (folding in every part)."""
        with self.locked(), self._mutex:
            snap = self._manifest_snapshot()
            new = change(manifest.concat([p.table for p in snap.pieces], str(self.manifest_path)))
            new = new.replace_schema_metadata(manifest.CORE_SCHEMA.metadata)
            manifest.validate(new, str(self.manifest_path), self._num_classes())
            self._rows.fold(new, snap)
            self._index.forget()
            return new

    # -- summaries ---------------------------------------------------------------------------
    def counts(self) -> dict[tuple[str, str], int]:
        """{(class_name, status): count}; images without a class count under ''."""
        with self._mutex:
            self._manifest_snapshot()
            return {key: n for key, n in self._index.counts.items() if n}
