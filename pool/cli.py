"""`kd3 pool ...` subcommands: import and info."""

from __future__ import annotations

import argparse
import sys
import time

from pool.importer import import_into_pool
from pool.manifest import STATUSES
from pool.store import Pool


def register(subparsers) -> None:
    parser = subparsers.add_parser("pool", help="create, import into and inspect pools")
    sub = parser.add_subparsers(dest="pool_command", required=True)

    imp = sub.add_parser("import", help="build a pool from an image folder or an .npz file")
    imp.add_argument("--from", dest="source", required=True, metavar="DIR_OR_NPZ")
    imp.add_argument("--out", required=True, metavar="POOL")
    imp.add_argument(
        "--classes",
        type=lambda s: [c.strip() for c in s.split(",")],
        metavar="A,B,...",
        help="class names in the teacher's output order (default: sub-folders or npz class_names)",
    )
    imp.add_argument(
        "--skip-invalid", action="store_true", help="leave bad files out instead of failing"
    )
    imp.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="import symbolic links that point outside the folder (refused by default)",
    )
    imp.set_defaults(func=cmd_import)

    info = sub.add_parser("info", help="counts by class and status")
    info.add_argument("pool", metavar="POOL")
    info.set_defaults(func=cmd_info)


def cmd_import(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    report = import_into_pool(
        args.source,
        args.out,
        args.classes,
        args.skip_invalid,
        progress=sys.stderr.isatty(),
        follow_symlinks=args.follow_symlinks,
    )
    for line in report.skipped:
        print(f"skipped {line}", file=sys.stderr)
    print(
        f"{report.seen} images read, {report.added} added, {report.already_present} already in "
        f"the pool, {len(report.skipped)} skipped -> {report.pool.root} "
        f"({time.perf_counter() - start:.1f} s)"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    print(format_info(Pool.open(args.pool)))
    return 0


def format_info(pool: Pool) -> str:
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
