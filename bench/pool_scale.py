"""Cost per image of filling a pool, at 10^3, 10^4 and 10^5 images: flat if nothing is O(N).

    nice .venv/bin/python bench/pool_scale.py [--sizes 1000,10000,100000] [--folder-max 10000]

Cases, each into a fresh pool in a temporary folder:
  crawl   the crawler's path: Pool.add in batches of 256, each image's ImageInfo and sha256
          already known (NewImage(info=..., sha256=...)), as the crawler's pipeline has them;
          also the cost of the first and of the last ~1,000 images added, since that is what
          grows when an add costs O(pool size)
  npz     import_into_pool (`kd3 pool import`) of an .npz of N pixel arrays
  folder  import_into_pool of a folder of N PNG files (sizes up to --folder-max)
  open    reading the finished crawl pool's manifest from a fresh Pool (what every stage does)

The images are 32x32 PNGs with distinct content (mostly flat, so small). Prints a table and
writes bench/results/pool_scale.json. The load average is recorded: on shared cores the
timings swing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pool import ImageInfo, NewImage, Pool
from pool.importer import import_into_pool
from pool.store import sha256_hex

ROOT = Path(__file__).resolve().parents[1]
BATCH = 256
EDGE = 1024  # the "first/last ~1,000 images": four batches of 256


def pixels(n: int) -> np.ndarray:
    """n distinct 32x32 RGB images: a fixed gradient with the index written into one row."""
    x = np.zeros((n, 32, 32, 3), np.uint8)
    x[:] = np.linspace(0, 255, 32, dtype=np.uint8)[None, None, :, None]
    index = np.arange(n, dtype=np.uint32)
    for byte in range(3):
        x[:, 0, byte, :] = ((index >> (8 * byte)) & 0xFF)[:, None].astype(np.uint8)
    return x


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def crawl_case(root: Path, files: list[bytes]) -> dict:
    pool = Pool.create(root)
    info = ImageInfo(width=32, height=32, format="PNG", frames=1)
    per_batch = []
    start = time.perf_counter()
    for i in range(0, len(files), BATCH):
        items = [
            NewImage(
                data,
                url=f"http://bench.test/{i + j}.png",
                source="bench",
                info=info,
                sha256=sha256_hex(data),
            )  # fmt: skip
            for j, data in enumerate(files[i : i + BATCH])
        ]
        t = time.perf_counter()
        pool.add(items)
        per_batch.append((len(items), time.perf_counter() - t))
    seconds = time.perf_counter() - start
    edge = EDGE // BATCH
    result = {
        "seconds": seconds,
        "us_per_image": 1e6 * seconds / len(files),
        # the first batches also create the 256 image sub-folders; the second ~1,000 do not
        "first_us_per_image": _us_per_image(per_batch[:edge]),
        "second_us_per_image": _us_per_image(per_batch[edge : 2 * edge]),
        "last_us_per_image": _us_per_image(per_batch[-edge:]),
        "manifest_parts_left": len(list((root / "manifest.d").glob("*.parquet"))),
    }
    t = time.perf_counter()
    rows = Pool.open(root).manifest().num_rows
    result["open_seconds"] = time.perf_counter() - t
    assert rows == len(files), (rows, len(files))
    return result


def _us_per_image(batches: list[tuple[int, float]]) -> float | None:
    count = sum(n for n, _ in batches)
    return 1e6 * sum(s for _, s in batches) / count if count else None


def import_case(root: Path, source: Path, n: int) -> dict:
    start = time.perf_counter()
    report = import_into_pool(source, root)
    seconds = time.perf_counter() - start
    assert report.added == n, (report.added, n)
    return {"seconds": seconds, "us_per_image": 1e6 * seconds / n}


def run_size(n: int, tmp: Path, folder_max: int) -> dict:
    x = pixels(n)
    files = [png(image) for image in x]
    row: dict = {"n": n, "png_bytes_mean": sum(map(len, files)) / n}
    row["crawl"] = crawl_case(tmp / "crawl", files)
    np.savez(tmp / "set.npz", x=x, y=np.arange(n) % 10)
    row["npz"] = import_case(tmp / "npz", tmp / "set.npz", n)
    if n <= folder_max:
        folder = tmp / "folder"
        for i, data in enumerate(files):
            sub = folder / f"c{i % 10}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{i}.png").write_bytes(data)
        row["folder"] = import_case(tmp / "from-folder", folder, n)
    for name in ("crawl", "npz", "folder", "from-folder", "set.npz"):
        path = tmp / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return row


def table(rows: list[dict]) -> str:
    lines = [
        f"{'case':<8} {'N':>7} {'seconds':>8} {'us/image':>9} {'x 10^3':>7}   notes",
    ]
    for case in ("crawl", "npz", "folder"):
        base = next((r[case]["us_per_image"] for r in rows if case in r), None)
        for r in rows:
            if case not in r:
                continue
            c = r[case]
            note = ""
            if case == "crawl":
                early = c["second_us_per_image"] or c["first_us_per_image"]
                note = (
                    f"first/second/last {EDGE}: {c['first_us_per_image']:.0f}/{early:.0f}/"
                    f"{c['last_us_per_image']:.0f} us, last/second x{c['last_us_per_image'] / early:.2f}; "
                    f"{c['manifest_parts_left']} parts left; open {c['open_seconds']:.2f} s"
                )
            load = f"load {r['load_before'][0]:.1f}-{r['load_after'][0]:.1f}"
            lines.append(
                f"{case:<8} {r['n']:>7} {c['seconds']:>8.2f} {c['us_per_image']:>9.0f} "
                f"{c['us_per_image'] / base:>7.2f}   {load}; {note}".rstrip("; ")
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="1000,10000,100000", help="N values (default: %(default)s)"
    )
    parser.add_argument("--folder-max", type=int, default=10000,
                        help="largest N imported from a folder too (default: %(default)s)")  # fmt: skip
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pool_scale.json"),
                        help="JSON results file (default: %(default)s)")  # fmt: skip
    parser.add_argument("--tmp", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for n in sizes:
            load = os.getloadavg()
            row = run_size(n, Path(tmp), args.folder_max)
            row["load_before"], row["load_after"] = load, os.getloadavg()
            rows.append(row)
            print(f"N={n}: done (load {load[0]:.1f} -> {row['load_after'][0]:.1f})", flush=True)
    report = table(rows)
    print(report)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "batch": BATCH,
        "rows": rows,
        "table": report.splitlines(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
