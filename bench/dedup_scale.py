"""Dedup speed: hashing, near-duplicate grouping and decontamination at scale.

    .venv/bin/python bench/dedup_scale.py [--data DIR] [--sizes 100000,1000000,10000000]

Hashing is timed on real images (the web pool, decoded PNG bytes) and reported per image.
Near-duplicate search uses synthetic 64-bit codes with planted near-duplicates (1 to radius bits
flipped, half of them also mirrored): each FAISS method is timed on the same codes, with the
exhaustive IndexBinaryFlat as the brute-force baseline, and its recall of the planted pairs
reported. Where a full run would not fit in the time budget, a sample of queries is timed and the
total extrapolated (marked "est").
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dedup import binary_index, grouping  # noqa: E402
from dedup.hashing import image_hashes  # noqa: E402
from pool.images import decode_rgb  # noqa: E402

RADIUS = 4


def data_dir(flag: str | None) -> Path:
    return Path(flag or os.environ.get("KD3_DATA") or ROOT.parent / "shared" / "data")


def time_hashing(data: Path, n: int) -> float:
    x = np.load(data / "webpool_tinyimagenet32.npz")["x"][:n]
    blobs = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "PNG")
        blobs.append(buf.getvalue())
    start = time.perf_counter()
    for b in blobs:
        image_hashes(decode_rgb(b))
    return (time.perf_counter() - start) / n


def planted_codes(n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n random codes whose last 5% are near-duplicates of earlier ones; mirror codes too."""
    planted = n // 20
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    mirrors = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    source = rng.integers(0, n - planted, planted)
    bits = np.unpackbits(codes[source], axis=1)
    flips = rng.integers(1, RADIUS + 1, planted)
    for k in range(1, RADIUS + 1):
        rows = np.nonzero(flips == k)[0]
        cols = np.argsort(rng.random((len(rows), 64)), axis=1)[:, :k]
        bits[rows[:, None], cols] ^= 1
    dup = np.packbits(bits, axis=1)
    mirrored = rng.random(planted) < 0.5  # the copy is the mirror image: its mirror code matches
    codes[n - planted :][~mirrored] = dup[~mirrored]
    mirrors[n - planted :][mirrored] = dup[mirrored]
    return codes, mirrors, source


def time_grouping(
    codes, mirrors, source, method: str, budget_s: float
) -> tuple[float, bool, float]:
    """Seconds to find all pairs and group them (extrapolated from a query sample if needed)."""
    n = len(codes)
    planted = len(source)
    start = time.perf_counter()
    index = binary_index.build_index(codes, method, RADIUS)
    built = time.perf_counter() - start
    # time a sample of queries first to decide whether the full run fits
    sample = np.concatenate([codes[-2000:], mirrors[-2000:]])
    t = time.perf_counter()
    binary_index.range_search(index, sample, RADIUS)
    per_query = (time.perf_counter() - t) / len(sample)
    if per_query * 2 * n > budget_s:
        m = min(planted, 20000)
        q = np.concatenate([codes[n - planted :][:m], mirrors[n - planted :][:m]])
        found = binary_index.range_search(index, q, RADIUS)
        got = set(zip((found.query % m).tolist(), found.db.tolist(), strict=True))
        recall = np.mean([(i, int(source[i])) in got for i in range(m)])
        return built + per_query * 2 * n, True, recall
    queries = np.concatenate([codes, mirrors])
    found = binary_index.range_search(index, queries, RADIUS)
    i, j = found.query % n, found.db
    keep = i != j
    labels = grouping.components(n, i[keep], j[keep])
    elapsed = time.perf_counter() - start
    recall = np.mean(labels[n - planted :] == labels[source])
    return elapsed, False, recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--hash-sample", type=int, default=5000)
    parser.add_argument("--budget", type=float, default=150, help="seconds per full search")
    parser.add_argument("--skip-decontamination", action="store_true")
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, radius <= {RADIUS}")
    per_image = time_hashing(data_dir(args.data), args.hash_sample)
    print(f"hashing (decode + pHash/dHash + mirrors + pixel digest), {args.hash_sample} images:")
    print(f"  {per_image * 1e6:.0f} us/image on one core")
    for n in (10**5, 10**6, 10**7):
        print(f"  {n:>9,} images: {per_image * n:8.0f} s (extrapolated)")
    print("\nnear-duplicate grouping (queries: every code and its mirror):")
    print(f"{'n':>10} {'method':>10} {'seconds':>10} {'recall':>7}")
    rng = np.random.default_rng(0)
    for n in (int(s) for s in args.sizes.split(",")):
        codes, mirrors, source = planted_codes(n, rng)
        for method in ("flat", "multihash", "ivf"):
            sec, est, recall = time_grouping(codes, mirrors, source, method, args.budget)
            print(
                f"{n:>10,} {method:>10} {sec:>9.1f}{'*' if est else ' '} {recall:>7.3f}", flush=True
            )
    print("* estimated from a sample of queries (recall measured on up to 20,000 planted pairs)")

    if not args.skip_decontamination:
        decontamination(rng)


def decontamination(rng, n_pool: int = 10**6, n_eval: int = 10**4, pairs_per_image: float = 0.5):
    """The candidate searches and the verification of 10^6 pool images against 10^4 items."""
    from dedup import decontaminate, embeddings, verify

    per_item = 2 * (1 + len(decontaminate.CROPS))
    radius = decontaminate.CANDIDATE_RADIUS
    print(f"\ndecontamination: {n_pool:,} pool images against {n_eval:,} evaluation items")
    print(f"candidate hash search, radius <= {radius}, {n_eval * per_item:,} evaluation codes:")
    pool = rng.integers(0, 256, (n_pool, 8), dtype=np.uint8)
    evals = rng.integers(0, 256, (n_eval * per_item, 8), dtype=np.uint8)
    for method in ("flat", "multihash", "ivf"):
        start = time.perf_counter()
        index = binary_index.build_index(evals, method, radius)
        binary_index.range_search(index, pool, radius)
        print(f"  {method:>10}: {time.perf_counter() - start:6.1f} s", flush=True)
    dim = 192  # thumbnail-8 features; a ResNet-20 teacher has 64
    feats = rng.standard_normal((n_eval * per_item, dim), dtype=np.float32)
    queries = rng.standard_normal((n_pool, dim), dtype=np.float32)
    start = time.perf_counter()
    embeddings.similar(feats, queries, decontaminate.CANDIDATE_SIM)
    method = "flat" if len(feats) <= embeddings.FLAT_LIMIT else "IVF"
    print(
        f"candidate similarity search ({method} inner product, {dim}-d, top 16 of "
        f"{len(feats):,} vectors): {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    # verification: the quality bench verifies about 0.5 candidate pairs per pool image in a pool
    # that is 13% transformed copies; every evaluation item is assumed to have candidates
    n_pairs = int(pairs_per_image * n_pool)
    n_rows = n_pairs // 4
    pool_thumbs = rng.integers(0, 256, (n_rows, verify.SIZE, verify.SIZE, 3), dtype=np.uint8)
    eval_thumbs = rng.integers(0, 256, (n_eval, verify.SIZE, verify.SIZE, 3), dtype=np.uint8)
    rows = rng.integers(0, n_rows, n_pairs)
    items = rng.integers(0, n_eval, n_pairs)
    start = time.perf_counter()
    verify.alignment(pool_thumbs, eval_thumbs, rows, items)
    print(
        f"verification of {n_pairs:,} candidate pairs ({n_rows:,} pool images, {n_eval:,} items): "
        f"{time.perf_counter() - start:.1f} s (plus decoding the candidate pool images again: "
        f"about {n_rows:,} x the per-image hashing time above)",
        flush=True,
    )


if __name__ == "__main__":
    main()
