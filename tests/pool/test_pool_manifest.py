import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pool import NewImage, Pool, PoolError
from pool.manifest import VERSION_KEY
from tests.conftest import make_image_bytes


@pytest.fixture
def pool(tmp_path):
    pool = Pool.create(tmp_path / "p")
    pool.add([NewImage(make_image_bytes(i), url=f"u{i}") for i in range(2)])
    pool.compact()  # the rows in manifest.parquet, where _rewrite changes them
    return pool


def _rewrite(pool, change):
    table = pq.read_table(pool.manifest_path)
    pq.write_table(change(table), pool.manifest_path)


def test_missing_column_is_named(pool):
    _rewrite(pool, lambda t: t.drop_columns(["width"]))
    with pytest.raises(PoolError, match=r"manifest.parquet: missing column 'width' \(int32\)$"):
        Pool.open(pool.root)


def test_wrong_type_is_named(pool):
    _rewrite(
        pool,
        lambda t: t.set_column(
            t.schema.get_field_index("width"), "width", t["width"].cast(pa.string())
        ),
    )
    with pytest.raises(PoolError, match="column 'width' has type string, expected int32"):
        Pool.open(pool.root)


def test_newer_version_is_refused(pool):
    _rewrite(pool, lambda t: t.replace_schema_metadata({VERSION_KEY: b"99"}))
    with pytest.raises(PoolError, match="version 99 is newer"):
        Pool.open(pool.root)


def test_foreign_parquet_is_not_a_manifest(pool):
    pq.write_table(pa.table({"a": [1]}), pool.manifest_path)
    with pytest.raises(PoolError, match="not a kd3 manifest"):
        Pool.open(pool.root)


def test_garbage_file_is_unreadable(pool):
    pool.manifest_path.write_bytes(b"not parquet at all")
    with pytest.raises(PoolError, match="unreadable Parquet"):
        Pool.open(pool.root)


def test_missing_pool_directory(tmp_path):
    with pytest.raises(PoolError, match="no such pool directory"):
        Pool.open(tmp_path / "nowhere")


def test_unknown_extra_columns_survive_updates(pool):
    _rewrite(pool, lambda t: t.append_column("note", pa.array(["a", "b"])))
    pool.add([NewImage(make_image_bytes(9), url="u9")])
    table = Pool.open(pool.root).manifest()
    assert table["note"].to_pylist() == ["a", "b", None]
