import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pool import NewImage, Pool, PoolError, materialize
from pool.importer import import_into_pool
from pool.npz import read_npz
from tests.conftest import make_image_bytes

NAMES = np.array(["cat", "dog", "frog"])


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _kd3(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(30, 16, 16, 3), dtype=np.uint8)
    y = np.repeat(np.arange(3), 10)
    path = tmp_path / "set.npz"
    np.savez(path, x=x, y=y, class_names=NAMES)
    return path, x, y


def test_npz_import_records_origin_and_classes_and_reimport_adds_nothing(tmp_path, npz):
    path, x, y = npz
    out = tmp_path / "pool"
    run = _kd3("pool", "import", "--from", str(path), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "30 added" in run.stdout
    table = Pool.open(out).manifest()
    rows = table.to_pylist()
    assert [r["url"] for r in rows] == [f"npz:set.npz#{i}" for i in range(30)]
    assert [r["class_index"] for r in rows] == y.tolist()
    assert [r["class_name"] for r in rows] == NAMES[y].tolist()
    assert Pool.open(out).classes().names == NAMES.tolist()
    # PNG keeps the pixels exactly
    first = np.asarray(Image.open(out / rows[0]["path"]))
    assert np.array_equal(first, x[0])

    before = _snapshot(out)
    again = _kd3("pool", "import", "--from", str(path), "--out", str(out))
    assert "0 added, 30 already in the pool" in again.stdout
    assert _snapshot(out) == before

    info = _kd3("pool", "info", str(out))
    assert info.returncode == 0
    lines = {line.split()[0]: line.split()[1:] for line in info.stdout.splitlines()[2:]}
    assert lines["cat"] == ["10", "0", "0", "0", "10"]
    assert lines["total"] == ["30", "0", "0", "0", "30"]


def test_compact_jpeg_npz_keeps_the_original_jpeg_bytes(tmp_path):
    blobs = [make_image_bytes(i, fmt="JPEG") for i in range(4)]
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    path = tmp_path / "j.npz"
    np.savez(path, jpeg=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets, y=np.array([0, 1, 0, 1]),
             class_names=np.array(["a", "b"]))  # fmt: skip
    report = import_into_pool(path, tmp_path / "pool")
    rows = report.pool.manifest().to_pylist()
    assert [report.pool.read_bytes(r["path"]) for r in rows] == blobs
    assert {r["format"] for r in rows} == {"JPEG"}


def test_folder_import_class_per_subfolder_and_flat(tmp_path):
    src = tmp_path / "src"
    for i, cls in enumerate(["dog", "cat", "dog"]):
        (src / cls).mkdir(parents=True, exist_ok=True)
        (src / cls / f"{i}.png").write_bytes(make_image_bytes(i))
    (src / "loose.jpg").write_bytes(make_image_bytes(9, fmt="JPEG"))
    report = import_into_pool(src, tmp_path / "pool")
    assert report.pool.classes().names == ["cat", "dog"]
    by_url = {Path(r["url"]).name: r for r in report.pool.manifest().to_pylist()}
    assert by_url["1.png"]["class_name"] == "cat" and by_url["1.png"]["class_index"] == 0
    assert by_url["2.png"]["class_index"] == 1
    assert by_url["loose.jpg"]["class_index"] == -1 and by_url["loose.jpg"]["class_name"] is None
    assert by_url["0.png"]["url"] == str((src / "dog" / "0.png").resolve())


@pytest.mark.parametrize(
    "bad_name, bad_bytes, reason",
    [
        ("truncated.jpg", make_image_bytes(7, fmt="JPEG")[:150], "truncated_or_corrupt"),
        ("notes.png", b"this is text, not an image", "not_an_image"),
    ],
)
def test_corrupt_file_in_folder_fails_with_one_line_naming_it_and_changes_nothing(
    tmp_path, bad_name, bad_bytes, reason
):
    pool_dir = tmp_path / "pool"
    import_into_pool(_folder(tmp_path / "first", 0), pool_dir)
    before = _snapshot(pool_dir)
    src = _folder(tmp_path / "second", 10)
    (src / "cat" / bad_name).write_bytes(bad_bytes)
    run = _kd3("pool", "import", "--from", str(src), "--out", str(pool_dir))
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1
    assert str(src / "cat" / bad_name) in run.stderr and reason in run.stderr
    assert _snapshot(pool_dir) == before

    skipped = _kd3("pool", "import", "--from", str(src), "--out", str(pool_dir), "--skip-invalid")
    assert skipped.returncode == 0 and "3 added" in skipped.stdout and bad_name in skipped.stderr


def _folder(root: Path, seed: int) -> Path:
    (root / "cat").mkdir(parents=True)
    for i in range(3):
        (root / "cat" / f"{i}.png").write_bytes(make_image_bytes(seed + i))
    return root


def test_npz_without_x_is_refused(tmp_path):
    path = tmp_path / "nox.npz"
    np.savez(path, y=np.arange(3))
    run = _kd3("pool", "import", "--from", str(path), "--out", str(tmp_path / "pool"))
    assert run.returncode == 2
    assert (
        run.stderr.strip()
        == f"kd3 pool: error: {path}: no 'x' array (uint8 N,H,W,3) and no 'jpeg'+'offsets' arrays"
    )
    assert not (tmp_path / "pool").exists()


def test_npz_with_wrong_dtype_or_not_a_zip(tmp_path):
    bad = tmp_path / "float.npz"
    np.savez(bad, x=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(PoolError, match="'x' must be uint8"):
        import_into_pool(bad, tmp_path / "pool")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(PoolError, match="junk.npz: not a readable .npz"):
        import_into_pool(junk, tmp_path / "pool")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    """A PNG whose header declares 30000x30000 pixels: refused from the header alone."""
    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, "PNG")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "bomb.png").write_bytes(buf.getvalue())
    with pytest.raises(PoolError, match="bomb.png: too_many_pixels"):
        import_into_pool(tmp_path / "src", tmp_path / "pool")


def _exif_rotated_jpeg() -> bytes:
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def _half_transparent_png() -> bytes:
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[..., 0], rgba[:, 12:, 3] = 200, 255  # red, transparent on the left
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    return buf.getvalue()


def test_npz_files_import_and_materialize_as_the_same_bytes_added_to_a_pool(tmp_path):
    """Encoded files in an npz (EXIF rotation, transparency) are stored as they are and decode
    through the pool exactly as the npz reader decodes them, and as when added directly."""
    blobs = [_exif_rotated_jpeg(), _half_transparent_png(), make_image_bytes(3, fmt="JPEG")]
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    path = tmp_path / "mixed.npz"
    np.savez(path, jpeg=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets)
    imported = import_into_pool(path, tmp_path / "imported").pool
    rows = imported.manifest().to_pylist()
    assert [r["format"] for r in rows] == ["JPEG", "PNG", "JPEG"]
    assert [(r["width"], r["height"]) for r in rows] == [(32, 16), (24, 24), (32, 32)]

    direct = Pool.create(tmp_path / "direct")
    direct.add([NewImage(b, url=f"d{i}") for i, b in enumerate(blobs)])
    from_import, from_add = materialize(imported, size=16), materialize(direct, size=16)
    assert np.array_equal(from_import.images, from_add.images)
    assert from_import.sha256 == [r["sha256"] for r in rows] == from_add.sha256

    npz = read_npz(path)
    rotated = np.asarray(npz.rgb(0))
    assert rotated.shape == (32, 16, 3)  # displayed upright: tall
    assert np.abs(from_import.images[0].astype(int) - rotated[8:24].astype(int)).max() <= 1
    assert (from_import.images[1][:, :8] == 255).all()  # transparent: composited on white
    assert (from_import.images[1][:, 8:] == (200, 0, 0)).all()


def test_import_reports_duplicates_inside_the_source_as_finds(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x[[0, 1, 0, 2]])
    report = import_into_pool(tmp_path / "d.npz", tmp_path / "pool")
    assert (report.seen, report.added, report.finds_recorded) == (4, 3, 1)
    assert report.pool.finds()["url"].to_pylist() == ["npz:d.npz#2"]


def test_source_is_positional_or_from_but_not_two_different_ones(tmp_path, npz, capsys):
    from workers.cli import main as kd3

    path, _, _ = npz
    assert kd3(["pool", "import", str(path), "--out", str(tmp_path / "pool")]) == 0
    assert "30 added" in capsys.readouterr().out
    other = tmp_path / "other.npz"
    assert kd3(["pool", "import", str(other), "--from", str(path), "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err == f"kd3 pool: error: two sources given ({other} and --from {path})\n"


def test_the_pool_command_line_module_imports_no_heavy_library():
    code = (
        "import sys, pool.cli; "
        "print(sorted({'numpy', 'pyarrow', 'PIL', 'tqdm'} & {m.split('.')[0] for m in sys.modules}))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "[]", run.stderr
