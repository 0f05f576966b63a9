from pathlib import Path

import pyarrow.compute as pc
import pytest

from pool import ClassList, NewImage, Pool, PoolError
from pool.store import sha256_hex
from tests.conftest import make_image_bytes


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_add_stores_original_bytes_content_addressed(tmp_path):
    pool = Pool.create(tmp_path / "p", ClassList.from_names(["cat", "dog"]))
    data = make_image_bytes(1, size=(40, 30), fmt="JPEG")
    result = pool.add([NewImage(data, url="http://x/cat.jpg", source="test", class_name="dog")])
    sha = sha256_hex(data)
    assert result.added == [sha]
    row = pool.manifest().to_pylist()[0]
    assert row["path"] == f"images/{sha[:2]}/{sha}.jpg"
    assert pool.read_bytes(row["path"]) == data
    assert (row["width"], row["height"], row["format"], row["bytes"]) == (40, 30, "JPEG", len(data))
    assert (row["class_name"], row["class_index"], row["status"]) == ("dog", 1, "kept")


def test_same_image_is_stored_once_and_every_find_is_recorded(tmp_path):
    pool = Pool.create(tmp_path / "p")
    data = make_image_bytes(2)
    first = pool.add([NewImage(data, url="http://a/1.png"), NewImage(data, url="http://b/2.png")])
    second = pool.add([NewImage(data, url="http://c/3.png"), NewImage(data, url="http://a/1.png")])
    assert len(first.added) == 1 and second.added == []
    assert second.already_present == [sha256_hex(data)]
    assert pool.manifest().num_rows == 1
    assert len(list((tmp_path / "p" / "images").rglob("*.png"))) == 1
    assert sorted(pool.finds()["url"].to_pylist()) == ["http://b/2.png", "http://c/3.png"]


def test_invalid_item_rejects_the_whole_batch_and_leaves_the_pool_unchanged(tmp_path):
    pool = Pool.create(tmp_path / "p")
    pool.add([NewImage(make_image_bytes(3), url="u0")])
    before = _snapshot(pool.root)
    good = NewImage(make_image_bytes(4), url="u1")
    truncated = NewImage(make_image_bytes(5, fmt="JPEG")[:200], url="http://x/broken.jpg")
    with pytest.raises(PoolError, match=r"^http://x/broken.jpg: truncated_or_corrupt"):
        pool.add([good, truncated])
    assert _snapshot(pool.root) == before


def test_unknown_class_name_is_refused(tmp_path):
    pool = Pool.create(tmp_path / "p", ClassList.from_names(["cat"]))
    with pytest.raises(PoolError, match="class 'dog' is not one of"):
        pool.add([NewImage(make_image_bytes(6), url="u", class_name="dog")])
    assert pool.manifest().num_rows == 0


def test_reopening_with_other_classes_is_refused(tmp_path):
    Pool.create(tmp_path / "p", ClassList.from_names(["cat", "dog"]))
    with pytest.raises(PoolError, match="pool has classes"):
        Pool.create(tmp_path / "p", ClassList.from_names(["dog", "cat"]))


def test_update_validates_before_replacing_the_manifest(tmp_path):
    pool = Pool.create(tmp_path / "p")
    pool.add([NewImage(make_image_bytes(i), url=f"u{i}") for i in range(3)])
    table = pool.update(
        lambda t: t.set_column(
            t.schema.get_field_index("status"),
            "status",
            pc.replace_substring(t["status"], "kept", "duplicate"),
        )
    )
    assert set(table["status"].to_pylist()) == {"duplicate"}
    before = _snapshot(pool.root)
    with pytest.raises(PoolError, match="unknown status"):
        pool.update(
            lambda t: t.set_column(
                t.schema.get_field_index("status"),
                "status",
                pc.replace_substring(t["status"], "duplicate", "gone"),
            )
        )
    assert _snapshot(pool.root) == before
