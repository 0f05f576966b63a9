"""Decontamination quality: hide transformed CIFAR-10 test images in a web pool, find them.

    .venv/bin/python bench/dedup_quality.py [--data DIR] [--per-transform 400] [--radius R] [--sim S]

Builds a temporary pool from the web pool (webpool_tinyimagenet32.npz, untouched images) plus
transformed copies of CIFAR-10 test images, runs `kd3 dedup` (dedup.run_dedup) against the
CIFAR-10 test set as evaluation set, and prints recall per transform and the false-positive rate
on the untouched pool images. Then it runs the same decontamination of the CIFAR-10 training set
against the test set (the ciFAIR paper reports near-duplicates for about 3% of test images).

Data: ../shared/data relative to the project root, or --data, or $KD3_DATA.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def resize_up(img, rng):
    return _png(img.resize((64, 64), Image.Resampling.BICUBIC))


def resize_down(img, rng):
    side = int(rng.integers(20, 28))
    return _png(img.resize((side, side), Image.Resampling.BILINEAR))


def jpeg(img, rng):
    return _jpeg(img, int(rng.integers(30, 96)))


def crop(img, rng):
    """Remove 5 to 15% of each side's length in total, at a random offset; keep the crop's size."""
    w, h = img.size
    frac = rng.uniform(0.05, 0.15)
    cw, ch = round(w * (1 - frac)), round(h * (1 - frac))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return _png(img.crop((x, y, x + cw, y + ch)))


def flip(img, rng):
    return _png(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


def jitter(img, rng):
    """Brightness, contrast and saturation each scaled by a factor in [0.9, 1.1]."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(rng.uniform(0.9, 1.1))
    return _png(img)


def rotate(img, rng):
    angle = rng.uniform(3, 8) * rng.choice([-1, 1])
    return _png(img.rotate(angle, Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)))


def text(img, rng):
    """A small watermark-like text line drawn over the image (upscaled to 64 px first)."""
    img = img.resize((64, 64), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    y = int(rng.integers(2, 50))
    draw.text((2, y), "stock kd3", fill=(255, 255, 255))
    return _png(img)


TRANSFORMS = {
    "resize_up": resize_up,
    "resize_down": resize_down,
    "jpeg_q30-95": jpeg,
    "crop_5-15%": crop,
    "hflip": flip,
    "color_jitter": jitter,
    "rotate_3-8deg": rotate,
    "text_overlay": text,
}


def data_dir(flag: str | None) -> Path:
    return Path(flag or os.environ.get("KD3_DATA") or ROOT.parent / "shared" / "data")


def build_pool(root: Path, web: np.ndarray, test: np.ndarray, per_transform: int, rng):
    """Web pool images (untouched) plus transformed CIFAR test copies; returns url -> label."""
    from pool.store import NewImage, Pool

    pool = Pool.create(root)
    items, truth = [], {}
    for i, img in enumerate(web):
        items.append(NewImage(_png(Image.fromarray(img)), url=f"web#{i}"))
        truth[f"web#{i}"] = ("untouched", None)
    for name, fn in TRANSFORMS.items():
        for k in rng.choice(len(test), per_transform, replace=False):
            url = f"{name}#{k}"
            items.append(NewImage(fn(Image.fromarray(test[k]), rng), url=url))
            truth[url] = (name, int(k))
    pool.add(items)
    return pool, truth


def main() -> None:
    from dedup.embeddings import DEFAULT_NETWORK, create_extractor
    from dedup.run import DEFAULT_RADIUS, DEFAULT_SIM, dedup_pool

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--per-transform", type=int, default=400)
    parser.add_argument("--radius", type=int, default=DEFAULT_RADIUS)
    parser.add_argument("--sim", type=float, default=DEFAULT_SIM)
    parser.add_argument("--network", default=DEFAULT_NETWORK)
    parser.add_argument("--train-limit", type=int, default=50000)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    data = data_dir(args.data)
    rng = np.random.default_rng(0)
    web = np.load(data / "webpool_tinyimagenet32.npz")["x"]
    test = np.load(data / "cifar10_test.npz")["x"]
    print(f"radius <= {args.radius} (pHash), {args.network} similarity >= {args.sim}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        pool, truth = build_pool(Path(tmp) / "pool", web, test, args.per_transform, rng)
        built = time.perf_counter() - start
        dedup_pool(
            pool.root,
            eval_set=data / "cifar10_test.npz",
            extractor=create_extractor(args.network),
            model_key=args.network,
            radius=args.radius,
            sim=args.sim,
        )
        elapsed = time.perf_counter() - start - built
        rows = pool.manifest().select(["url", "status", "eval_match", "status_reason"]).to_pylist()
    print(f"pool of {len(rows)} images built in {built:.0f} s; dedup in {elapsed:.0f} s\n")
    print(
        f"{'images':<16} {'n':>6} {'found':>7} {'rate':>7} {'right item':>10}  by hash / embedding"
    )
    for name in [*TRANSFORMS, "untouched"]:
        group = [r for r in rows if truth[r["url"]][0] == name]
        found = [r for r in group if r["status"] == "test_overlap"]
        right = sum(r["eval_match"] == f"cifar10_test.npz#{truth[r['url']][1]}" for r in found)
        by_hash = sum(r["status_reason"] in ("hash", "exact-pixels", "exact-bytes") for r in found)
        label = "untouched (FP)" if name == "untouched" else name
        print(
            f"{label:<16} {len(group):>6} {len(found):>7} {len(found) / len(group):>7.4f} "
            f"{right:>10}  {by_hash} / {len(found) - by_hash}"
        )
    web_dups = sum(r["status"] == "duplicate" for r in rows if truth[r["url"]][0] == "untouched")
    print(f"untouched web images marked duplicate of one another: {web_dups}")
    train_vs_test(data, args, rng)


def train_vs_test(data: Path, args, rng) -> None:
    """Decontaminate a pool of CIFAR-10 training images (original JPEGs) against the test set."""
    from dedup.embeddings import create_extractor
    from dedup.run import dedup_pool
    from pool.store import NewImage, Pool

    archive = np.load(data / "cifar10_train_jpeg.npz")
    blob, offsets = archive["jpeg"], archive["offsets"]
    n = min(args.train_limit, len(offsets) - 1)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        pool = Pool.create(Path(tmp) / "train")
        items = [
            NewImage(blob[offsets[i] : offsets[i + 1]].tobytes(), url=f"train#{i}")
            for i in range(n)
        ]
        pool.add(items)
        result = dedup_pool(
            pool.root,
            eval_set=data / "cifar10_test_jpeg.npz",
            extractor=create_extractor(args.network),
            model_key=args.network,
            radius=args.radius,
            sim=args.sim,
        )
        table = pool.manifest().to_pylist()
    overlaps = [r for r in table if r["status"] == "test_overlap"]
    test_items = {r["eval_match"] for r in overlaps}
    reasons = {}
    for r in overlaps:
        reasons[r["status_reason"]] = reasons.get(r["status_reason"], 0) + 1
    print(
        f"\nCIFAR-10 train ({n} images) vs test (10000): {len(overlaps)} training images match "
        f"{len(test_items)} test images ({len(test_items) / 100:.2f}% of the test set; ciFAIR "
        f"reports about 3%); by {reasons}; {len(result.groups)} duplicate groups inside the "
        f"training set; {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
