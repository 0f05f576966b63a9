"""An append-only table on disk: one base Parquet file and numbered part files.

    <base>.parquet              every row up to part S; its metadata records S (kd3.parts_through)
    <parts>/<seq>.parquet       the rows of one later append; seq has 12 digits and only grows
    <parts>/<other>.parquet     parts written by older kd3 (finds/ only): read while no base exists

Writers hold the pool lock. An append writes one new part atomically, so a crash leaves a whole
part or none. A fold (compaction, or a rewrite of every row) writes a new base recording the last
sequence it contains, then deletes the parts it folded in; after a crash in between, readers
skip those parts (seq <= S) and the next fold deletes them.

Readers take no lock. They open the base, read the parts numbered above its S, then check that
the base they hold open is still the file at <base> (an open file's inode cannot be reused); if
a fold replaced it meanwhile, or a part vanished, they read again.

Files are cached by identity (inode, size, mtime), so a reader that reads again pays only for
the parts that are new to it.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.files import atomic_write
from pool.errors import PoolError

THROUGH_KEY = b"kd3.parts_through"
_SEQ_NAME = re.compile(r"([0-9]{12})\.parquet")
READ_ATTEMPTS = 20  # a reader gives up after this many folds in a row under it


@dataclass(frozen=True)
class Piece:
    """One file's rows. `key` changes whenever the file at `path` is replaced."""

    path: Path
    key: tuple
    table: pa.Table


@dataclass(frozen=True)
class Snapshot:
    base: Piece | None
    parts: tuple[Piece, ...]  # in sequence order
    stale: tuple[Path, ...]  # files already folded into the base, left by an interrupted fold
    last_seq: int  # the highest sequence in use (the next append takes last_seq + 1)

    @property
    def pieces(self) -> tuple[Piece, ...]:
        return ((self.base,) if self.base else ()) + self.parts

    @property
    def base_rows(self) -> int:
        return self.base.table.num_rows if self.base else 0

    @property
    def part_rows(self) -> int:
        return sum(p.table.num_rows for p in self.parts)


def _identity(path: Path, stat: os.stat_result) -> tuple:
    return (path.name, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _current(path: Path) -> tuple | None:
    try:
        return _identity(path, os.stat(path))
    except FileNotFoundError:
        return None


def _through(base: Piece) -> int:
    """The last part sequence folded into the base (0: none, as in pools older than parts)."""
    value = (base.table.schema.metadata or {}).get(THROUGH_KEY, b"0")
    if not value.isdigit():
        raise PoolError(f"{base.path}: {THROUGH_KEY.decode()} is {value!r}, not a sequence number")
    return int(value)


class _Vanished(Exception):
    """A file listed a moment ago is gone: a fold ran while we read."""


class PartedTable:
    def __init__(self, base: Path, parts_dir: Path):
        self.base, self.parts_dir = Path(base), Path(parts_dir)
        self._cache: dict[Path, Piece] = {}  # file -> its last version read or written
        self._mutex = threading.Lock()

    # -- reading -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """A consistent view: the base and the parts above it, as they were at one moment."""
        with self._mutex:
            for _ in range(READ_ATTEMPTS):
                try:
                    snap = self._read_once()
                except _Vanished:
                    continue
                if snap is not None:
                    keep = {p.path for p in snap.pieces}
                    self._cache = {f: p for f, p in self._cache.items() if f in keep}
                    return snap
        raise PoolError(f"{self.base}: rewritten {READ_ATTEMPTS} times while being read; try again")

    def _read_once(self) -> Snapshot | None:
        try:
            fh = open(self.base, "rb")  # noqa: SIM115 (held open until the check below)
        except FileNotFoundError:
            fh = None
        try:
            base = self._piece(self.base, fh) if fh else None
            through = _through(base) if base else 0
            numbered, legacy = self._listing()
            if base is None:  # parts of an older kd3, not yet folded into a base
                parts, stale = [self._read(self.parts_dir / n) for n in sorted(legacy)], []
            else:  # a base exists: a fold has taken them in
                parts, stale = [], [self.parts_dir / n for n in legacy]
            for seq, name in numbered:
                if seq <= through:
                    stale.append(self.parts_dir / name)
                else:
                    parts.append(self._read(self.parts_dir / name))
            if _current(self.base) != (base.key if base else None):
                return None  # a fold replaced the base while we read the parts
        finally:
            if fh:
                fh.close()
        last = max([through, *(seq for seq, _ in numbered)])
        return Snapshot(base, tuple(parts), tuple(stale), last)

    def _listing(self) -> tuple[list[tuple[int, str]], list[str]]:
        """(sequence, name) of the numbered parts in order, and the names of other parts."""
        try:
            names = os.listdir(self.parts_dir)
        except FileNotFoundError:
            return [], []
        numbered, legacy = [], []
        for name in names:
            if name.startswith(".") or not name.endswith(".parquet"):
                continue  # temporary files of a write in progress, or not ours
            match = _SEQ_NAME.fullmatch(name)
            if match:
                numbered.append((int(match[1]), name))
            else:
                legacy.append(name)
        return sorted(numbered), legacy

    def _read(self, path: Path) -> Piece:
        try:
            with open(path, "rb") as fh:
                return self._piece(path, fh)
        except FileNotFoundError:
            raise _Vanished from None

    def _piece(self, path: Path, fh) -> Piece:
        key = _identity(path, os.fstat(fh.fileno()))
        cached = self._cache.get(path)
        if cached is not None and cached.key == key:
            return cached
        try:
            table = pq.read_table(fh)
        except Exception as exc:
            raise PoolError(f"{path}: unreadable Parquet ({type(exc).__name__}: {exc})") from None
        piece = self._cache[path] = Piece(path, key, table)
        return piece

    # -- writing (the caller holds the pool lock) -------------------------------------------
    def append(self, table: pa.Table, snap: Snapshot) -> Piece:
        """Write `table` as the part after everything in `snap` (taken under the same lock)."""
        path = self.parts_dir / f"{snap.last_seq + 1:012d}.parquet"
        return self._write(path, table)

    def fold(self, table: pa.Table, snap: Snapshot) -> Piece:
        """Replace the base with `table`, which holds every row of `snap` (possibly changed),
        then delete the parts it replaces."""
        metadata = {**(table.schema.metadata or {}), THROUGH_KEY: str(snap.last_seq).encode()}
        piece = self._write(self.base, table.replace_schema_metadata(metadata))
        for path in (*(p.path for p in snap.parts), *snap.stale):
            path.unlink(missing_ok=True)
        with self._mutex:
            for path in (*(p.path for p in snap.parts), *snap.stale):
                self._cache.pop(path, None)
        return piece

    def _write(self, path: Path, table: pa.Table) -> Piece:
        writer: Callable = lambda fh: pq.write_table(table, fh, compression="zstd")  # noqa: E731
        atomic_write(path, writer, durable=True)
        # What was just written is what a reader would read back: cache it as such.
        with self._mutex:
            piece = self._cache[path] = Piece(path, _current(path), table)
        return piece
