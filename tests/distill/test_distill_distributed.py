"""One run over two processes (DDP, gloo on CPU), and ImageNet-size models end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from distill.checkpoints import load_model
from distill.errors import TrainingCancelled
from distill.options import DistillOptions
from distill.stage import run_distill
from pool.importer import import_into_pool
from workers.cli import main

from .conftest import distill
from .synthetic import write_npz

torch.set_num_threads(1)


def test_two_gloo_processes_match_one_process(small_world, tmp_path, capsys):
    one, one_student = distill(small_world, tmp_path / "one", "--epochs", "3")
    capsys.readouterr()
    # Two ranks, each streaming its shard of the pool from disk (100 kB budget).
    two, two_student = distill(
        small_world,
        tmp_path / "two",
        "--epochs",
        "3",
        "--processes",
        "2",
        "--memory-budget",
        "100kB",
    )
    err = capsys.readouterr().err
    assert "training on 2 processes" in err and "epoch 3, loss" in err  # rank 0's log, relayed
    assert [m["processes"] for m in two] == [2, 2, 2]
    assert [m["steps"] for m in two] == [m["steps"] for m in one]  # global batches
    # The teacher's pass, split in two shards and gathered, sees the pool as one process does.
    assert two[0]["pool_coverage"] == one[0]["pool_coverage"]
    assert two[0]["selected"] == one[0]["selected"]  # the same student at epoch 1: same vote
    # Within noise: rank-local BatchNorm and augmentation draws differ, nothing else.
    for a, b in zip(one, two, strict=True):
        assert abs(a["losses"]["loss"] - b["losses"]["loss"]) < 0.25 * a["losses"]["loss"]
        assert abs(a["selected"] - b["selected"]) <= 0.1 * a["selected"]
    assert one[-1]["eval_accuracy"] > 0.6 and two[-1]["eval_accuracy"] > 0.6  # chance: 0.25
    assert abs(one[-1]["eval_accuracy"] - two[-1]["eval_accuracy"]) <= 0.1
    assert two_student.keys() == one_student.keys()


def test_a_cancelled_two_process_run_resumes(small_world, tmp_path):
    options = DistillOptions(student="resnet8", epochs=12, batch_size=32, processes=2)
    paths = {"teacher": small_world / "teacher" / "teacher.pt", "pool": small_world / "pool"}
    events = []

    def stop_at_the_first_epoch(event):
        events.append(event)
        return True

    with pytest.raises(TrainingCancelled):
        run_distill(options, **paths, out=tmp_path, on_event=stop_at_the_first_epoch)
    # The ranks are stopped as soon as the first epoch is seen (polled twice a second): the
    # epochs written so far stay, the run does not finish.
    assert [e["metrics"]["epoch"] for e in events] == [1]
    done = len((tmp_path / "metrics.jsonl").read_text().splitlines())
    assert 1 <= done < 12 and not (tmp_path / "student.pt").exists()
    result = run_distill(options, **paths, out=tmp_path, resume=True, log=lambda m: None)
    assert [m["epoch"] for m in result.history] == list(range(1, 13))
    assert result.student_path.exists() and result.method_note.startswith("kd3:")


def test_a_torchvision_teacher_at_224_px_distils_into_a_torchvision_student(tmp_path, capsys):
    # The user's file: a torchvision ResNet-18 state_dict (4 classes), no kd3 metadata.
    torch.manual_seed(0)
    teacher = torchvision.models.resnet18(num_classes=4)
    torch.save(teacher.state_dict(), tmp_path / "resnet18.pt")
    write_npz(tmp_path / "pool.npz", 24, size=64, seed=3)
    import_into_pool(tmp_path / "pool.npz", tmp_path / "pool")
    write_npz(tmp_path / "test.npz", 8, size=64, seed=4)
    args = ["distill", "--teacher", str(tmp_path / "resnet18.pt"), "--arch", "resnet18"]
    args += ["--class-names", "red,green,blue,yellow", "--pool", str(tmp_path / "pool")]
    args += ["--eval", str(tmp_path / "test.npz"), "--student", "mobilenet_v3_small"]
    args += ["--epochs", "1", "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "o")]
    # 24 images of 224 x 224 x 3 bytes are 3.6 MB: a 1 MB budget streams them from the cache.
    assert main([*args, "--memory-budget", "1MB"]) == 0
    assert "over the memory budget: streamed" in capsys.readouterr().err
    (cache,) = (tmp_path / "pool" / "cache").glob("images-224-*.npy")
    assert np.load(cache, mmap_mode="r").shape == (24, 224, 224, 3)
    (m,) = [
        json.loads(line) for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()
    ]
    assert set(m["losses"]) == {"wfa", "kd", "loss"} and np.isfinite(m["losses"]["loss"])
    assert m["selected"] >= 2 and m["eval_count"] == 8  # at least 10% of the pool
    student, meta = load_model(tmp_path / "o" / "student.pt")
    assert (meta.arch, meta.kind, meta.input_size) == ("mobilenet_v3_small", "kd3-student", 224)
    # the student's projector maps mobilenet's 576 channels onto resnet18's 512 at 7 x 7
    with torch.no_grad():
        fmap = student.eval().forward_features(torch.zeros(1, 3, 224, 224))
    assert fmap.shape == (1, 512, 7, 7)


def test_the_ranks_stop_when_the_process_that_started_them_is_killed(small_world, tmp_path):
    # A worker killed mid-job must not leave ranks writing into a run another worker resumes.
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "from distill.options import DistillOptions; from distill.stage import run_distill; "
        f"run_distill(DistillOptions(student='resnet8', epochs=500, batch_size=32, processes=2), "
        f"teacher={str(small_world / 'teacher' / 'teacher.pt')!r}, "
        f"pool={str(small_world / 'pool')!r}, out={str(tmp_path)!r})"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)

    def ranks() -> list[int]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(tmp_path).encode() in cmdline and b"distill.distributed" in cmdline:
                found.append(int(pid))
        return found

    deadline = time.monotonic() + 120
    while not (tmp_path / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ranks(), "the ranks should be training"
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 30
    while ranks() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ranks() == []
