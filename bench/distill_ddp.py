"""One process against two (DistributedDataParallel, gloo on CPU): the same run, over seeds.

The default KD3 student (resnet8) distilled from the cached bench teacher (ResNet-20, trained
by distill_cifar10.py) on the web pool, evaluated on CIFAR-10 test, with --processes 1 and 2
for each seed. Two ranks split every global batch and the selection pass; they should match
one process within the seed-to-seed spread. On this 2-core machine each rank gets one core,
the single process two, so the wall times say little about a GPU host.

    .venv/bin/python bench/distill_ddp.py [--seeds 0,1,2] [--epochs 4] [--pool-images 8000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
TEACHER = ROOT / ".cache/bench/teacher-resnet20-03fc113cfeb4/teacher.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--pool-images", type=int, default=8000)
    parser.add_argument("--eval-images", type=int, default=5000)
    args = parser.parse_args()
    if not TEACHER.exists():
        sys.exit(
            f"{TEACHER}: missing; run bench/distill_cifar10.py first (it trains and caches it)"
        )
    from distill.options import DistillOptions
    from distill.stage import run_distill

    work = Path(tempfile.mkdtemp(prefix="kd3-ddp-"))
    web, test = np.load(DATA / "webpool_tinyimagenet32.npz"), np.load(DATA / "cifar10_test.npz")
    pick = np.random.default_rng(0).permutation(len(web["x"]))[: args.pool_images]
    np.savez(work / "pool.npz", x=web["x"][pick], class_names=web["class_names"])
    n = args.eval_images
    np.savez(work / "test.npz", x=test["x"][:n], y=test["y"][:n], class_names=test["class_names"])
    print(f"# kd3 default, resnet20 -> resnet8, {args.pool_images} web-pool images, "
          f"{args.epochs} epochs, CIFAR-10 test ({n} images)\n")  # fmt: skip
    print("| seed | 1 process: acc | 2 processes: acc | difference | s (1) | s (2) |")
    print("|---|---|---|---|---|---|")
    accs = {1: [], 2: []}
    for seed in (int(s) for s in args.seeds.split(",")):
        row, times = {}, {}
        for processes in (1, 2):
            options = DistillOptions(epochs=args.epochs, seed=seed, processes=processes)
            start = time.perf_counter()
            result = run_distill(
                options,
                teacher=TEACHER,
                pool=work / "pool.npz",
                eval_set=work / "test.npz",
                out=work / f"s{seed}-p{processes}",
                log=lambda message: None,
            )
            times[processes] = time.perf_counter() - start
            row[processes] = result.final["eval_accuracy"]
            accs[processes].append(row[processes])
        print(
            f"| {seed} | {row[1]:.4f} | {row[2]:.4f} | {row[2] - row[1]:+.4f} "
            f"| {times[1]:.0f} | {times[2]:.0f} |",
            flush=True,
        )
    for p in (1, 2):
        spread = statistics.stdev(accs[p]) if len(accs[p]) > 1 else 0.0
        print(f"\n{p} process(es): {statistics.mean(accs[p]):.4f} +- {spread:.4f}", end="")
    print()


if __name__ == "__main__":
    main()
