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

from dedup import binary_index, grouping, views  # noqa: E402
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
        img = decode_rgb(b)
        image_hashes(img)
        views.view_descriptors(img)
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
        # recall on a sample of planted pairs that costs at most half the budget
        m = int(min(planted, 20000, max(500, budget_s / (4 * per_query))))
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
    parser.add_argument("--methods", default="flat,multihash,ivf", help="grouping methods timed")
    parser.add_argument("--skip-grouping", action="store_true")
    parser.add_argument("--skip-decontamination", action="store_true")
    parser.add_argument(
        "--decontamination-parts",
        default="copy,net,hash,features,verify,cohort,zoom,pairs",
        help="which steps to time",
    )
    parser.add_argument(
        "--zoom-per-image",
        type=float,
        default=0.03,
        help="overlap candidates per pool image that the zoom search looks at (learned-backed "
        "pairs that line up short: bench/dedup_quality.py --candidates, 0.023 per untouched "
        "web image at the defaults; 0.03 leaves room)",
    )
    parser.add_argument(
        "--grey-per-image",
        type=float,
        default=0.0056,
        help="overlap candidates per pool image in the cohort's grey zone (bench/dedup_quality.py "
        "--candidates: 0.0056 per untouched web image)",
    )
    parser.add_argument(
        "--pairs-per-image",
        type=float,
        default=1.0,
        help="verified overlap candidates per pool image (bench/dedup_quality.py prints it)",
    )
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, radius <= {RADIUS}")
    if args.hash_sample:
        per_image = time_hashing(data_dir(args.data), args.hash_sample)
        print(
            f"hashing (decode + pHash/dHash + mirrors + pixel digest + view copy descriptors), "
            f"{args.hash_sample} images:"
        )
        print(f"  {per_image * 1e6:.0f} us/image on one core")
        for n in (10**5, 10**6, 10**7):
            print(f"  {n:>9,} images: {per_image * n:8.0f} s (extrapolated)")
    rng = np.random.default_rng(0)
    if not args.skip_grouping:
        grouping_table(args, rng)
    if not args.skip_decontamination:
        decontamination(
            rng,
            pairs_per_image=args.pairs_per_image,
            grey_per_image=args.grey_per_image,
            zoom_per_image=args.zoom_per_image,
            parts=tuple(args.decontamination_parts.split(",")),
        )


def grouping_table(args, rng) -> None:
    print("\nnear-duplicate grouping (queries: every code and its mirror):")
    print(f"{'n':>10} {'method':>10} {'seconds':>10} {'recall':>7}")
    for n in (int(s) for s in args.sizes.split(",")):
        codes, mirrors, source = planted_codes(n, rng)
        for method in args.methods.split(","):
            sec, est, recall = time_grouping(codes, mirrors, source, method, args.budget)
            print(
                f"{n:>10,} {method:>10} {sec:>9.1f}{'*' if est else ' '} {recall:>7.3f}", flush=True
            )
    print("* estimated from a sample of queries (recall measured on a sample of planted pairs)")


def decontamination(
    rng,
    n_pool: int = 10**6,
    n_eval: int = 10**4,
    pairs_per_image: float = 1.0,
    grey_per_image: float = 0.0056,
    sample: int = 20_000,
    parts: tuple[str, ...] = (
        "copy",
        "net",
        "hash",
        "features",
        "verify",
        "cohort",
        "zoom",
        "pairs",
    ),
    zoom_per_image: float = 0.03,
) -> None:
    """The candidate searches and the verification of 10^6 pool images against 10^4 items.

    Exhaustive baselines (flat binary, flat inner product) are timed on `sample` pool images and
    extrapolated; the methods dedup uses run on all 10^6.
    """
    from dedup import decontaminate

    per_item = 2 * (1 + len(decontaminate.CROPS) + len(decontaminate.ROTATIONS))
    print(f"\ndecontamination: {n_pool:,} pool images against {n_eval:,} evaluation items")
    if "copy" in parts:
        copy_candidates(rng, n_pool, n_eval, per_item)
    if "net" in parts:
        net_candidates(rng, n_pool, n_eval, sample)
    if "hash" in parts:
        hash_candidates(rng, n_pool, n_eval * per_item, sample)
    if "features" in parts:
        feature_candidates(rng, n_pool, n_eval * per_item, sample)
    if "verify" in parts:
        verification(rng, n_pool, n_eval, pairs_per_image)
    if "cohort" in parts:
        cohort_verification(rng, n_pool, n_eval, per_item, grey_per_image)
    if "zoom" in parts:
        zoom_verification(rng, n_pool, n_eval, zoom_per_image)
    if "pairs" in parts:
        duplicate_verification(rng, n_pool // 20)
    print(f"* exhaustive baseline, timed on {sample:,} pool images and extrapolated")


def copy_candidates(rng, n_pool: int, n_eval: int, per_item: int, framed: float = 0.1) -> None:
    """Candidate items by copy descriptor (dedup/copy_search.py): every pool image's own view,
    and the picture inside a frame for `framed` of them, against every evaluation variant, then
    the closer look at each view's nearest items window by window."""
    from dedup import copy_search, embeddings
    from dedup.decontaminate import EvalIndex

    dim = views.COPY_GRID**2
    desc = np.zeros((n_pool, views.VIEWS, dim), np.float32)
    desc[:, 0] = rng.standard_normal((n_pool, dim), dtype=np.float32)
    has_frame = rng.random(n_pool) < framed
    desc[has_frame, 1] = rng.standard_normal((int(has_frame.sum()), dim), dtype=np.float32)
    variants = embeddings.normalize(rng.standard_normal((n_eval * per_item, dim), np.float32))
    thumbs = rng.integers(0, 256, (n_eval, 32, 32, 3), dtype=np.uint8)
    index = EvalIndex(None, {}, {}, np.zeros((0, 8), np.uint8), variants, None, per_item, thumbs)
    start = time.perf_counter()
    rows, _ = copy_search.candidates(index, desc.reshape(n_pool, -1))
    print(
        f"candidate copy-descriptor search ({dim}-d, {views.VIEWS} views, {framed:.0%} framed, "
        f"{copy_search.WIDE_ITEMS} items per view looked at window by window, top "
        f"{copy_search.TOP_ITEMS} kept per view, of {n_eval * per_item:,} variants): "
        f"{time.perf_counter() - start:6.1f} s, {len(rows) / n_pool:.2f} candidates per image",
        flush=True,
    )


def net_candidates(rng, n_pool: int, n_eval: int, sample: int, framed: float = 0.1) -> None:
    """The learned copy descriptor (dedup/copy_net.py): describing pool images (at ingest, with
    the hashes; timed on `sample` images and extrapolated; `framed` of them have a second view
    to describe), then the candidate search of every pool view's descriptor among the items'
    (each item and its mirror)."""
    import torch

    from dedup import copy_net, copy_search, embeddings
    from dedup.decontaminate import EvalIndex

    squashed = rng.integers(0, 256, (sample, copy_net.SIDE, copy_net.SIDE, 3), dtype=np.uint8)
    copy_net.describe(squashed[: copy_net.BATCH])  # load the weights, warm up
    start = time.perf_counter()
    copy_net.describe(squashed)
    per = (time.perf_counter() - start) / sample
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"learned copy descriptors ({where}, {torch.get_num_threads()} threads): "
        f"{per * 1e6:.0f} us/view, {per * n_pool * (1 + framed):.0f} s for {n_pool:,} images "
        f"({framed:.0%} framed: two views; at ingest; timed on {sample:,})",
        flush=True,
    )
    items = embeddings.normalize(rng.standard_normal((n_eval * copy_net.PER_ITEM, copy_net.DIM)))
    pool = np.zeros((n_pool, views.VIEWS, copy_net.DIM), np.float32)
    pool[:, 0] = embeddings.normalize(rng.standard_normal((n_pool, copy_net.DIM), np.float32))
    has_frame = rng.random(n_pool) < framed
    pool[has_frame, 1] = embeddings.normalize(
        rng.standard_normal((int(has_frame.sum()), copy_net.DIM), np.float32)
    )
    index = EvalIndex(None, {}, {}, None, None, None, 0, None, items)
    start = time.perf_counter()
    copy_search.learned_nearest(index, pool.reshape(n_pool, -1))
    print(
        f"learned-descriptor search ({framed:.0%} framed: two views; the {copy_search.NET_TOP} "
        f"nearest of {n_eval:,} items, "
        f"{len(items):,} vectors): {time.perf_counter() - start:.1f} s",
        flush=True,
    )


def cohort_verification(rng, n_pool: int, n_eval: int, per_item: int, grey: float) -> None:
    """The grey-zone candidates' cohort (dedup/decontaminate.py): each pool view's nearest
    items by copy descriptor, then its alignment with COHORT of them. Random thumbnails rarely
    align above COHORT_START, so the series check (cohort item against candidate item) is
    nearly free here; at worst it doubles the alignment work."""
    from dedup import decontaminate, embeddings, verify
    from dedup.decontaminate import EvalIndex
    from dedup.options import DedupOptions

    n_pairs = max(1, int(grey * n_pool))
    dim = views.COPY_GRID**2
    variants = embeddings.normalize(rng.standard_normal((n_eval * per_item, dim), np.float32))
    eval_thumbs = rng.integers(0, 256, (n_eval, verify.SIZE, verify.SIZE, 3), dtype=np.uint8)
    index = EvalIndex(
        None, {}, {}, np.zeros((0, 8), np.uint8), variants, None, per_item, eval_thumbs
    )
    thumbs = rng.integers(0, 256, (n_pairs, verify.SIZE, verify.SIZE, 3), dtype=np.uint8)
    items = rng.integers(0, n_eval, n_pairs)
    start = time.perf_counter()
    decontaminate._cohort_alignment(index, thumbs, items, DedupOptions().verify_sim)
    took = time.perf_counter() - start
    print(
        f"cohort of {n_pairs:,} grey-zone candidates ({grey} per pool image, "
        f"{decontaminate.COHORT} items each): {took:.1f} s ({took / n_pairs * 1e3:.2f} ms per "
        f"candidate)",
        flush=True,
    )


def zoom_verification(rng, n_pool: int, n_eval: int, per_image: float) -> None:
    """The zoom search (dedup/verify.py zoom_alignment) of the learned-backed candidates that
    line up short: every window of the pool image from half its side up, per pair."""
    from dedup import verify

    n_pairs = max(1, int(per_image * n_pool))
    eval_thumbs = rng.integers(0, 256, (n_eval, verify.SIZE, verify.SIZE, 3), dtype=np.uint8)
    thumbs = rng.integers(0, 256, (n_pairs, verify.SIZE, verify.SIZE, 3), dtype=np.uint8)
    items = rng.integers(0, n_eval, n_pairs)
    start = time.perf_counter()
    verify.zoom_alignment(thumbs, eval_thumbs, np.arange(n_pairs), items)
    took = time.perf_counter() - start
    print(
        f"zoom search of {n_pairs:,} learned-backed candidates ({per_image} per pool image): "
        f"{took:.1f} s ({took / n_pairs * 1e3:.2f} ms per candidate)",
        flush=True,
    )


def duplicate_verification(rng, n_pairs: int) -> None:
    """Pool grouping checks every hash or feature link with the alignment check (both ways)."""
    from dedup import verify

    thumbs = rng.integers(0, 256, (2 * n_pairs, verify.SIZE, verify.SIZE, 3), dtype=np.uint8)
    a = np.arange(n_pairs)
    start = time.perf_counter()
    verify.pair_alignment(thumbs, a, a + n_pairs)
    print(
        f"grouping: alignment check of {n_pairs:,} linked pool pairs (5% of the pool), both "
        f"ways: {time.perf_counter() - start:.1f} s (plus decoding {2 * n_pairs:,} images again)",
        flush=True,
    )


def hash_candidates(rng, n_pool: int, n_codes: int, sample: int) -> None:
    from dedup import decontaminate

    radius = decontaminate.CANDIDATE_RADIUS
    print(f"candidate hash search, radius <= {radius}, {n_codes:,} evaluation codes:")
    pool = rng.integers(0, 256, (n_pool, 8), dtype=np.uint8)
    evals = rng.integers(0, 256, (n_codes, 8), dtype=np.uint8)
    for method in ("flat", "multihash", "ivf"):
        start = time.perf_counter()
        index = binary_index.build_index(evals, method, radius)
        queries = pool[:sample] if method == "flat" else pool
        binary_index.range_search(index, queries, radius)
        sec = (time.perf_counter() - start) * n_pool / len(queries)
        print(f"  {method:>10}: {sec:6.1f} s{'*' if method == 'flat' else ''}", flush=True)


def feature_candidates(rng, n_pool: int, n_vectors: int, sample: int) -> None:
    """Top-16 similarity search of every pool image among the evaluation variants' features:
    random features, plus pool copies (similarity about 0.96) of 1% of the variants."""
    from dedup import decontaminate, embeddings

    dim = 192  # thumbnail-8 features; a ResNet-20 teacher has 64
    feats = embeddings.normalize(rng.standard_normal((n_vectors, dim), dtype=np.float32))
    queries = rng.standard_normal((n_pool, dim), dtype=np.float32)
    planted = rng.choice(n_vectors, n_vectors // 100, replace=False)
    noise = 0.02 * rng.standard_normal((len(planted), dim), dtype=np.float32)
    queries[: len(planted)] = feats[planted] + noise
    method = "flat" if n_vectors <= embeddings.FLAT_LIMIT else "IVF"
    start = time.perf_counter()
    found = embeddings.similar(feats, queries, decontaminate.CANDIDATE_SIM)
    sec = time.perf_counter() - start
    hit = set(zip(found.query.tolist(), found.db.tolist(), strict=True))
    recall = np.mean([(q, int(d)) in hit for q, d in enumerate(planted)])
    print(
        f"candidate similarity search (>= {decontaminate.CANDIDATE_SIM}, {dim}-d, top 16 of "
        f"{n_vectors:,} vectors):\n  {method:>10}: {sec:6.1f} s (planted pairs found: "
        f"{recall:.3f})",
        flush=True,
    )
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(feats)
    flat.search(embeddings.normalize(queries[-sample:]), 16)
    sec = (time.perf_counter() - start) * n_pool / sample
    print(f"  {'flat':>10}: {sec:6.1f} s*", flush=True)


def verification(rng, n_pool: int, n_eval: int, pairs_per_image: float) -> None:
    """The quality bench verifies about 0.5 candidate pairs per pool image in a pool that is 13%
    transformed copies; every evaluation item is assumed to have candidates."""
    from dedup import verify

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
