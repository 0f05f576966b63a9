"""Decoded datasets (npz, JPEG npz, pool) and batched tensor augmentation."""

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from distill.data import Normalizer, load_images, random_resized_crop_theta
from distill.errors import DistillError
from pool.importer import import_into_pool

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import make_images, write_npz  # noqa: E402

torch.set_num_threads(1)


def test_npz_plain_and_jpeg_forms_load_as_uint8_tensors(tmp_path):
    write_npz(tmp_path / "a.npz", 12, size=16)
    data = load_images(tmp_path / "a.npz", 16)
    assert data.images.dtype == torch.uint8 and data.images.shape == (12, 16, 16, 3)
    assert data.class_names == ["red", "green", "blue", "yellow"] and data.has_labels
    resized = load_images(tmp_path / "a.npz", 8)
    assert resized.images.shape == (12, 8, 8, 3)
    # JPEG form as in ../shared/data: concatenated bytes + offsets
    x, y = make_images(5, 16)
    blobs = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
    np.savez(tmp_path / "j.npz", jpeg=np.concatenate(blobs), offsets=offsets, y=y)
    jpeg = load_images(tmp_path / "j.npz", 16)
    assert jpeg.images.shape == (5, 16, 16, 3)
    decoded = [np.asarray(Image.open(io.BytesIO(b.tobytes())).convert("RGB")) for b in blobs]
    assert np.array_equal(jpeg.images.numpy(), np.stack(decoded))


def test_pool_directory_loads_its_kept_images(tmp_path):
    write_npz(tmp_path / "a.npz", 10, size=16)
    import_into_pool(tmp_path / "a.npz", tmp_path / "pool")
    data = load_images(tmp_path / "pool", 16)
    assert data.images.shape == (10, 16, 16, 3) and data.class_names[0] == "red"
    assert sorted(data.labels.tolist()) == sorted(np.load(tmp_path / "a.npz")["y"].tolist())


def test_bad_data_files_give_one_line_errors(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DistillError, match="not a readable .npz"):
        load_images(tmp_path / "bad.npz")
    np.savez(tmp_path / "f.npz", x=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(DistillError, match="must be uint8"):
        load_images(tmp_path / "f.npz")
    with pytest.raises(DistillError, match="no such pool directory or .npz"):
        load_images(tmp_path / "nothing")


def test_full_crop_is_identity_or_exact_flip():
    images = torch.randint(0, 256, (64, 8, 8, 3), dtype=torch.uint8)
    norm = Normalizer((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), 8, "cpu")
    out = norm.train(images, torch.Generator().manual_seed(0), scale=(1, 1), ratio=(1, 1))
    plain = images.permute(0, 3, 1, 2).float()
    same = (out - plain).abs().flatten(1).amax(1) < 1e-3
    flipped = (out - plain.flip(-1)).abs().flatten(1).amax(1) < 1e-3
    assert bool((same | flipped).all())
    assert 10 < int(flipped.sum()) < 54  # about half flipped


def test_crop_matches_torchvision_resized_crop():
    """One sampled box, resampled by the batched grid_sample path and by torchvision."""
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (6, 24, 24, 3), dtype=torch.uint8)
    theta = random_resized_crop_theta(6, 24, 24, (0.3, 1.0), (3 / 4, 4 / 3), g)
    norm = Normalizer((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), 24, "cpu")
    out = norm.train(images, torch.Generator().manual_seed(3), scale=(0.3, 1.0))
    for i in range(6):
        sx, tx, sy, ty = theta[i, 0, 0], theta[i, 0, 2], theta[i, 1, 1], theta[i, 1, 2]
        w, h = round(abs(float(sx)) * 24), round(float(sy) * 24)
        x0, y0 = round((float(tx) + 1) * 12 - w / 2), round((float(ty) + 1) * 12 - h / 2)
        assert x0 >= 0 and x0 + w <= 24 and y0 >= 0 and y0 + h <= 24
        area = w * h / 576
        assert 0.3 - 0.05 <= area <= 1.0
        img = images[i].permute(2, 0, 1).float()
        ref = TF.resized_crop(img, y0, x0, h, w, [24, 24], antialias=False)
        if sx < 0:
            ref = ref.flip(-1)
        # Same box, same bilinear interpolation; only the outermost pixels may differ (torchvision
        # clamps at the crop's edge, grid_sample reads the neighbour just outside the crop).
        assert (out[i] - ref)[:, 2:-2, 2:-2].abs().max() < 0.05


def test_pad_crop_is_a_shifted_copy_of_the_zero_padded_image():
    """Every view equals torchvision's RandomCrop(32, padding=4) + flip for some shift."""
    images = torch.randint(1, 256, (48, 32, 32, 3), dtype=torch.uint8)
    norm = Normalizer((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), 32, "cpu")
    out = norm.train(images, torch.Generator().manual_seed(0), augment="padcrop")
    shifts, flips = set(), 0
    for i in range(48):
        img = images[i].permute(2, 0, 1).float()
        matches = [
            (dy, dx, flip)
            for flip in (False, True)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(
                TF.pad(img.flip(-1) if flip else img, [4])[:, dy : dy + 32, dx : dx + 32], out[i]
            )  # fmt: skip
        ]
        assert len(matches) == 1, i
        shifts.add(matches[0][:2])
        flips += matches[0][2]
    assert len(shifts) > 20 and 10 < flips < 38  # shifts spread over the 81, about half flipped
