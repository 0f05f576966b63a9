import numpy as np
import pyarrow.compute as pc
from PIL import Image

from pool import NewImage, Pool, materialize
from pool.importer import import_into_pool
from tests.conftest import make_image_bytes


def test_materialize_decodes_kept_images_and_reuses_the_cache(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", x=x, y=np.arange(12) % 2)
    pool = import_into_pool(tmp_path / "s.npz", tmp_path / "pool").pool

    first = materialize(pool, size=32)
    assert first.images.shape == (12, 32, 32, 3) and first.images.dtype == np.uint8
    assert np.array_equal(first.images, x)
    assert first.class_index.tolist() == (np.arange(12) % 2).tolist()
    mtime = (tmp_path / "pool" / "cache").joinpath(first.path.split("/")[-1]).stat().st_mtime_ns

    again = materialize(pool, size=32)
    assert again.path == first.path
    assert (tmp_path / "pool" / "cache" / first.path.split("/")[-1]).stat().st_mtime_ns == mtime

    # Marking one image as a duplicate changes the kept set: the cache is rebuilt without it.
    dropped = first.sha256[3]
    pool.update(
        lambda t: t.set_column(
            t.schema.get_field_index("status"),
            "status",
            pc.if_else(pc.equal(t["sha256"], dropped), "duplicate", t["status"]),
        )
    )
    rebuilt = materialize(pool, size=32)
    assert (
        rebuilt.path != first.path and len(rebuilt.sha256) == 11 and dropped not in rebuilt.sha256
    )
    assert np.array_equal(rebuilt.images, np.delete(x, 3, axis=0))
    assert len(list((tmp_path / "pool" / "cache").glob("images-32-*.npy"))) == 1


def test_materialize_resizes_and_centre_crops(tmp_path):
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = 255  # a white centre square on black sides
    import io

    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, "PNG")
    pool = Pool.create(tmp_path / "p")
    pool.add(
        [NewImage(buf.getvalue(), url="wide"), NewImage(make_image_bytes(1, (8, 8)), url="tiny")]
    )
    out = materialize(pool, size=10)
    assert out.images.shape == (2, 10, 10, 3)
    assert out.images[0].min() == 255  # only the centre square survives the crop
