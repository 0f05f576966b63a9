"""`kd3 pool ...` subcommands: import, info and compact. Flags of import from pool.options."""

from __future__ import annotations

import argparse
import sys
import time

from common.options import add_flags, from_args
from distill.cli import add_model_loading
from pool.errors import PoolError
from pool.options import ImportOptions
from steer.options import ScoreOptions

IMPORT_EXAMPLES = """examples:
  kd3 pool import cifar10_test.npz --out pools/c10          # x/y/class_names arrays
  kd3 pool import photos/ --out pools/pets --classes cat,dog  # one sub-folder per class
  kd3 pool import more/ --out pools/pets --skip-invalid       # extend; leave bad files out

An .npz holds 'x' (uint8 N,H,W,3 pixels, stored as PNG) or 'jpeg'+'offsets' (the original
files end to end), optional 'y' (class indices, -1 unknown) and 'class_names'. Everything is
checked before anything is written: a bad input changes nothing. Images already in the pool
are not stored twice."""

POOL_EXAMPLES = """examples:
  kd3 pool import cifar10_test.npz --out pools/c10
  kd3 pool info pools/c10
  kd3 pool compact pools/c10

`kd3 pool SUBCOMMAND --help` shows its flags, with their defaults."""

SCORE_EXAMPLES = """examples:
  kd3 pool score pools/pets --teacher teacher.pt
  kd3 pool score pools/pets --teacher resnet18.pth --arch resnet18 --class-map kitty=cat

Writes the teacher's prediction for every kept image into the manifest (teacher_class,
teacher_confidence, teacher_class_prob, teacher_agrees, teacher_id), prints the yield per class
(crawled, kept, useful, and confident images of the class crawled for other classes), and
writes POOL/score/report.json and POOL/score/report.html (the most and least confident images
of each class). Scoring again with the same teacher scores only the images added since."""

INFO_EXAMPLES = """examples:
  kd3 pool info pools/pets"""

COMPACT_EXAMPLES = """examples:
  kd3 pool compact pools/pets

Each add (a crawl's batch, an import) appends a small file to POOL/manifest.d/ and POOL/finds/;
kd3 folds them into manifest.parquet and finds.parquet on its own, often enough that their
number stays small. Compact by hand to leave one file of each, e.g. before archiving a pool."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pool",
        help="create, import into and inspect pools",
        description="Create, extend and inspect pools: content-addressed images, a manifest "
        "(one row per image) and classes.json.",
        epilog=POOL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="pool_command", required=True, metavar="SUBCOMMAND")

    imp = sub.add_parser(
        "import",
        help="build or extend a pool from an image folder or an .npz file",
        description="Build or extend a pool from an image folder (a sub-folder per class) or "
        "an .npz file.",
        epilog=IMPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument(
        "source",
        nargs="?",
        metavar="SOURCE",
        help="the image folder or .npz file to import (or give it as --from)",
    )
    imp.add_argument(
        "--from", dest="from_source", metavar="SOURCE", help="the same as SOURCE (default: none)"
    )
    imp.add_argument(
        "--out", required=True, metavar="POOL", help="the pool directory to create or extend"
    )
    add_flags(imp, ImportOptions, title="import options")
    imp.set_defaults(func=cmd_import)

    info = sub.add_parser(
        "info",
        help="counts by class and status",
        description="Print the number of images of each class in each status.",
        epilog=INFO_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("pool", metavar="POOL", help="the pool directory")
    info.set_defaults(func=cmd_info)

    score = sub.add_parser(
        "score",
        help="the teacher's class and confidence for every kept image; useful images per class",
        description="Score a pool's kept images with the teacher: its class and confidence as "
        "manifest columns, and per class how many images are useful (kept, and the teacher "
        "agrees with the class they were crawled for).",
        epilog=SCORE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("pool", metavar="POOL", help="the pool directory")
    score.add_argument("--teacher", required=True, metavar="CKPT", help="the teacher checkpoint")
    score.add_argument("--json", action="store_true", help="print the yield as JSON")
    add_flags(score, ScoreOptions, title="score options")
    add_model_loading(score, "teacher")
    score.set_defaults(func=cmd_score)

    compact = sub.add_parser(
        "compact",
        help="fold the manifest's appended parts into manifest.parquet",
        description="Fold every appended manifest and finds part into manifest.parquet and "
        "finds.parquet (readers see the same rows before and after).",
        epilog=COMPACT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compact.add_argument("pool", metavar="POOL", help="the pool directory")
    compact.set_defaults(func=cmd_compact)


def cmd_import(args: argparse.Namespace) -> int:
    from pool.importer import import_into_pool

    if args.source and args.from_source and args.source != args.from_source:
        raise PoolError(f"two sources given ({args.source} and --from {args.from_source})")
    source = args.source or args.from_source
    if not source:
        raise PoolError("nothing to import: give SOURCE (an image folder or an .npz file)")
    options = from_args(ImportOptions, args, "bad option")
    start = time.perf_counter()
    report = import_into_pool(source, args.out, options, progress=sys.stderr.isatty())
    for line in report.skipped:
        print(f"skipped {line}", file=sys.stderr)
    refinds = f", {report.finds_recorded} re-finds recorded" if report.finds_recorded else ""
    total = sum(report.pool.counts().values())
    print(
        f"{report.seen} images read, {report.added} added, {report.already_present} already in "
        f"the pool{refinds}, {len(report.skipped)} skipped -> {report.pool.root} "
        f"({total} images in it; {time.perf_counter() - start:.1f} s)"
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import json

    from distill.cli import model_loading_kwargs
    from steer.report import write_report
    from steer.score import score_pool

    options = from_args(ScoreOptions, args, "bad option")
    result = score_pool(args.pool, args.teacher, options, teacher_load=model_loading_kwargs(args, "teacher"),
                        log=lambda line: print(line, file=sys.stderr))  # fmt: skip
    paths = write_report(result)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    for path in result.unreadable:
        print(f"could not score {path}: unreadable image", file=sys.stderr)
    print(f"pool {result.pool}: {result.scored_now} images scored by {result.teacher}; useful: "
          f"teacher agrees with confidence >= {result.min_confidence}")  # fmt: skip
    print(result.table())
    print(f"report: {paths['html']}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from pool.store import Pool

    print(format_info(Pool.open(args.pool)))
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from pool.store import Pool

    pool = Pool.open(args.pool)
    done = pool.compact()
    print(
        f"{pool.root}: folded {done.manifest_parts} manifest parts and {done.finds_parts} finds "
        f"parts ({done.rows} images in manifest.parquet)"
    )
    return 0


def format_info(pool) -> str:
    from pool.manifest import STATUSES

    counts = pool.counts()
    classes = pool.classes()
    names = (classes.names if classes else []) + sorted(
        {c for c, _ in counts} - set(classes.names if classes else [])
    )
    width = max([len("class"), *(len(n or "(none)") for n in names)])
    header = f"{'class':<{width}} " + " ".join(f"{s:>12}" for s in STATUSES) + f" {'total':>8}"
    lines = [f"pool {pool.root}", header]
    totals = dict.fromkeys(STATUSES, 0)
    for name in names:
        row = [counts.get((name, s), 0) for s in STATUSES]
        for s, n in zip(STATUSES, row, strict=True):
            totals[s] += n
        cells = " ".join(f"{n:>12}" for n in row)
        lines.append(f"{name or '(none)':<{width}} {cells} {sum(row):>8}")
    cells = " ".join(f"{totals[s]:>12}" for s in STATUSES)
    lines.append(f"{'total':<{width}} {cells} {sum(totals.values()):>8}")
    return "\n".join(lines)
