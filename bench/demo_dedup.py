"""Dedup on the offline demo's generated world, without crawling: are distinct pictures merged,
are re-encoded duplicates grouped, are the hidden copies of evaluation images caught?

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/demo_dedup.py [--seed 0]
        [--preset quick|full] [--out DIR]

Builds the demo's evaluation split and local web exactly as `kd3 demo` does
(workers/demo/run.py: evaluation split `world.original_dataset(eval, seed + 1)` saved as
eval.npz, web `world.build_web(per_class, x_eval, seed + 2)`; default: the quick preset and
the demo's seed 0), puts every image of the web into a fresh pool (in a temporary folder), and
runs dedup on it as the demo's dedup job does (dedup.stage.run_dedup without a teacher: default
DedupOptions, features from `options.network`, decontaminated against eval.npz). It then reads
the manifest against the truth and prints the errors; `--out DIR` also writes DIR/
merged_distinct.png, the distinct pictures that dedup merged, side by side.

Which *source picture* an image shows (world.py does not record it):
  - a class image or a distractor (`/img/NNNNN.<ext>`) is its own picture;
  - a "duplicate" (`/mirror/NNNNN.jpg`) shows the picture of `/img/<NNNNN - 1>.<ext>`:
    build_web numbers every image from one counter and draws the mirror copy right after its
    original (counter += 1 for the original, again for the copy), before the pages are
    shuffled. The script checks this: the original must be a class image or distractor, and
    the original's pixels resized to the mirror's size must be close to the mirror's;
  - an "eval-copy" is evaluation item i when its (lossless PNG) pixels equal
    `Image.fromarray(x_eval[i]).resize((64, 64), BICUBIC)`, as build_web draws it; each
    must match exactly one item.
A crash in dedup ends the run with its traceback (non-zero exit); otherwise it exits 0: it is
a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dedup import embeddings  # noqa: E402
from dedup.options import DedupOptions  # noqa: E402
from dedup.run import dedup_pool  # noqa: E402
from pool.store import NewImage, Pool, sha256_hex  # noqa: E402
from workers.demo import world  # noqa: E402
from workers.demo.run import PRESETS  # noqa: E402

DEMO_SEED = 0  # run_demo's default
HOST = "http://demo.local"  # the pool's URLs: HOST + the web path
EXAMPLES = 5
MIRROR_MAX_DIFF = 12.0  # mean absolute pixel difference allowed between a mirror and its original


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def encode_png(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "PNG")
    return buf.getvalue()


def number(path: str) -> int:
    return int(PurePosixPath(path).stem)


def source_pictures(web: world.Web, x_eval: np.ndarray) -> dict[str, str]:
    """web path -> id of the source picture it shows ("web:/img/..." or "eval.npz#i")."""
    by_number = {number(im.path): im for im in web.images}
    eval_items: dict[bytes, list[int]] = defaultdict(list)
    for i, x in enumerate(x_eval):
        big = Image.fromarray(x).resize((64, 64), Image.Resampling.BICUBIC)
        eval_items[np.asarray(big).tobytes()].append(i)
    picture, worst_mirror = {}, 0.0
    for im in web.images:
        if im.truth == "duplicate":
            original = by_number.get(number(im.path) - 1)
            if original is None or original.truth in ("duplicate", "eval-copy"):
                raise SystemExit(f"{im.path}: no class image or distractor numbered just before it")
            mirror = decode(im.data)
            resized = Image.fromarray(decode(original.data)).resize(
                (mirror.shape[1], mirror.shape[0]), Image.Resampling.BICUBIC
            )
            diff = float(np.abs(np.asarray(resized, np.float32) - mirror).mean())
            if diff > MIRROR_MAX_DIFF:
                raise SystemExit(f"{im.path} does not look like {original.path} (diff {diff:.1f})")
            worst_mirror = max(worst_mirror, diff)
            picture[im.path] = f"web:{original.path}"
        elif im.truth == "eval-copy":
            items = eval_items.get(decode(im.data).tobytes(), [])
            if len(items) != 1:
                raise SystemExit(f"{im.path}: matches evaluation items {items}, not exactly one")
            picture[im.path] = f"eval.npz#{items[0]}"
        else:
            picture[im.path] = f"web:{im.path}"
    print(
        f"source pictures: each mirror checked against /img/<its number - 1> "
        f"(mean abs pixel difference at most {worst_mirror:.1f}); each eval-copy matched "
        "exactly one evaluation item pixel for pixel"
    )
    return picture


def status_by_truth(rows, path_of, truth) -> dict[str, Counter]:
    out: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        kind = truth[path_of[r["sha256"]]]
        out["class image" if kind in world.CLASSES else kind][r["status"]] += 1
    return out


def contact_sheet(pairs: list[tuple[bytes, bytes, str]], path: Path, cell: int = 112) -> None:
    """One row per pair: the duplicate, then the image it was merged into, and the reason."""
    text_w, pad = 260, 6
    sheet = Image.new(
        "RGB", (2 * cell + text_w + 4 * pad, len(pairs) * (cell + pad) + pad), (255, 255, 255)
    )
    draw = ImageDraw.Draw(sheet)
    for row, (a, b, caption) in enumerate(pairs):
        y = pad + row * (cell + pad)
        for col, data in enumerate((a, b)):
            img = Image.open(io.BytesIO(data)).convert("RGB")
            img.thumbnail((cell, cell))
            sheet.paste(img, (pad + col * (cell + pad), y))
        draw.multiline_text((3 * pad + 2 * cell, y + 4), caption, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="the demo's seed (default 0)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--out", type=Path, help="write merged_distinct.png here")
    args = parser.parse_args(argv)
    p = PRESETS[args.preset]
    start = time.perf_counter()

    # 1. the demo's evaluation split and web (workers/demo/run.py run_demo)
    x_eval, y_eval = world.original_dataset(p["eval"], args.seed + 1)
    web = world.build_web(p["per_class"], x_eval, args.seed + 2)
    picture = source_pictures(web, x_eval)
    truth = {im.path: im.truth for im in web.images}
    t_world = time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="demo-dedup-") as tmp:
        eval_path = Path(tmp) / "eval.npz"
        np.savez(eval_path, x=x_eval, y=y_eval, class_names=np.array(world.CLASSES))

        # 2. every web image into a fresh pool
        t = time.perf_counter()
        pool_dir = Path(tmp) / "pool"
        pool = Pool.create(pool_dir)
        pool.add([NewImage(im.data, url=HOST + im.path) for im in web.images])
        t_pool = time.perf_counter() - t

        # 3. dedup as the demo's job runs it (dedup.stage.run_dedup, no teacher)
        t = time.perf_counter()
        options = DedupOptions()
        result = dedup_pool(
            pool_dir,
            options,
            eval_set=eval_path,
            extractor=embeddings.create_extractor(options.network),
            model_key=options.network,
        )
        t_dedup = time.perf_counter() - t
        rows = pool.manifest().to_pylist()
        data = {r["sha256"]: pool.read_bytes(r["path"]) for r in rows}

    # 4. the manifest against the truth
    urls_of = defaultdict(list)  # byte-identical files share one row
    for im in web.images:
        urls_of[sha256_hex(im.data)].append(im.path)
    path_of = {r["sha256"]: r["url"].removeprefix(HOST) for r in rows}
    shared = {s: u for s, u in urls_of.items() if len({picture[p] for p in u}) > 1}
    if shared:
        print(f"WARNING: {len(shared)} files are byte-identical across distinct pictures")

    def pic(sha: str) -> str:
        return picture[path_of[sha]]

    print(
        f"images: {len(web.images)} in the web ({dict(sorted(Counter(truth.values()).items()))}), "
        f"{len(rows)} distinct files in the pool"
    )
    print(
        "status by truth: "
        + "; ".join(
            f"{kind}: " + ", ".join(f"{st} {n}" for st, n in sorted(c.items()))
            for kind, c in sorted(status_by_truth(rows, path_of, truth).items())
        )
    )
    print(f"duplicate groups: {len(result.groups)}")

    merged = [
        r for r in rows if r["status"] == "duplicate" and pic(r["sha256"]) != pic(r["duplicate_of"])
    ]
    print(f"distinct pictures merged: {len(merged)} (images marked duplicate of another picture)")
    for r in merged[:EXAMPLES]:
        a, b = path_of[r["sha256"]], path_of[r["duplicate_of"]]
        print(f"  {a} ({truth[a]}) -> {b} ({truth[b]}): {r['status_reason']}")

    # same picture: k images of one picture are k - 1 duplicates; found when they share a group
    members = defaultdict(list)
    for r in rows:
        members[pic(r["sha256"])].append(r)
    present = sum(len(m) - 1 for m in members.values())
    found, apart = 0, []
    for m in members.values():
        grouped = [
            r["duplicate_of"] if r["status"] == "duplicate" else r["sha256"]
            for r in m
            if r["status"] in ("kept", "duplicate")
        ]
        found += len(grouped) - len(set(grouped))
        if len(set(grouped)) + len(m) - len(grouped) > 1:
            apart.append(m)
    print(f"duplicates of the same picture: {found} found of {present} present")
    for m in apart[:EXAMPLES]:
        print("  not grouped: " + ", ".join(f"{path_of[r['sha256']]} {r['status']}" for r in m))

    copies = [r for r in rows if truth[path_of[r["sha256"]]] == "eval-copy"]
    caught = [r for r in copies if r["status"] == "test_overlap"]
    right = [r for r in caught if r["eval_match"] == pic(r["sha256"])]
    missed = [r for r in copies if r["status"] != "test_overlap"]
    print(
        f"evaluation copies: {len(copies)} present, {len(caught)} caught as test_overlap "
        f"({len(right)} with the right item), {len(missed)} missed"
    )
    for r in (r for r in caught if r not in right):
        print(f"  {path_of[r['sha256']]} is {pic(r['sha256'])}, matched {r['eval_match']}")
    for r in missed[:EXAMPLES]:
        print(f"  missed {path_of[r['sha256']]} ({pic(r['sha256'])}): {r['status']}")
    false = [r for r in rows if r["status"] == "test_overlap" and r not in copies]
    print(f"false test_overlaps: {len(false)}")
    for r in false[:EXAMPLES]:
        a = path_of[r["sha256"]]
        print(f"  {a} ({truth[a]}) matched {r['eval_match']}: {r['status_reason']}")

    if args.out is not None and false:
        sheet = args.out / "false_overlaps.png"
        item = {f"eval.npz#{i}": encode_png(x) for i, x in enumerate(x_eval)}
        contact_sheet(
            [(data[r["sha256"]], item[r["eval_match"]], r["status_reason"][:40]) for r in false],
            sheet,
        )
        print(f"false overlaps (pool | evaluation image): {sheet}")
    if args.out is not None and merged:
        sheet = args.out / "merged_distinct.png"
        contact_sheet(
            [
                (
                    data[r["sha256"]],
                    data[r["duplicate_of"]],
                    f"{path_of[r['sha256']]}\n-> {path_of[r['duplicate_of']]}\n"
                    f"{r['status_reason']}",
                )
                for r in merged
            ],
            sheet,
        )
        print(f"contact sheet: {sheet}")
    elif args.out is not None:
        print("contact sheet: none written (no distinct pictures merged)")
    print(
        f"time: world {t_world:.1f} s, pool {t_pool:.1f} s, dedup {t_dedup:.1f} s, "
        f"total {time.perf_counter() - start:.1f} s"
    )
    print(
        f"demo dedup: {len(merged)} distinct merged, {len(caught)} of {len(copies)} "
        "hidden evaluation copies caught"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
