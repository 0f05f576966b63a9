"""What a Pool knows about its stored rows, kept current file by file (pool.parts): which sha256
are stored and under which URL, the (sha256, URL) finds recorded, and the counts by class and
status. A file is taken in once, when it is first seen, so an append costs what its own rows
cost; only a fold or rewrite by another Pool object (a file it had taken in is gone) makes it
start over.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from pool import finds, manifest
from pool.errors import PoolError
from pool.parts import Piece


class ManifestIndex:
    def __init__(self) -> None:
        self.url_by_sha: dict[str, str | None] = {}
        self.counts: Counter[tuple[str, str]] = Counter()  # (class_name or '', status) -> rows
        self._taken: set[tuple] = set()
        self._num_classes: int | None = None

    def take(self, pieces: Sequence[Piece], num_classes: int) -> None:
        """Validate the pieces not seen before and add their rows; refuse a sha256 that is
        already stored in another piece."""
        if num_classes != self._num_classes or not self._taken <= {p.key for p in pieces}:
            self.url_by_sha.clear()  # cleared in place: views handed out stay live
            self.counts.clear()
            self._taken.clear()
            self._num_classes = num_classes
        for piece in pieces:
            if piece.key in self._taken:
                continue
            table = manifest.validate(piece.table, str(piece.path), num_classes)
            shas = table["sha256"].to_pylist()
            if not self.url_by_sha.keys().isdisjoint(shas):
                twice = next(s for s in shas if s in self.url_by_sha)
                raise PoolError(f"{piece.path}: sha256 {twice} is also in an earlier manifest file")
            self.url_by_sha.update(zip(shas, table["url"].to_pylist(), strict=True))
            self.counts.update(_counts(table))
            self._taken.add(piece.key)

    def replaced(self, old: Sequence[Piece], new: Piece) -> None:
        """`new` holds exactly the rows of `old` (a fold): nothing to read again."""
        self._taken.difference_update(p.key for p in old)
        self._taken.add(new.key)

    def forget(self) -> None:
        """After a rewrite that changed rows: read everything again next time."""
        self._num_classes = None


class FindsIndex:
    def __init__(self) -> None:
        self.pairs: set[tuple[str, str]] = set()
        self._taken: set[tuple] = set()

    def take(self, pieces: Sequence[Piece]) -> None:
        if not self._taken <= {p.key for p in pieces}:
            self.pairs.clear()
            self._taken.clear()
        for piece in pieces:
            if piece.key not in self._taken:
                table = finds.validate(piece.table, str(piece.path))
                self.pairs.update(
                    zip(table["sha256"].to_pylist(), table["url"].to_pylist(), strict=True)
                )
                self._taken.add(piece.key)

    def replaced(self, old: Sequence[Piece], new: Piece) -> None:
        self._taken.difference_update(p.key for p in old)
        self._taken.add(new.key)


def _counts(table: pa.Table) -> Counter[tuple[str, str]]:
    names = pc.fill_null(table["class_name"], "")
    grouped = (
        pa.table({"c": names, "s": table["status"]})
        .group_by(["c", "s"])
        .aggregate([([], "count_all")])
    )
    return Counter(
        dict(
            zip(
                zip(grouped["c"].to_pylist(), grouped["s"].to_pylist(), strict=True),
                grouped["count_all"].to_pylist(),
                strict=True,
            )
        )
    )
