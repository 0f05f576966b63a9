"""The manifest: one Parquet row per stored image. Schema, validation and atomic writes.

Core columns are required with these exact types; the known optional columns (added by later
stages) are type-checked when present; unknown extra columns are kept as they are.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pool.errors import PoolError

MANIFEST_VERSION = 1
VERSION_KEY = b"kd3.manifest_version"

STATUSES = ("kept", "duplicate", "test_overlap", "invalid")

CORE_FIELDS = [
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),  # relative to the pool root
    pa.field("source", pa.string()),  # spider or importer that found it
    pa.field("url", pa.string()),  # image URL, or npz:<file>#<i>, or the imported file path
    pa.field("page_url", pa.string()),
    pa.field("keyword", pa.string()),
    pa.field("class_name", pa.string()),
    pa.field("class_index", pa.int32()),  # -1 when unknown
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("bytes", pa.int64()),
    pa.field("format", pa.string()),
    pa.field("fetched_at", pa.timestamp("us", tz="UTC")),
    pa.field("phash", pa.string()),  # 16 hex digits, null until dedup hashed it
    pa.field("status", pa.string(), nullable=False),
    pa.field("duplicate_of", pa.string()),  # sha256 of the kept image this one duplicates
]

OPTIONAL_FIELDS = [
    pa.field("license", pa.string()),
    pa.field("license_url", pa.string()),
    pa.field("author", pa.string()),
    pa.field("title", pa.string()),
    pa.field("status_reason", pa.string()),
    pa.field("eval_match", pa.string()),  # evaluation item an overlapping image matches
    pa.field("eval_hamming", pa.int32()),
    pa.field("eval_similarity", pa.float32()),
    pa.field("dup_hamming", pa.int32()),
    pa.field("dup_similarity", pa.float32()),
]

CORE_SCHEMA = pa.schema(CORE_FIELDS, metadata={VERSION_KEY: str(MANIFEST_VERSION).encode()})
_KNOWN = {f.name: f for f in CORE_FIELDS + OPTIONAL_FIELDS}


def empty_table() -> pa.Table:
    return CORE_SCHEMA.empty_table()


def table_from_rows(rows: list[dict]) -> pa.Table:
    """Build a manifest table from row dicts; absent optional keys become nulls."""
    names = [f.name for f in CORE_FIELDS]
    extra = sorted({k for r in rows for k in r} - set(names))
    fields = list(CORE_FIELDS) + [_KNOWN.get(k, pa.field(k, pa.string())) for k in extra]
    schema = pa.schema(fields, metadata=CORE_SCHEMA.metadata)
    return pa.Table.from_pylist(rows, schema=schema)


def validate(table: pa.Table, where: str) -> pa.Table:
    """Check columns, types and values; raise a one-line PoolError naming `where`."""
    version = (table.schema.metadata or {}).get(VERSION_KEY)
    if version is None:
        raise PoolError(f"{where}: not a kd3 manifest (no {VERSION_KEY.decode()} in its metadata)")
    if int(version) > MANIFEST_VERSION:
        raise PoolError(
            f"{where}: manifest version {int(version)} is newer than this kd3 reads "
            f"({MANIFEST_VERSION}); upgrade kd3"
        )
    for name, expected in _KNOWN.items():
        if name not in table.column_names:
            if any(f.name == name for f in CORE_FIELDS):
                raise PoolError(f"{where}: missing column '{name}' ({expected.type})")
            continue
        actual = table.schema.field(name).type
        if actual != expected.type:
            raise PoolError(f"{where}: column '{name}' has type {actual}, expected {expected.type}")
    for name in ("sha256", "path", "status"):
        if table.column(name).null_count:
            raise PoolError(f"{where}: column '{name}' has empty values")
    bad = set(table.column("status").unique().to_pylist()) - set(STATUSES)
    if bad:
        raise PoolError(f"{where}: unknown status {sorted(bad)}; allowed: {', '.join(STATUSES)}")
    if len(pc.unique(table.column("sha256"))) != table.num_rows:
        raise PoolError(f"{where}: sha256 values are not unique")
    return table


def read(path: Path) -> pa.Table:
    if not path.exists():
        raise PoolError(f"{path}: manifest missing")
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise PoolError(f"{path}: unreadable Parquet ({type(exc).__name__}: {exc})") from None
    return validate(table, str(path))


def write(path: Path, table: pa.Table) -> None:
    """Validate, then replace the manifest atomically (readers see the old or the new file)."""
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **CORE_SCHEMA.metadata})
    validate(table, str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def concat(base: pa.Table, new: pa.Table) -> pa.Table:
    """Append rows, unifying the extra columns of both tables (missing values become null)."""
    return pa.concat_tables([base, new], promote_options="default")
