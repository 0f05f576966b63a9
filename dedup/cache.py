"""What dedup computed per image, kept next to the manifest so a re-run only processes new images.

    POOL/dedup/hashes/part-*.parquet          sha256 + pixel digest + pHash/dHash (+ mirrors)
    POOL/dedup/embeddings/<model>/part-*.npz  sha256 + float32 features, one folder per network

Each part is written atomically after each batch, so an interrupted run keeps its finished work.
Parts may repeat an image (a crash between writing a part and compacting): the last one wins.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common.files import atomic_write
from dedup.hashing import HASH_COLUMNS

COMPACT_AFTER = 32  # parts


def _part_name(suffix: str) -> str:
    return f"part-{uuid.uuid4().hex}{suffix}"


class HashCache:
    def __init__(self, root: Path):
        self.dir = Path(root) / "dedup" / "hashes"

    def load(self) -> dict[str, dict[str, str]]:
        """{sha256: {pixel_sha256, phash, phash_mirror, dhash, dhash_mirror}}."""
        parts = sorted(self.dir.glob("part-*.parquet"), key=os.path.getmtime)
        out: dict[str, dict[str, str]] = {}
        for part in parts:
            for row in pq.read_table(part).to_pylist():
                out[row.pop("sha256")] = row
        if len(parts) > COMPACT_AFTER:
            self._compact(out, parts)
        return out

    def append(self, rows: dict[str, dict[str, str]]) -> None:
        if not rows:
            return
        table = pa.table(
            {"sha256": list(rows)} | {c: [r[c] for r in rows.values()] for c in HASH_COLUMNS}
        )
        atomic_write(self.dir / _part_name(".parquet"), lambda fh: pq.write_table(table, fh))

    def _compact(self, rows: dict, parts: list[Path]) -> None:
        self.append(rows)
        for part in parts:
            part.unlink(missing_ok=True)


class EmbeddingCache:
    """Vectors by sha256 under POOL/dedup/<folder>/<key>: a network's features (embeddings) or
    the copy descriptors of dedup/views.py (copy)."""

    def __init__(self, root: Path, model_key: str, folder: str = "embeddings"):
        self.dir = Path(root) / "dedup" / folder / model_key

    def load(self) -> dict[str, np.ndarray]:
        parts = sorted(self.dir.glob("part-*.npz"), key=os.path.getmtime)
        out: dict[str, np.ndarray] = {}
        for part in parts:
            with np.load(part, allow_pickle=False) as data:
                out.update(zip(data["sha256"].tolist(), data["features"], strict=True))
        if len(parts) > COMPACT_AFTER:
            self.append(out)
            for part in parts:
                part.unlink(missing_ok=True)
        return out

    def append(self, features: dict[str, np.ndarray]) -> None:
        if not features:
            return
        shas = np.array(list(features), dtype="U64")
        feats = np.stack(list(features.values())).astype(np.float32)
        atomic_write(
            self.dir / _part_name(".npz"), lambda fh: np.savez(fh, sha256=shas, features=feats)
        )
