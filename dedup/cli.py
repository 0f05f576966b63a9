"""`kd3 dedup POOL [--eval SET] [--teacher CKPT] [options]`: flags from dedup.options."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from common.options import add_flags, from_args
from dedup.options import DedupOptions

EXAMPLES = """examples:
  kd3 dedup pools/pets --eval test.npz             # hashes + thumbnail features
  kd3 dedup pools/pets --eval test.npz --teacher teacher.pt --sim 0.95
  kd3 dedup pools/pets --no-embeddings --radius 6  # hashes only, looser

Statuses are recomputed on every run; only images not seen before are decoded. The report is
written to POOL/dedup/report.json with a contact sheet (POOL/dedup/contact_sheet.png)."""


def register(subparsers, teacher_loader: Callable[[str], object] | None = None) -> None:
    """`teacher_loader(path) -> feature extractor` turns --teacher CKPT into features."""
    parser = subparsers.add_parser(
        "dedup",
        description="Mark near-duplicate images and images that overlap an evaluation set in a "
        "pool's manifest (status duplicate / test_overlap); nothing is deleted.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("pool", metavar="POOL", help="the pool directory to deduplicate")
    parser.add_argument(
        "--eval",
        metavar="SET",
        help="evaluation set to decontaminate against: a pool, an image folder or an .npz "
        "(default: none)",
    )
    parser.add_argument(
        "--teacher",
        metavar="CKPT",
        help="compare this checkpoint's pooled features instead of --network's (default: none)",
    )
    add_flags(
        parser,
        DedupOptions,
        title="dedup options (also the `dedup:` section of a pipeline config, where --sim is "
        "`similarity`)",
    )
    parser.set_defaults(func=lambda args: cmd_dedup(args, teacher_loader))


def cmd_dedup(args: argparse.Namespace, teacher_loader=None) -> int:
    options = from_args(DedupOptions, args, "bad option")
    from dedup.report import format_report
    from dedup.stage import run_dedup

    report = run_dedup(
        args.pool,
        options,
        eval_set=args.eval,
        teacher=args.teacher,
        teacher_loader=teacher_loader,
        progress=sys.stderr.isatty(),
    )
    print(format_report(report))
    return 0
