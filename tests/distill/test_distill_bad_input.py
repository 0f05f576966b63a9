"""Bad input to train-teacher, distill and evaluate: one line on stderr, exit 2, nothing written.

Every file here is real and small; the oversized cases are headers that claim a large size (or
a low limit set through the environment), so nothing large is ever allocated."""

import io
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.checkpoints import ModelMeta, load_model, save_model
from distill.data import load_images
from distill.errors import CheckpointError, DistillError
from distill.models import create_model
from workers.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import NAMES, make_images, write_npz  # noqa: E402

torch.set_num_threads(1)
TRAIN = ["--epochs", "1", "--batch-size", "8", "--device", "cpu"]


def refused(argv: list[str], capsys) -> str:
    """Run kd3; it must exit 2 with one `kd3 <cmd>: error:` line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kd3 {argv[0]}: error: ") and len(err.splitlines()) == 1, err
    return err


def train_teacher(tmp_path, data: Path, *extra: str) -> list[str]:
    return ["train-teacher", "--data", str(data), "--arch", "resnet8", *TRAIN, *extra,
            "--out", str(tmp_path / "out")]  # fmt: skip


def npz(path: Path, **arrays) -> Path:
    x, y = make_images(16, 16)
    np.savez(path, **{"x": x, "y": y, "class_names": np.array(NAMES), **arrays})
    return path


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"y": make_images(16)[1] + 50}, "label 53 out of range for its 4 class names"),
        ({"y": np.r_[np.nan, np.zeros(15)]}, "'y' has NaN or infinite labels"),
        ({"y": make_images(16)[1][:, None]}, r"'y' must be 1-D class indices.*\(16, 1\)"),
        ({"y": np.full(16, -2)}, "label -2 is negative"),
        ({"x": np.zeros((0, 16, 16, 3), np.uint8), "y": np.zeros(0, np.int64)}, "no images in"),
        ({"class_names": np.array(["a", "a", "b", "c"])}, "class names must be distinct"),
    ],
    ids=["labels-50-59", "nan-labels", "2d-y", "label-below-minus-1", "empty-x", "same-names"],
)
def test_train_teacher_refuses_labels_that_do_not_fit_the_class_names(
    tmp_path, capsys, arrays, message
):
    data = npz(tmp_path / "bad.npz", **arrays)
    err = refused(train_teacher(tmp_path, data), capsys)
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "teacher.pt").exists()


def test_a_teacher_has_one_class_per_name_even_when_a_class_has_no_images(tmp_path, monkeypatch):
    monkeypatch.setattr("distill.report.write_report", lambda *a, **k: None)  # matplotlib: slow
    x, y = make_images(16, 16)
    data = npz(tmp_path / "three.npz", y=np.where(y == 3, 0, y))  # no yellow image
    assert main(train_teacher(tmp_path, data)) == 0
    _, meta = load_model(tmp_path / "out" / "teacher.pt")
    assert meta.num_classes == 4 and meta.class_names == NAMES


def test_image_size_out_of_range_is_refused(tmp_path, capsys):
    data = npz(tmp_path / "a.npz")
    err = refused(train_teacher(tmp_path, data, "--input-size", "100000"), capsys)
    assert "--input-size: Input should be less than or equal to 1024" in err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def pool(tmp_path):
    return write_npz(tmp_path / "pool.npz", 16, size=16)


def save_teacher(path: Path, weight: float | None = None, **meta) -> Path:
    model = create_model("resnet8", 4)
    if weight is not None:
        with torch.no_grad():
            model.head.weight[0, 0] = weight
    save_model(
        path, model, ModelMeta("resnet8", 4, **{"class_names": NAMES, "input_size": 16, **meta})
    )
    return path


@pytest.mark.parametrize(
    "weight, meta, message",
    [
        (None, {"std": (0.0, 0.0, 0.0)}, "std [0.0, 0.0, 0.0] must be positive"),
        (None, {"std": (0.2, float("inf"), 0.2)}, "must be three finite numbers"),
        (None, {"mean": (float("nan"), 0.5, 0.5)}, "must be three finite numbers"),
        (None, {"input_size": 100000}, "input_size 100000 is not in 1..1024"),
        (None, {"class_names": NAMES[:3]}, "class_names must be 4 strings"),
        (float("nan"), {}, "hold NaN or infinite values (e.g. head.weight)"),
        (float("inf"), {}, "hold NaN or infinite values (e.g. head.weight)"),
    ],
    ids=["std-0", "std-inf", "mean-nan", "input-size", "names", "nan-weight", "inf-weight"],
)
def test_distill_refuses_a_teacher_with_unusable_metadata_or_weights(
    tmp_path, capsys, pool, weight, meta, message
):
    teacher = save_teacher(tmp_path / "t.pt", weight, **meta)
    argv = ["distill", "--teacher", str(teacher), "--pool-npz", str(pool), *TRAIN]
    err = refused([*argv, "--out", str(tmp_path / "out")], capsys)
    assert message in err
    assert not (tmp_path / "out").exists()
    argv = ["evaluate", str(teacher), "--eval", str(pool)]
    assert message in refused(argv, capsys)


def test_distill_refuses_nameless_pool_labels_beyond_the_teachers_classes(tmp_path, capsys):
    teacher = save_teacher(tmp_path / "t.pt")
    x, y = make_images(16, 16)
    np.savez(tmp_path / "pool.npz", x=x, y=y + 6)  # no class names: labels index the teacher's
    argv = ["distill", "--teacher", str(teacher), "--pool", str(tmp_path / "pool.npz"), *TRAIN]
    err = refused([*argv, "--out", str(tmp_path / "out")], capsys)
    assert "labels run to 9, beyond the teacher's 4 classes [red, green, blue, yellow]" in err
    assert not (tmp_path / "out").exists()


def jpeg_npz(path: Path, blobs: list[bytes]) -> Path:
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
    jpeg = np.frombuffer(b"".join(blobs), np.uint8)
    np.savez(path, jpeg=jpeg, offsets=offsets, y=np.zeros(len(blobs), np.int64))
    return path


def jpeg(size: int = 16, claim: int | None = None) -> bytes:
    """A size x size JPEG; with `claim`, its header says claim x claim pixels instead."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 40, 40)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    if claim:
        sof = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
        data[sof + 5 : sof + 9] = claim.to_bytes(2, "big") * 2
    return bytes(data)


def test_evaluate_refuses_a_decompression_bomb_in_the_jpeg_form(tmp_path, capsys):
    teacher = save_teacher(tmp_path / "t.pt")
    for claim in (30000, 10000, 5000):  # over Pillow's error and warning limits, and ours
        bomb = jpeg_npz(tmp_path / "bomb.npz", [jpeg(), jpeg(claim=claim)])
        err = refused(["evaluate", str(teacher), "--eval", str(bomb)], capsys)
        assert "bomb.npz#1: not a readable image (too_many_pixels" in err


def test_decoded_jpeg_form_is_bounded_before_decoding(tmp_path, monkeypatch):
    data = jpeg_npz(tmp_path / "j.npz", [jpeg(64)] * 8)
    assert len(load_images(data, 16)) == 8
    monkeypatch.setenv("KD3_MAX_DATA_BYTES", "50000")
    with pytest.raises(DistillError, match="98,304 bytes once loaded, over the limit of 50,000"):
        load_images(data, 16)


def test_npz_arrays_are_sized_from_their_headers_before_they_are_read(tmp_path, monkeypatch):
    # An x.npy whose header claims 3 TB: numpy would allocate that before reading the data.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 32, 32, 3)}
    )
    with zipfile.ZipFile(tmp_path / "lie.npz", "w") as archive:
        archive.writestr("x.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(DistillError, match="3,072,000,000,000 bytes once loaded"):
        load_images(tmp_path / "lie.npz", 16)
    # A real, highly compressed npz over a (lowered) limit is refused before np.load.
    x = np.zeros((16, 64, 64, 3), np.uint8)
    np.savez_compressed(tmp_path / "zeros.npz", x=x)
    monkeypatch.setenv("KD3_MAX_DATA_BYTES", str(100_000))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load before the check"))
    with pytest.raises(DistillError, match="196,608 bytes once loaded"):
        load_images(tmp_path / "zeros.npz", 16)


def test_checkpoint_members_are_sized_before_torch_load(tmp_path, monkeypatch, capsys):
    # torch.save stores members uncompressed; the same members deflated load just as well.
    torch.save({"head.weight": torch.zeros(1024, 1024)}, tmp_path / "plain.pt")
    with (
        zipfile.ZipFile(tmp_path / "plain.pt") as src,
        zipfile.ZipFile(tmp_path / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), zipfile.ZIP_DEFLATED)
    assert (tmp_path / "bomb.pt").stat().st_size < 50_000
    monkeypatch.setenv("KD3_MAX_CHECKPOINT_BYTES", str(1 << 20))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load before the check"))
    with pytest.raises(CheckpointError, match=r"bytes once loaded, over the limit of 1,048,576"):
        load_model(tmp_path / "bomb.pt", arch="resnet8")
    err = refused(["evaluate", str(tmp_path / "bomb.pt"), "--eval", "x.npz"], capsys)
    assert "KD3_MAX_CHECKPOINT_BYTES" in err
