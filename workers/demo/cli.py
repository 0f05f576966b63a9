"""`kd3 demo`: the offline end-to-end demo."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  kd3 demo                   # the full demo (a few minutes on 2 CPU cores)
  kd3 demo --preset quick    # a toy run of the same steps in about a minute

The quick preset only shows that every step runs: its teacher is barely trained and its
accuracies prove nothing. The full preset's comparison is the one to read."""


def register(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo",
        description="Crawl a local web of images, dedup them against a test set, and distil "
        "a teacher with KD3 and with plain KD side by side, all offline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--out",
        default="runs/demo",
        help="run folder, replaced if it holds a demo (default: %(default)s)",
    )
    demo.add_argument(
        "--preset",
        choices=["full", "quick"],
        default="full",
        help="full: the real comparison; quick: a toy whose numbers mean nothing (default: %(default)s)",
    )
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from workers.demo.run import format_summary, run_demo

    print(format_summary(run_demo(args.out, args.preset)))
    return 0
