"""Hostile pools and inputs: manifest paths, swapped files, labels, bombs, symlinked imports."""

import io
import os
import struct
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pool import ClassList, InvalidImage, NewImage, Pool, PoolError, decode_rgb, materialize
from pool.images import ImageInfo
from pool.importer import import_into_pool
from pool.store import sha256_hex
from tests.conftest import make_image_bytes
from workers.cli import main as kd3


@pytest.fixture
def pool(tmp_path):
    pool = Pool.create(tmp_path / "p", ClassList.from_names(["cat", "dog", "frog"]))
    pool.add([NewImage(make_image_bytes(i), url=f"u{i}", class_index=i) for i in range(3)])
    pool.compact()  # the rows in manifest.parquet, where _set changes them
    return pool


def _set(pool: Pool, column: str, row: int, value, file=None) -> None:
    """Rewrite one cell of a manifest file (default: the base) behind the pool's back, as a
    hostile or broken tool would."""
    file = file or pool.manifest_path
    table = pq.read_table(file)
    values = table[column].to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    pq.write_table(table.set_column(i, column, pa.array(values, table.schema.field(i).type)), file)


def _one_line_cli_error(capsys, *argv) -> str:
    assert kd3(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"kd3 {argv[0]}: error: "), err
    return err


@pytest.mark.parametrize(
    "path", ["../../outside.png", "/etc/passwd", "images/00/../../../outside.png", "cache/x.png"]
)
def test_manifest_path_outside_the_image_store_is_refused_on_open(pool, tmp_path, capsys, path):
    (tmp_path / "outside.png").write_bytes(make_image_bytes(0))
    _set(pool, "path", 1, path)
    with pytest.raises(PoolError, match=r"manifest.parquet: row 1 .*is not images/"):
        Pool.open(pool.root)
    assert repr(path) in _one_line_cli_error(capsys, "pool", "info", str(pool.root))


def test_bad_row_in_an_appended_part_is_refused_naming_the_part(pool, capsys):
    pool.add([NewImage(make_image_bytes(7), url="u7", class_index=0)])
    (part,) = pool.manifest_parts_dir.glob("*.parquet")
    _set(pool, "path", 0, "../../outside.png", file=part)
    with pytest.raises(PoolError, match=rf"^{part}: row 0 .*is not images/"):
        Pool.open(pool.root)
    _one_line_cli_error(capsys, "pool", "info", str(pool.root))


def test_a_part_repeating_a_stored_sha256_is_refused(pool):
    """A part (copied in by hand, say) that stores an image the base already has."""
    pq.write_table(
        pq.read_table(pool.manifest_path).slice(1, 1), pool.manifest_parts_dir / f"{7:012d}.parquet"
    )
    with pytest.raises(PoolError, match=r"000000000007.parquet: sha256 [0-9a-f]{64} is also in"):
        Pool.open(pool.root)


def test_manifest_path_of_another_sha256_is_refused_on_open(pool):
    other = pool.manifest()["path"][0].as_py()
    _set(pool, "path", 1, other)  # a real pool file, but not the image row 1 names
    with pytest.raises(PoolError, match="row 1"):
        Pool.open(pool.root)


@pytest.mark.parametrize("link", ["file", "folder"])
def test_stored_image_symlinked_out_of_the_pool_is_not_read(pool, tmp_path, link):
    row = pool.manifest().to_pylist()[0]
    stored = pool.root / row["path"]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    if link == "file":  # the same bytes, so only the location is wrong
        (outside / stored.name).write_bytes(stored.read_bytes())
        stored.unlink()
        stored.symlink_to(outside / stored.name)
    else:
        stored.parent.rename(outside / stored.parent.name)
        stored.parent.symlink_to(outside / stored.parent.name)
    with pytest.raises(PoolError, match=rf"{stored}: resolves to .*elsewhere.*, outside the pool$"):
        materialize(pool, size=16)
    with pytest.raises(PoolError, match="outside the pool"):
        pool.read_bytes(row["path"])


def test_symlink_inside_the_pool_is_fine(pool):
    row = pool.manifest().to_pylist()[0]
    stored = pool.root / row["path"]
    moved = pool.root / "images" / "moved.bin"
    stored.rename(moved)
    stored.symlink_to(moved)
    assert pool.read_bytes(row["path"]) == moved.read_bytes()


def test_stored_file_replaced_by_another_image_fails_its_sha256(pool):
    row = pool.manifest().to_pylist()[2]
    stored = pool.root / row["path"]
    stored.write_bytes(make_image_bytes(99))  # a valid image, but not the one the manifest names
    with pytest.raises(PoolError, match=rf"^{stored}: sha256 mismatch \(.*\)$"):
        materialize(pool, size=16)


@pytest.mark.parametrize("index", [99, 3, -5])
def test_class_index_out_of_range_is_refused_on_open(pool, capsys, index):
    _set(pool, "class_index", 2, index)
    with pytest.raises(PoolError, match=f"row 2 .*class_index {index} is out of range for the 3"):
        Pool.open(pool.root)
    _one_line_cli_error(capsys, "pool", "info", str(pool.root))


def test_class_index_without_classes_json_is_refused(pool):
    pool.classes_path.unlink()
    with pytest.raises(PoolError, match="class_index 0 is out of range for the 0 class names"):
        Pool.open(pool.root)


def test_update_cannot_write_a_class_index_out_of_range(pool):
    with pytest.raises(PoolError, match="row 0 .*class_index 5 is out of range"):
        pool.update(
            lambda t: t.set_column(
                t.schema.get_field_index("class_index"),
                "class_index",
                pc.add(t["class_index"], pa.scalar(5, pa.int32())),
            )
        )
    assert Pool.open(pool.root).manifest()["class_index"].to_pylist() == [0, 1, 2]


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


X = np.random.default_rng(0).integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
NAMES = np.array(["a", "b"])


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": X, "y": np.array([0, 1, np.nan, 0])}, "'y' has NaN or infinite labels"),
        ({"x": X, "y": np.array([0, 1, 0.5, 0])}, "'y' must be integer class indices"),
        ({"x": X, "y": np.array(["a", "b", "a", "b"])}, "'y' must be integer class indices"),
        ({"x": X, "y": np.eye(2, dtype=np.int64)[[0, 1, 0, 1]]}, "'y' must be 1-D"),
        ({"x": X, "y": np.array([0, 1, -3, 0])}, "label -3 is negative"),
        ({"x": X, "y": np.array([0, 1, 0, 1], dtype=object)}, "'y' is not a plain array"),
        ({"x": X.astype(object), "y": np.arange(4) % 2}, "'x' is not a plain array"),
        ({"x": X[:0], "y": np.zeros(0, np.int64), "class_names": NAMES}, "no images in it"),
        (
            {"jpeg": np.zeros(8, np.uint8), "offsets": np.array([0, 6, 3])},
            "'jpeg' must be bytes and 'offsets' N+1",
        ),
        (
            {"jpeg": np.zeros(8, np.uint8), "offsets": np.array([0.0, 8.0])},
            "'jpeg' must be bytes and 'offsets' N+1",
        ),
        (
            {"jpeg": np.zeros(8, np.uint8), "offsets": np.array([0, 80])},
            "'jpeg' must be bytes and 'offsets' N+1",
        ),
    ],
    ids=[
        "nan",
        "fraction",
        "strings",
        "one-hot",
        "negative",
        "object-y",
        "object-x",
        "empty",
        "offsets-falling",
        "offsets-float",
        "offsets-past-end",
    ],  # fmt: skip
)
def test_bad_npz_labels_and_arrays_are_one_line_errors(tmp_path, capsys, arrays, message):
    path = _npz(tmp_path / "bad.npz", **arrays)
    out = tmp_path / "pool"
    err = _one_line_cli_error(capsys, "pool", "import", "--from", str(path), "--out", str(out))
    assert f"{path}: {message}" in err
    assert not out.exists()


def test_whole_number_float_labels_are_still_accepted(tmp_path):
    path = _npz(tmp_path / "f.npz", x=X, y=np.array([0.0, 1.0, 1.0, 0.0]), class_names=NAMES)
    rows = import_into_pool(path, tmp_path / "pool").pool.manifest().to_pylist()
    assert [r["class_index"] for r in rows] == [0, 1, 1, 0]


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG that declares width x height pixels (no real pixel data)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))


@pytest.mark.parametrize("side", [30000, 7000])  # Pillow's own limit, and only ours (49M > 40M)
def test_decompression_bomb_is_a_one_line_error_when_decoding(tmp_path, side):
    bomb = _png_header(side, side)
    with pytest.raises(InvalidImage, match="^too_many_pixels: "):
        decode_rgb(bomb)

    # A bomb that got into a pool (its bytes and sha256 are right) stops materialize cleanly.
    pool = Pool.create(tmp_path / "p")
    sha = sha256_hex(bomb)
    row = Pool._row(sha, NewImage(bomb, url="bomb"), ImageInfo(side, side, "PNG", 1))
    (pool.root / row["path"]).parent.mkdir(parents=True)
    (pool.root / row["path"]).write_bytes(bomb)
    pool.update(lambda t: pa.concat_tables([t, pa.Table.from_pylist([row], schema=t.schema)]))
    with pytest.raises(PoolError, match=rf"^{pool.root / row['path']}: .*too_many_pixels"):
        materialize(pool, size=16)


def _image_folder(root):
    (root / "cat").mkdir(parents=True)
    for i in range(2):
        (root / "cat" / f"{i}.png").write_bytes(make_image_bytes(i))
    return root


def test_import_refuses_symlinks_out_of_the_folder_unless_asked(tmp_path, capsys):
    src = _image_folder(tmp_path / "src")
    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(make_image_bytes(50))
    (src / "cat" / "link.png").symlink_to(secret)
    (src / "cat" / "inside.png").symlink_to(src / "cat" / "0.png")  # inside the folder: fine
    out = tmp_path / "pool"

    err = _one_line_cli_error(capsys, "pool", "import", "--from", str(src), "--out", str(out))
    assert f"{src / 'cat' / 'link.png'}: symbolic link to {secret}, outside" in err
    assert not out.exists()

    args = ["pool", "import", "--from", str(src), "--out", str(out)]
    assert kd3([*args, "--skip-invalid"]) == 0
    captured = capsys.readouterr()
    assert "2 added" in captured.out and "link.png: symbolic link" in captured.err
    assert sha256_hex(secret.read_bytes()) not in Pool.open(out).manifest()["sha256"].to_pylist()

    assert kd3([*args, "--follow-symlinks"]) == 0
    assert "1 added" in capsys.readouterr().out
    assert sha256_hex(secret.read_bytes()) in Pool.open(out).manifest()["sha256"].to_pylist()


def test_symlinked_pool_root_still_works(tmp_path):
    pool = Pool.create(tmp_path / "real")
    pool.add([NewImage(make_image_bytes(1), url="u")])
    os.symlink(tmp_path / "real", tmp_path / "alias")
    out = materialize(Pool.open(tmp_path / "alias"), size=32)
    expected = np.asarray(Image.open(io.BytesIO(make_image_bytes(1))).convert("RGB"))
    assert np.array_equal(out.images[0], expected)
