"""Finds: later sightings of an already stored image under another URL, one row each.

Stored like the manifest (pool.parts): POOL/finds.parquet and numbered parts in POOL/finds/.
"""

from __future__ import annotations

import pyarrow as pa

from pool.errors import PoolError

SCHEMA = pa.schema(
    [
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("page_url", pa.string()),
        pa.field("source", pa.string()),
        pa.field("keyword", pa.string()),
        pa.field("class_name", pa.string()),
        pa.field("fetched_at", pa.timestamp("us", tz="UTC")),
    ]
)


def table_from_rows(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def validate(table: pa.Table, where: str) -> pa.Table:
    for name in ("sha256", "url"):
        if name not in table.column_names:
            raise PoolError(f"{where}: not a finds file (no '{name}' column)")
        if not pa.types.is_string(table.schema.field(name).type):
            raise PoolError(f"{where}: finds column '{name}' is not text")
    return table


def concat(tables: list[pa.Table], where: str) -> pa.Table:
    try:  # parts of older kd3 may type an all-empty column as null: promoted to text
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise PoolError(f"{where}: parts with conflicting columns ({exc})") from None
