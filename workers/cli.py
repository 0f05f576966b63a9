"""The `kd3` command line. Each stage registers its own subcommands; this module composes them.

Errors that a user can fix (bad input, bad config) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from crawler.cli import register as register_crawler
from dedup.cli import register as register_dedup
from distill.cli import register as register_distill
from pool.cli import register as register_pool
from workers.errors import USER_ERRORS
from workers.jobs_cli import register as register_jobs
from workers.submit_cli import register as register_submit


# Each stage's `register(subparsers)`; stage CLI modules import heavy libraries (torch, faiss,
# scrapy) inside their command functions so that `kd3 --help` stays fast.
def _teacher_features(path: str):
    """`kd3 dedup --teacher CKPT`: the teacher's pooled features (dedup never imports distill)."""
    from distill.features import load_feature_extractor

    return load_feature_extractor(path)


STAGE_CLIS = [
    register_pool,
    register_crawler,
    lambda sub: register_dedup(sub, teacher_loader=_teacher_features),
    register_distill,
    register_submit,
    register_jobs,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kd3",
        description="Distil an image classifier into a small one from crawled web images.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in STAGE_CLIS:
        register(sub)
    demo = sub.add_parser("demo", help="run the offline end-to-end demo (a few minutes)")
    demo.add_argument("--out", default="runs/demo", help="run folder (replaced if it holds a demo)")
    demo.add_argument("--preset", choices=["full", "quick"], default="full")
    demo.set_defaults(func=cmd_demo)
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    from workers.demo.run import format_summary, run_demo

    print(format_summary(run_demo(args.out, args.preset)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"kd3 {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
