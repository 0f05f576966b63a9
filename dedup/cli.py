"""`kd3 dedup POOL [--eval ...] [--teacher CKPT] [--radius R] [--sim S]`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

DEFAULT_RADIUS = 4  # kept equal to dedup.run.DEFAULT_RADIUS (not imported: keeps --help fast)
DEFAULT_SIM = 0.97
DEFAULT_VERIFY_SIM = 0.97  # kept equal to dedup.decontaminate.VERIFY_SIM


def register(subparsers, teacher_loader: Callable[[str], object] | None = None) -> None:
    """`teacher_loader(path) -> feature extractor` turns --teacher CKPT into features."""
    parser = subparsers.add_parser(
        "dedup", help="mark duplicates and evaluation-set overlaps in a pool's manifest"
    )
    parser.add_argument("pool", metavar="POOL")
    parser.add_argument(
        "--eval", metavar="POOL_DIR_OR_NPZ", help="evaluation set: a pool, image folder or .npz"
    )
    parser.add_argument("--teacher", metavar="CKPT", help="use the teacher's pooled features")
    parser.add_argument(
        "--network",
        default="thumbnail-8",
        help="default feature network when no --teacher (thumbnail-8, thumbnail-16)",
    )
    parser.add_argument("--no-embeddings", action="store_true", help="hashes only")
    parser.add_argument(
        "--radius", type=int, default=DEFAULT_RADIUS, help="Hamming radius, inclusive (<= R)"
    )
    parser.add_argument(
        "--sim", type=float, default=DEFAULT_SIM, help="cosine similarity, inclusive (>= S)"
    )
    parser.add_argument(
        "--verify-sim",
        type=float,
        default=DEFAULT_VERIFY_SIM,
        help="alignment score (inclusive, >= V) an evaluation-overlap candidate or a feature-only "
        "duplicate pair needs",
    )
    parser.add_argument("--hash", default="phash", choices=["phash", "dhash"])
    parser.add_argument(
        "--index",
        default="auto",
        choices=["auto", "flat", "multihash", "ivf"],
        help="FAISS binary index for the Hamming search",
    )
    parser.add_argument(
        "--no-eval-crops", action="store_true", help="do not index crops of evaluation images"
    )
    parser.set_defaults(func=lambda args: cmd_dedup(args, teacher_loader))


def cmd_dedup(args: argparse.Namespace, teacher_loader=None) -> int:
    from dedup import embeddings
    from dedup.errors import DedupError
    from dedup.report import format_report, write_report
    from dedup.run import dedup_pool, model_key_for_file

    extractor, key = None, None
    if args.teacher:
        if teacher_loader is None:
            raise DedupError("--teacher needs a teacher loader; this kd3 was built without one")
        try:
            key = model_key_for_file(args.teacher)
        except OSError as exc:
            raise DedupError(f"{args.teacher}: cannot read checkpoint ({exc.strerror})") from None
        extractor = teacher_loader(args.teacher)
    elif not args.no_embeddings:
        extractor, key = embeddings.create_extractor(args.network), args.network
    result = dedup_pool(
        args.pool,
        eval_set=args.eval,
        extractor=extractor,
        model_key=key,
        radius=args.radius,
        sim=args.sim,
        hash_kind=args.hash,
        method=args.index,
        eval_crops=not args.no_eval_crops,
        verify_sim=args.verify_sim,
        progress=sys.stderr.isatty(),
    )
    print(format_report(write_report(result)))
    return 0
