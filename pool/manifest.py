"""The manifest: one Parquet row per stored image. Schema and validation.

Core columns are required with these exact types; the known optional columns (added by later
stages) are type-checked when present; unknown extra columns are kept as they are. The rows are
stored as a base file and appended parts (pool.parts); each file is validated when first read or
before it is written, and sha256 values are checked to be unique across all of them (pool.index).
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

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
    pa.field("crawl_round", pa.int32()),  # the crawl loop's round that found it (steer.loop)
    pa.field("teacher_class", pa.string()),  # the teacher's view of it (steer.score)
    pa.field("teacher_confidence", pa.float32()),
    pa.field("teacher_class_prob", pa.float32()),
    pa.field("teacher_agrees", pa.bool_()),
    pa.field("teacher_id", pa.string()),
]

# A stored image's path is a function of its sha256; anything else (absolute, "..", another
# folder) is refused when the manifest is read or written.
PATH_PATTERN = r"images/[0-9a-f]{2}/[0-9a-f]{64}\.[a-z0-9]+"
PATH_FORM = "images/<sha256[:2]>/<sha256>.<ext>"

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


def column(table: pa.Table, name: str) -> pa.ChunkedArray | pa.Array:
    """A known column, all null when the table does not have it yet."""
    if name in table.column_names:
        return table[name]
    return pa.nulls(table.num_rows, _KNOWN[name].type)


def update_rows(table: pa.Table, updates: dict[str, dict]) -> pa.Table:
    """Write `updates` ({sha256: {column: value}}, known columns, the same in every update)
    into the table; rows not in it keep their values, a column it lacks is added."""
    if not updates:
        return table
    keys = pa.array(list(updates), pa.string())
    pos = pc.index_in(table["sha256"], value_set=keys)
    hit = pc.is_valid(pos)
    for name in next(iter(updates.values())):
        known = _KNOWN[name]
        values = pa.array([u.get(name) for u in updates.values()], type=known.type)
        new = pc.if_else(hit, values.take(pos.fill_null(0)), column(table, name))
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), known, new)
        else:
            table = table.append_column(known, new)
    return table


def path_sha256(path: str) -> str | None:
    """The sha256 a stored image's path names, or None if it is not of the form PATH_FORM."""
    if re.fullmatch(PATH_PATTERN, path) and path[7:9] == path[10:12]:
        return path[10:74]
    return None


def validate(table: pa.Table, where: str, num_classes: int = 0) -> pa.Table:
    """Check columns, types and values; raise a one-line PoolError naming `where`.

    `num_classes` is the length of the pool's classes.json: class_index must be -1 (unknown)
    or a valid index into it.
    """
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
    sha, path = table.column("sha256"), table.column("path")
    ok = pc.and_(
        pc.match_substring_regex(path, f"^{PATH_PATTERN}$"),
        pc.and_(
            pc.equal(pc.utf8_slice_codeunits(path, 10, 74), sha),
            pc.equal(pc.utf8_slice_codeunits(path, 7, 9), pc.utf8_slice_codeunits(sha, 0, 2)),
        ),
    )
    _refuse_first(table, pc.invert(ok), where, lambda r: f"path {r['path']!r} is not {PATH_FORM}")
    labels = table.column("class_index")
    bad = pc.or_(pc.less(labels, -1), pc.greater_equal(labels, num_classes))
    _refuse_first(
        table,
        bad,
        where,
        lambda r: (
            f"class_index {r['class_index']} is out of range for the {num_classes} "
            "class names in classes.json"
        ),
    )
    return table


def _refuse_first(table: pa.Table, bad: pa.ChunkedArray, where: str, describe) -> None:
    """Raise a PoolError naming the first row where `bad` is true (nulls count as fine)."""
    i = pc.index(pc.fill_null(bad, False), True).as_py()
    if i >= 0:
        row = table.slice(i, 1).to_pylist()[0]
        raise PoolError(f"{where}: row {i} (sha256 {row['sha256']}): {describe(row)}")


def concat(tables: list[pa.Table], where: str) -> pa.Table:
    """The rows of every table, in order, with the union of their columns (missing values
    become null) and the manifest's own schema metadata."""
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise PoolError(f"{where}: parts with conflicting columns ({exc})") from None
    return table.replace_schema_metadata(CORE_SCHEMA.metadata)
