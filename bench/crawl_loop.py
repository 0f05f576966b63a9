"""The crawl loop on a testbed built from the real web pool: useful images per class after the
first round and after the loop, requests spent, and precision from the hidden labels.

The testbed (crawler/testbed.py) serves ../shared/data/webpool_tinyimagenet32.npz on loopback:
each image captioned by one of its Tiny-ImageNet synset's names, searchable through an
Openverse-shaped API. The teacher is bench/distill_cifar10.py's cached `cpu` teacher (train it
first with that script). The classes are configs/pipeline.yaml's (CIFAR-10 names + keywords).

    nice .venv/bin/python bench/crawl_loop.py [--rounds 3] [--per-class 500]

Precision of a round: of its new images the teacher finds useful (kept, agreeing, confident),
the share whose hidden CIFAR-10 label is the class they were crawled for; "all" is the same
over every new image of the round. `--students SEEDS` then trains the default KD3 recipe
(resnet8, `--epochs`) on the pool after round 1 alone (a second, one-round run of the same
testbed) and on the looped pool, side by side per seed, and reports CIFAR-10 test accuracy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crawler.localweb import LocalWeb  # noqa: E402
from crawler.options import CrawlJob, CrawlOptions  # noqa: E402
from crawler.testbed import Testbed  # noqa: E402
from pool.store import Pool  # noqa: E402
from steer.loop import crawl_loop  # noqa: E402
from steer.options import LoopOptions  # noqa: E402

FAST = {"AUTOTHROTTLE_ENABLED": False, "CONCURRENT_REQUESTS_PER_DOMAIN": 16,
        "KD3_QUERY_TEMPLATES": ["{}"], "KD3_MAX_PAGES": 100, "LOG_LEVEL": "WARNING"}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--teacher", help="default: the newest cached bench teacher")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--min-purity", type=float, default=LoopOptions().min_purity)
    ap.add_argument("--follow-pages", action="store_true")
    ap.add_argument("--probe-images", type=int, default=LoopOptions().probe_images)
    ap.add_argument("--useful-per-class", type=int, default=None)
    ap.add_argument(
        "--no-grounded",
        dest="grounded",
        action="store_false",
        help="new terms on the teacher's judgement alone (LoopOptions.grounded)",
    )
    ap.add_argument("--students", help="comma list of seeds: train students on both pools")
    ap.add_argument("--epochs", type=int, default=10, help="student epochs")
    ap.add_argument("--out", help="pool folder (default: a temporary one)")
    args = ap.parse_args()
    teacher = args.teacher or str(
        max(
            (ROOT / ".cache" / "bench").glob("teacher-*/teacher.pt"),
            key=lambda p: p.stat().st_mtime,
        )
    )
    d = np.load(Path(args.data) / "webpool_tinyimagenet32.npz")
    fine, y, names = d["fine_label"], d["y"], [str(n) for n in d["fine_names"]]
    class_names = [str(n) for n in d["class_names"]]
    config = yaml.safe_load((ROOT / "configs" / "pipeline.yaml").read_text())
    bed = Testbed(d["x"], fine, names, groups=[int(y[fine == s][0]) for s in range(len(names))])
    out = Path(args.out or tempfile.mkdtemp(prefix="kd3-crawl-loop-")) / "pool"
    loop = LoopOptions(rounds=args.rounds, min_purity=args.min_purity,
                       follow_pages=args.follow_pages, probe_images=args.probe_images,
                       useful_per_class=args.useful_per_class, grounded=args.grounded)  # fmt: skip
    with LocalWeb() as web:
        bed.serve(web)
        options = CrawlOptions(sources=["openverse"], per_class=args.per_class,
                               source_urls={"openverse": bed.api_url},
                               allow_networks=["127.0.0.1/32"], settings=FAST)  # fmt: skip
        job = CrawlJob(classes=config["classes"], options=options, out=str(out))
        start = time.time()
        result = crawl_loop(job, teacher, loop, log=lambda m: print(m, flush=True))
        first = out.parent / "round1-pool"
        if args.students and not first.exists():
            crawl_loop(job.model_copy(update={"out": str(first), "crawl_id": None}), teacher,
                       loop.model_copy(update={"rounds": 1}), log=lambda _m: None)  # fmt: skip
    print(f"\n{time.time() - start:.0f} s; teacher {teacher}; pool {out}")
    print(result.summary())
    table = Pool.open(out).manifest().to_pylist()
    print(
        f"\n{'round':>5} {'new':>6} {'useful':>6} {'prec useful':>11} {'prec all':>8} {'requests':>8}"
        f" {'probe images':>12} {'probe requests':>14}"
    )
    for r in result.rounds:
        rows = [t for t in table if t.get("crawl_round") == r.round]
        truth = [class_names[y[bed.image_of(t["url"])]] if y[bed.image_of(t["url"])] >= 0 else None
                 for t in rows]  # fmt: skip
        right = [t == row["class_name"] for t, row in zip(truth, rows, strict=True)]
        useful = [row.get("teacher_agrees") and row["status"] == "kept"
                  and row["teacher_confidence"] >= 0.5 for row in rows]  # fmt: skip
        pu = (
            np.mean([g for g, u in zip(right, useful, strict=True) if u])
            if any(useful)
            else float("nan")
        )
        print(
            f"{r.round:>5} {len(rows):>6} {sum(useful):>6} {pu:>11.3f} "
            f"{np.mean(right) if rows else float('nan'):>8.3f} {r.requests:>8}"
            f" {r.probe_stored:>12} {r.probe_requests:>14}"
        )
    for r in result.rounds[1:]:
        print(f"round {r.round} searched: {r.queries}")
    if args.students:
        students(teacher, {"round 1": first, "looped": out}, Path(args.data), args)


def students(teacher: str, pools: dict[str, Path], data: Path, args) -> None:
    from distill.options import DistillOptions
    from distill.stage import run_distill

    seeds = [int(s) for s in args.students.split(",")]
    acc: dict[str, list[float]] = {name: [] for name in pools}
    for seed in seeds:
        for name, pool in pools.items():
            options = DistillOptions(epochs=args.epochs, seed=seed, student="resnet8")
            run = run_distill(options, teacher=teacher, pool=pool, eval_set=data / "cifar10_test.npz",
                              out=pool.parent / f"student-{name.replace(' ', '')}-{seed}",
                              log=lambda _m: None)  # fmt: skip
            acc[name].append(100 * run.final["eval_accuracy"])
            print(
                f"seed {seed} {name:8s} {Pool.open(pool).manifest().num_rows:6d} images  "
                f"student {acc[name][-1]:.2f}%",
                flush=True,
            )
    for name, values in acc.items():
        print(
            f"{name:8s} mean {np.mean(values):.2f}% std {np.std(values):.2f} over {len(values)} seeds"
        )
    gaps = [b - a for a, b in zip(*acc.values(), strict=True)]
    print(
        f"looped - round 1: {np.mean(gaps):+.2f} points (per seed {', '.join(f'{g:+.2f}' for g in gaps)})"
    )


if __name__ == "__main__":
    main()
