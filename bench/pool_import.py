"""Time `kd3 pool import` of an .npz, the re-import (must add nothing), and materialisation.

.venv/bin/python bench/pool_import.py [--data ../shared/data] [--file cifar10_test.npz]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from pool import materialize
from pool.cli import format_info
from pool.importer import import_into_pool

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=os.environ.get("KD3_DATA", ROOT.parent / "shared" / "data")
    )
    parser.add_argument("--file", default="cifar10_test.npz")
    args = parser.parse_args()
    source = Path(args.data) / args.file
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pool"
        timings = {}
        start = time.perf_counter()
        first = import_into_pool(source, out)
        timings["import"] = time.perf_counter() - start
        start = time.perf_counter()
        again = import_into_pool(source, out)
        timings["re-import"] = time.perf_counter() - start
        start = time.perf_counter()
        arr = materialize(first.pool, size=32)
        timings["materialise (cold)"] = time.perf_counter() - start
        start = time.perf_counter()
        materialize(first.pool, size=32)
        timings["materialise (cached)"] = time.perf_counter() - start
        print(format_info(first.pool))
        print(
            f"\nimported {first.added} images, re-import added {again.added}; array {arr.images.shape}"
        )
        for name, seconds in timings.items():
            rate = first.seen / seconds if seconds else float("inf")
            print(f"{name:>22}: {seconds:7.2f} s  ({rate:,.0f} images/s)")


if __name__ == "__main__":
    main()
