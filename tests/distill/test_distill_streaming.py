"""Pools over the memory budget: read from the disk cache, and trained exactly as in memory."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.errors import DistillError
from distill.streaming import DiskImages
from pool import Pool, materialize
from workers.cli import main

from .conftest import distill

torch.set_num_threads(1)


def test_disk_images_read_any_rows_as_a_tensor_would(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (300, 5, 7, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    disk, memory = DiskImages(tmp_path / "x.npy"), torch.from_numpy(x)
    assert disk.shape == (300, 5, 7, 3) and len(disk) == 300 and disk.nbytes == x.nbytes
    for index in ([5, 3, 3, 299, 0, 4, 5], [], list(range(40, 90)) + [10, 11, 12]):
        index = torch.tensor(index, dtype=torch.int64)
        assert torch.equal(disk[index], memory[index])
    assert torch.equal(disk[2:250:3], memory[2:250:3])
    assert torch.equal(torch.cat(list(disk.split(128))), memory)  # read ahead, in order
    batches = [torch.randperm(300)[:64] for _ in range(20)]
    assert all(
        torch.equal(a, memory[i]) for a, i in zip(disk.batches(batches), batches, strict=True)
    )
    # a subset stays on disk; a copy sent to another process reopens the file
    odd = disk.take(torch.arange(300) % 2 == 1)
    assert len(odd) == 150 and torch.equal(odd[torch.tensor([0, 149])], memory[[1, 299]])
    assert torch.equal(pickle.loads(pickle.dumps(odd))[:], memory[1::2])
    with pytest.raises(IndexError):
        disk[torch.tensor([300])]
    # another job rebuilding the pool's cache removes this file: what is open still reads
    (tmp_path / "x.npy").unlink()
    assert torch.equal(disk.take(torch.tensor([7, 3]))[:], memory[[7, 3]])


def test_disk_images_refuse_what_is_no_image_cache(tmp_path):
    np.save(tmp_path / "floats.npy", np.zeros((2, 4, 4, 3), np.float32))
    np.save(tmp_path / "gray.npy", np.zeros((2, 4, 4), np.uint8))
    np.save(tmp_path / "cut.npy", np.zeros((10, 4, 4, 3), np.uint8))
    (tmp_path / "text.npy").write_text("not numpy")
    cut = tmp_path / "cut.npy"
    cut.write_bytes(cut.read_bytes()[:-5])
    for name, message in [("floats", "uint8"), ("gray", "uint8"), ("cut", "truncated")]:
        with pytest.raises(DistillError, match=message):
            DiskImages(tmp_path / f"{name}.npy")
    with pytest.raises(DistillError, match="not an image cache"):
        DiskImages(tmp_path / "text.npy")


def test_a_stopped_cache_build_resumes_from_its_last_whole_row(small_world):
    pool = Pool.open(small_world / "pool")
    full = materialize(pool, size=12)
    expected = np.array(full.images)
    target = Path(full.path)
    # As a build stopped after 100 rows and half of the 101st would leave it; rows 0-99 are
    # zeroed so that a rebuild (instead of a resume) would show.
    row = 12 * 12 * 3
    header = target.stat().st_size - len(expected) * row
    data = bytearray(target.read_bytes()[: header + 100 * row + row // 2])
    data[header : header + 100 * row] = bytes(100 * row)
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(bytes(data))
    target.unlink()
    resumed = materialize(pool, size=12)
    assert resumed.path == str(target) and not partial.exists()
    got = np.array(resumed.images)
    assert not got[:100].any()  # kept from the partial file: not decoded again
    assert np.array_equal(got[100:], expected[100:])  # the torn row and the rest: decoded


@pytest.mark.parametrize(
    "options",
    [
        ["--bn-recalibration", "64"],  # kd3: robust selection on clean views, BN re-estimated
        ["--method", "kd3-paper"],  # the paper's selection on augmented views
        ["--method", "dfnd"],
    ],
)
def test_a_streamed_pool_trains_exactly_as_one_in_memory(small_world, tmp_path, capsys, options):
    in_memory = distill(small_world, tmp_path / "memory", *options)
    assert "streamed" not in capsys.readouterr().err
    # A budget of 100 kB is under the pool's 160 x 16 x 16 x 3 bytes: it is streamed.
    streamed = distill(small_world, tmp_path / "disk", *options, "--memory-budget", "100kB")
    assert "over the memory budget: streamed from" in capsys.readouterr().err
    assert streamed[0] == in_memory[0]
    assert streamed[1].keys() == in_memory[1].keys()
    assert all(torch.equal(streamed[1][k], in_memory[1][k]) for k in in_memory[1])


def test_teacher_training_streams_a_labelled_pool(small_world, tmp_path):
    args = ["train-teacher", "--data", str(small_world / "pool"), "--arch", "resnet8"]
    args += ["--input-size", "16", "--epochs", "1", "--batch-size", "32", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--memory-budget", "1"]) == 0
    a, b = (json.loads((tmp_path / d / "metrics.jsonl").read_text()) for d in "ab")
    assert a["losses"] == b["losses"] and a["steps"] == b["steps"] == 4  # 128 labelled images


def test_a_bad_memory_budget_is_refused_before_any_work(small_world, tmp_path, capsys):
    args = ["distill", "--teacher", str(small_world / "teacher" / "teacher.pt")]
    args += ["--pool", str(small_world / "pool"), "--out", str(tmp_path / "o")]
    assert main([*args, "--memory-budget", "lots"]) == 2
    assert "memory" in capsys.readouterr().err and not (tmp_path / "o").exists()
