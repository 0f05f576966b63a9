"""Seconds per epoch of KD and the KD3 recipes, measured side by side in one process: each
method trains one epoch on the same pool images in turn, round after round, so load from other
processes falls on all of them alike. Uses the cached `cpu` teacher of bench/distill_cifar10.py
(run that first).

    nice -n 10 .venv/bin/python bench/epoch_time.py --pool-images 4000 --rounds 2 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.distill_cifar10 import (  # noqa: E402
    PRESETS,
    cached_train_images,
    data_dir,
    head,
    train_teacher,
)
from distill.checkpoints import load_model  # noqa: E402
from distill.data import load_images  # noqa: E402
from distill.trainer import TrainConfig, Trainer  # noqa: E402

METHODS = ["kd", "kd3", "kd3-paper"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool-images", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset, folder, cache = PRESETS["cpu"], data_dir(args.data_dir), ROOT / ".cache" / "bench"
    train = cached_train_images(folder / "cifar10_train_jpeg.npz", cache)
    teacher, meta = load_model(train_teacher(preset, train, cache, "cpu"))  # cached: no training
    pool = head(load_images(folder / "webpool_tinyimagenet32.npz", 32), args.pool_images)
    seconds = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for method in METHODS:
                cfg = TrainConfig(method=method, student=preset.student, epochs=1,
                                  batch_size=preset.batch_size, lr=preset.lr, seed=r)  # fmt: skip
                out = Path(tmp) / f"{method}-{r}"
                trainer = Trainer(cfg, pool, out, teacher, meta, device="cpu", log=lambda m: None)
                seconds[method].append(trainer.run().final["epoch_seconds"])
                print(f"round {r + 1}: {method:<10} {seconds[method][-1]:.1f} s", flush=True)
    kd = np.mean(seconds["kd"])
    print(
        f"\n{len(pool)} pool images, batch {preset.batch_size}, {torch.get_num_threads()} thread(s)"
    )
    for method in METHODS:
        s = np.mean(seconds[method])
        print(f"{method:<10} {s:7.1f} s per epoch   {s / kd:.2f}x KD")
    return 0


if __name__ == "__main__":
    sys.exit(main())
