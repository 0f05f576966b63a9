"""The `kd3` command line. Each stage registers its own subcommands; this module composes them.

Only the module of the command being run is imported (its options models need pydantic, its
work torch or Scrapy), so `kd3 --help` and a typo cost a bare Python start.

Errors that a user can fix (bad input, bad config, a service that cannot be reached) print one
line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# command: (module whose register(subparsers) adds it, one-line help). The one-line help lives
# only here, where `kd3 --help` reads it without importing the stage; a stage module gives its
# commands their description, flags and examples.
COMMANDS = {
    "pool": ("pool.cli", "create, extend and inspect pools (kd3 pool import|info|compact)"),
    "crawl": ("crawler.cli", "collect web images for class names into a pool"),
    "stats": ("crawler.cli", "print a crawl's stats (from Redis or the pool)"),
    "dedup": ("dedup.cli", "mark duplicates and evaluation-set overlaps in a pool"),
    "distill": ("distill.cli", "distil a teacher checkpoint into a student on a pool"),
    "train-teacher": ("distill.cli", "train a classifier on labelled data"),
    "evaluate": ("distill.cli", "accuracy of a checkpoint on labelled data"),
    "export": ("distill.cli", "write TorchScript and ONNX files of a checkpoint"),
    "models": ("distill.cli", "list the architectures of the model zoo"),
    "run": ("workers.submit_cli", "run a pipeline config in this process (no broker needed)"),
    "submit": ("workers.submit_cli", "queue a job on the Celery workers; prints its id"),
    "status": ("workers.jobs_cli", "a job's record"),
    "watch": ("workers.jobs_cli", "follow a job live until it ends"),
    "cancel": ("workers.jobs_cli", "stop a job at its next step"),
    "jobs": ("workers.jobs_cli", "recent jobs, newest first"),
    "artifacts": ("workers.jobs_cli", "a job's outputs"),
    "demo": ("workers.demo.cli", "the offline end-to-end demo: crawl, dedup, KD3 vs KD"),
}

EXAMPLES = """examples:
  kd3 demo --preset quick                  # a one-minute toy run, offline
  kd3 pool import cifar10.npz --out pools/c10
  kd3 crawl --classes cat,dog --out pools/pets --per-class 200
  kd3 dedup pools/pets --eval test.npz
  kd3 distill --teacher teacher.pt --pool pools/pets --eval test.npz --out runs/pets
  kd3 run configs/pipeline.yaml            # crawl -> dedup -> distill, no broker
  kd3 submit distill --teacher teacher.pt --pool pools/pets --redis redis://host:6379/0

`kd3 COMMAND --help` shows every flag of a command, with its default."""

# Connection flags may come before or after the command (kd3 --redis URL jobs, kd3 jobs --redis
# URL); commands that talk to the service add them to their own parsers too.
CONNECTION_FLAGS = {
    "--redis": "Redis URL (default: $KD3_REDIS_URL)",
    "--artifacts": "artifact store, a folder or fsspec URL (default: $KD3_ARTIFACTS)",
}


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported on one line (the usage is one --help away).
    Subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """--redis/--artifacts, left unset when not given so that any level may set them."""
    for flag, help_text in CONNECTION_FLAGS.items():
        parser.add_argument(flag, default=argparse.SUPPRESS, metavar="URL", help=help_text)


def _teacher_features(path: str):
    """`kd3 dedup --teacher CKPT`: the teacher's pooled features (dedup never imports distill)."""
    from distill.features import load_feature_extractor

    return load_feature_extractor(path)


# What a stage module's register() needs from outside its stage.
REGISTER_KWARGS = {"dedup.cli": {"teacher_loader": _teacher_features}}


class _OnlyOne:
    """Stands in for argparse's subparsers so a stage module registers just the command being
    run; its other commands are built into a parser that is thrown away."""

    def __init__(self, subparsers, command: str):
        self.subparsers, self.command = subparsers, command

    def add_parser(self, name: str, **kwargs):
        if name != self.command:
            return Parser(add_help=False)
        kwargs["help"] = COMMANDS[name][1]
        return self.subparsers.add_parser(name, **kwargs)


def _command_in(argv: list[str]) -> str | None:
    """The command word: the first argument that is not a top-level flag or its value."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in CONNECTION_FLAGS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with `command` fully built (and every other command as a name and a line)."""
    parser = Parser(
        prog="kd3",
        description="Distil an image classifier into a small one from crawled web images.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            register = importlib.import_module(module).register
            register(_OnlyOne(sub, name), **REGISTER_KWARGS.get(module, {}))
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def user_error(exc: BaseException, args: argparse.Namespace) -> str | None:
    """The one line to print for an error the user can fix, or None for a bug."""
    from common.errors import UserError

    if isinstance(exc, UserError):
        return str(exc)
    redis = sys.modules.get("redis")  # only a command that imported it can raise its errors
    if redis is not None and isinstance(
        exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
    ):
        from common.services import unreachable

        url = getattr(args, "redis", None) or os.environ.get("KD3_REDIS_URL") or "the default"
        return unreachable(url, exc)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        message = user_error(exc, args)
        if message is None:
            raise
        print(f"kd3 {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
