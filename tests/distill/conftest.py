"""A small distillation world shared by the streaming and distributed tests."""

import json
import sys
from pathlib import Path

import pytest
import torch

from pool.importer import import_into_pool
from workers.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import write_npz  # noqa: E402


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A resnet8 teacher trained for one epoch, a pool directory of 160 images, an eval set."""
    root = tmp_path_factory.mktemp("streaming")
    write_npz(root / "train.npz", 256, seed=1)
    write_npz(root / "test.npz", 64, seed=2)
    write_npz(root / "pool.npz", 128, seed=3, distractors=32)
    import_into_pool(root / "pool.npz", root / "pool")
    args = ["train-teacher", "--data", str(root / "train.npz"), "--arch", "resnet8"]
    args += ["--epochs", "1", "--batch-size", "64", "--device", "cpu"]
    assert main([*args, "--out", str(root / "teacher")]) == 0
    return root


def distill(world, out, *extra):
    """`kd3 distill` of the small world's teacher, 2 epochs: its history (without timings) and
    student weights."""
    args = ["distill", "--teacher", str(world / "teacher" / "teacher.pt")]
    args += ["--pool", str(world / "pool"), "--eval", str(world / "test.npz")]
    args += ["--student", "resnet8", "--epochs", "2", "--batch-size", "32", "--device", "cpu"]
    assert main([*args, "--out", str(out), *extra]) == 0
    timing = {"epoch_seconds", "selection_seconds", "images_per_second"}
    lines = (out / "metrics.jsonl").read_text().splitlines()
    history = [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]
    return history, torch.load(out / "student.pt", weights_only=True)["state_dict"]
