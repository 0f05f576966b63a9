"""The append-only manifest: adds write parts, folds keep their number bounded, readers without
a lock see consistent tables, old single-file pools still open."""

import multiprocessing as mp
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pool import NewImage, Pool, PoolError
from pool.manifest import CORE_SCHEMA
from pool.store import FOLD_MIN_PARTS, sha256_hex
from tests.conftest import make_image_bytes
from workers.cli import main as kd3


def _images(seeds, prefix="u"):
    return [NewImage(make_image_bytes(s), url=f"{prefix}{s}") for s in seeds]


def _parts(pool: Pool) -> list[Path]:
    return sorted(pool.manifest_parts_dir.glob("*.parquet"))


def _stamp(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_an_add_writes_one_part_and_rewrites_nothing_earlier(tmp_path):
    pool = Pool.create(tmp_path / "p")
    base = _stamp(pool.manifest_path)
    pool.add(_images(range(3)))
    (first,) = _parts(pool)
    first_stamp = _stamp(first)
    pool.add(_images(range(3, 5)))
    pool.add(_images([0, 5], prefix="v"))  # one stored image found again, one new

    assert [p.name for p in _parts(pool)] == [f"{i:012d}.parquet" for i in (1, 2, 3)]
    assert _stamp(pool.manifest_path) == base and _stamp(first) == first_stamp
    assert [pq.read_table(p).num_rows for p in _parts(pool)] == [3, 2, 1]
    table = Pool.open(pool.root).manifest()
    assert table["url"].to_pylist() == ["u0", "u1", "u2", "u3", "u4", "v5"]
    assert pool.finds()["url"].to_pylist() == ["v0"]


def test_compact_folds_every_part_and_readers_see_the_same_rows(tmp_path, capsys):
    pool = Pool.create(tmp_path / "p")
    for start in range(0, 8, 2):
        pool.add(_images(range(start, start + 2)) + _images([start], prefix="again"))
    reader = Pool.open(pool.root)  # another object, whose caches must follow the fold
    before, finds_before = reader.manifest(), reader.finds()
    fingerprint = reader.fingerprint()
    assert len(_parts(pool)) == 4 and len(list(pool.finds_dir.glob("*.parquet"))) == 4

    assert kd3(["pool", "compact", str(pool.root)]) == 0
    assert "folded 4 manifest parts and 4 finds parts (8 images" in capsys.readouterr().out
    assert _parts(pool) == [] and list(pool.finds_dir.glob("*.parquet")) == []
    assert reader.manifest().equals(before) and reader.finds().equals(finds_before)
    assert Pool.open(pool.root).manifest().equals(before)
    assert reader.fingerprint() == fingerprint

    pool.add(_images([8]))  # numbering goes on after the folded parts
    assert [p.name for p in _parts(pool)] == [f"{5:012d}.parquet"]
    assert reader.manifest().num_rows == 9 and pool.compact().manifest_parts == 1


def test_parts_are_folded_on_their_own_so_their_number_stays_bounded(tmp_path):
    pool = Pool.create(tmp_path / "p")
    most = 0
    for seed in range(2 * FOLD_MIN_PARTS + 5):
        pool.add(_images([seed]))
        most = max(most, len(_parts(pool)))
    assert most <= FOLD_MIN_PARTS
    assert pq.read_table(pool.manifest_path).num_rows >= FOLD_MIN_PARTS
    assert pool.manifest()["url"].to_pylist() == [f"u{s}" for s in range(2 * FOLD_MIN_PARTS + 5)]


def test_fingerprint_follows_the_content_not_the_files(tmp_path):
    pool = Pool.create(tmp_path / "p")
    empty = pool.fingerprint()
    pool.add(_images(range(3)))
    three = pool.fingerprint()
    assert three != empty and Pool.open(pool.root).fingerprint() == three
    pool.add(_images([1], prefix="elsewhere"))  # a find only: the manifest is unchanged
    assert pool.fingerprint() == three
    pool.compact()
    assert pool.fingerprint() == three
    pool.update(
        lambda t: t.set_column(
            t.schema.get_field_index("status"),
            "status",
            pc.if_else(pc.equal(t["url"], "u1"), "duplicate", t["status"]),
        )
    )
    marked = pool.fingerprint()
    assert marked not in (empty, three)
    pool.add(_images([3]))
    assert pool.fingerprint() not in (empty, three, marked)


def test_leftovers_of_interrupted_writes_are_ignored_then_cleared(tmp_path):
    """A temporary file of an add that died, and a part that a fold had folded in but not yet
    deleted when it died: neither changes what readers see; the next fold deletes the part."""
    pool = Pool.create(tmp_path / "p")
    pool.add(_images(range(2)))
    (part,) = _parts(pool)
    shutil.copy(part, tmp_path / "folded.parquet")
    pool.compact()
    shutil.copy(tmp_path / "folded.parquet", part)  # as if the fold died before deleting it
    (pool.manifest_parts_dir / ".000000000002.parquet.x1y2.tmp").write_bytes(b"half a file")

    assert Pool.open(pool.root).manifest()["url"].to_pylist() == ["u0", "u1"]
    pool.add(_images([2]))
    assert [p.name for p in _parts(pool)] == [f"{1:012d}.parquet", f"{2:012d}.parquet"]
    assert pool.manifest()["url"].to_pylist() == ["u0", "u1", "u2"]
    assert pool.compact().manifest_parts == 2
    assert _parts(pool) == [] and pool.manifest().num_rows == 3


def test_an_old_single_file_pool_opens_and_grows(tmp_path):
    """The layout before parts: manifest.parquet alone, finds as timestamped files."""
    built = Pool.create(tmp_path / "new")
    built.add(_images(range(2)) + _images([0], prefix="again"))
    rows = built.manifest().replace_schema_metadata(CORE_SCHEMA.metadata)
    old = tmp_path / "old"
    shutil.copytree(built.root / "images", old / "images")
    pq.write_table(rows, old / "manifest.parquet")
    (old / "finds").mkdir()
    legacy = pa.Table.from_pylist([{"sha256": rows["sha256"][0].as_py(), "url": "again0",
                                    "class_name": None}])  # fmt: skip
    pq.write_table(legacy, old / "finds" / "20240101T000000-0a1b.parquet")

    pool = Pool.open(old)
    assert pool.manifest().equals(rows)
    assert pool.finds()["url"].to_pylist() == ["again0"]
    pool.add(_images([0], prefix="again") + _images([1], prefix="third") + _images([2]))
    assert pool.manifest().num_rows == 3
    assert sorted(pool.finds()["url"].to_pylist()) == ["again0", "third1"]
    assert pool.compact().finds_parts == 2
    assert sorted(pool.finds()["url"].to_pylist()) == ["again0", "third1"]
    assert (old / "finds.parquet").exists() and not list((old / "finds").iterdir())


def test_manifest_parts_without_their_base_are_not_overwritten(tmp_path):
    pool = Pool.create(tmp_path / "p")
    pool.add(_images(range(2)))
    pool.manifest_path.unlink()
    with pytest.raises(PoolError, match="manifest.parquet: manifest missing"):
        Pool.open(pool.root)
    with pytest.raises(PoolError, match=r"manifest.parquet: missing, but .*manifest.d has rows"):
        Pool.create(pool.root)
    assert len(_parts(pool)) == 1


def _append_and_compact(root: str, seeds: list[int], barrier) -> None:
    pool = Pool.open(root)
    barrier.wait()
    for i, seed in enumerate(seeds):
        pool.add(_images([seed]))
        if i % 4 == 3:
            pool.compact()


def test_a_reader_during_compaction_sees_a_consistent_table(tmp_path):
    """Another process appends and compacts over and over; every read without a lock is a
    prefix of the final rows, never a torn or doubled one."""
    root = tmp_path / "p"
    Pool.create(root)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    writer = ctx.Process(target=_append_and_compact, args=(str(root), list(range(40)), barrier))
    writer.start()
    barrier.wait()
    reader, reads = Pool.open(root), []
    while writer.is_alive() or not reads:
        reads.append(reader.manifest()["sha256"].to_pylist())
        reads.append(Pool(root).manifest()["sha256"].to_pylist())  # a cold reader too
    writer.join(60)
    assert writer.exitcode == 0
    final = Pool.open(root).manifest()["sha256"].to_pylist()
    assert final == [sha256_hex(make_image_bytes(s)) for s in range(40)]
    assert all(read == final[: len(read)] for read in reads)
    assert len(reads) > 10 and len({len(r) for r in reads}) > 3  # reads overlapped the writes


def _writer(root: str, offset: int, barrier) -> None:
    pool = Pool.open(root)
    barrier.wait()
    for start in range(0, 60, 6):
        batch = _images(range(offset + start, offset + start + 6), prefix=f"w{offset}/")
        pool.add(batch + _images([start], prefix=f"w{offset}/again"))


def test_two_processes_adding_at_once_lose_nothing(tmp_path):
    """Half their images overlap, each also re-finds images; together they write enough parts
    for folds to happen under them: the union, each row once, every find once."""
    root = tmp_path / "p"
    Pool.create(root)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(root), off, barrier)) for off in (0, 30)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    pool = Pool.open(root)
    table = pool.manifest()
    assert table.num_rows == 90
    assert set(table["sha256"].to_pylist()) == {sha256_hex(make_image_bytes(s)) for s in range(90)}
    found = pool.finds()
    pairs = list(zip(found["sha256"].to_pylist(), found["url"].to_pylist(), strict=True))
    assert len(pairs) == len(set(pairs))
    stored = dict(zip(table["sha256"].to_pylist(), table["url"].to_pylist(), strict=True))
    # every image was stored once under one URL; every other URL it was seen under is a find
    seen = {(sha256_hex(make_image_bytes(s)), f"w{off}/{s}") for off in (0, 30)
            for s in range(off, off + 60)}  # fmt: skip
    seen |= {(sha256_hex(make_image_bytes(s)), f"w{off}/again{s}") for off in (0, 30)
             for s in range(0, 60, 6)}  # fmt: skip
    assert set(pairs) == {(sha, url) for sha, url in seen if stored[sha] != url}
