"""`kd3 crawl ...` and `kd3 stats CRAWL_ID`. Crawl flags are generated from
crawler.options.CrawlOptions; Scrapy and Redis are imported only when a command runs."""

from __future__ import annotations

import argparse
import functools
import os
import sys

from common.options import add_flags, csv_list, from_args, parse, words_pair
from crawler.options import CrawlJob, CrawlOptions
from steer.options import LoopOptions

CRAWL_EXAMPLES = """examples:
  kd3 crawl --classes cat,dog --out pools/pets --per-class 200
  kd3 crawl --classes cat,dog --keywords "dog=puppy;hound" --out pools/pets \\
            --sources wikimedia,openverse,site --seed https://example.org/gallery.html
  kd3 crawl --classes cat --out pools/cats --crawl-id cats-1     # run again to resume
  kd3 crawl ... --redis redis://localhost:6379/0 --shared        # one of several processes
  kd3 crawl --classes cat,dog --out pools/pets --teacher teacher.pt --rounds 3  # crawl loop

Stats are written to POOL/crawls/CRAWL_ID/stats.json as the crawl runs, and to the Redis hash
kd3:crawl:CRAWL_ID:stats when there is a Redis; `kd3 stats CRAWL_ID` prints them. Ctrl-C stops
gracefully (exit 130); the same command with the same --crawl-id resumes.

With --teacher, the crawl is a loop: after each round the teacher scores the new images, and
classes with fewer useful images than --useful-per-class are crawled again with search terms
from the titles of the images it confidently puts in them (POOL/crawls/CRAWL_ID/loop.json)."""

STATS_EXAMPLES = """examples:
  kd3 stats 20250101-120000-ab12cd --redis redis://localhost:6379/0
  kd3 stats cats-1 --pool pools/cats

Exit status 0 when stats were found, 1 when the crawl has none there, 2 when they cannot be read."""


def _redis_help() -> str:
    return "Redis URL (default: $KD3_REDIS_URL" + (
        f", now {os.environ['KD3_REDIS_URL']})" if os.environ.get("KD3_REDIS_URL") else ", unset)"
    )


def register(subparsers) -> None:
    crawl = subparsers.add_parser(
        "crawl",
        description="Crawl image sources for each class into a pool, checking every image\n"
        "(format, size, a full decode) and storing each file once.",
        epilog=CRAWL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    job = add_class_flags(crawl)
    job.add_argument("--out", required=True, metavar="POOL",
                     help="the pool directory, created if missing (required)")  # fmt: skip
    job.add_argument("--redis", default=argparse.SUPPRESS, metavar="URL",
                     help=f"{_redis_help()}; live stats and --shared. Without one the crawl "
                     "runs anyway, its stats in the pool only")  # fmt: skip
    job.add_argument("--crawl-id", metavar="ID",
                     help="resume or join this crawl (default: a new id, printed)")  # fmt: skip
    add_flags(crawl, CrawlOptions, title="crawl options")
    loop = crawl.add_argument_group(
        "crawl loop (with --teacher: score the pool after each round, crawl again for classes "
        "with too few useful images)"
    )
    loop.add_argument("--teacher", metavar="CKPT",
                      help="the teacher that scores each round (default: none, one round)")  # fmt: skip
    add_flags(loop, LoopOptions, exclude=("device",))
    crawl.set_defaults(func=cmd_crawl)

    stats = subparsers.add_parser(
        "stats",
        description="Print a crawl's stats as a table: from Redis (--redis, or $KD3_REDIS_URL)\n"
        "or from a pool (--pool).",
        epilog=STATS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stats.add_argument("crawl_id", metavar="CRAWL_ID", help="the crawl's id")
    where = stats.add_mutually_exclusive_group()
    where.add_argument("--redis", default=argparse.SUPPRESS, metavar="URL",
                       help=_redis_help())  # fmt: skip
    where.add_argument("--pool", metavar="POOL",
                       help="read POOL/crawls/CRAWL_ID/stats.json instead (default: none)")  # fmt: skip
    stats.set_defaults(func=cmd_stats)


def add_class_flags(parser: argparse.ArgumentParser):
    """--classes and --keywords (kd3 crawl and kd3 submit crawl); returns their group."""
    group = parser.add_argument_group("what to crawl")
    group.add_argument("--classes", type=csv_list, required=True, metavar="A,B",
                       help="class names, in the teacher's output order (required)")  # fmt: skip
    group.add_argument("--keywords", type=functools.partial(words_pair, form="CLASS=KW1;KW2"), action="append", default=[],
                       metavar="CLASS=KW1;KW2",
                       help="more search terms for a class; repeat per class (default: none)")  # fmt: skip
    return group


def classes_from_args(args: argparse.Namespace) -> list[dict]:
    """The ClassSpec data of --classes and --keywords; keywords for an unknown class refused."""
    from crawler.errors import CrawlError

    keywords: dict[str, list[str]] = {}
    for name, words in args.keywords:
        keywords.setdefault(name, []).extend(words)
    unknown = sorted(set(keywords) - set(args.classes))
    if unknown:
        raise CrawlError(f"--keywords for classes not in --classes: {', '.join(unknown)}")
    return [{"name": n, "keywords": keywords.get(n, [])} for n in args.classes]


def job_from_args(args: argparse.Namespace) -> CrawlJob:
    """The CrawlJob `kd3 crawl` runs, or a one-line OptionsError naming the bad flag."""
    options = from_args(CrawlOptions, args, "bad option")
    return parse(
        CrawlJob,
        {
            "classes": classes_from_args(args),
            "options": options,
            "out": args.out,
            "redis_url": redis_url(args),
            "crawl_id": args.crawl_id,
        },
        "bad option",
    )


def redis_url(args: argparse.Namespace) -> str | None:
    """--redis, given before or after the command, else $KD3_REDIS_URL, else none."""
    return getattr(args, "redis", None) or os.environ.get("KD3_REDIS_URL") or None


def cmd_crawl(args: argparse.Namespace) -> int:
    from crawler.run import crawl, new_crawl_id

    job = job_from_args(args)
    job = job.model_copy(update={"crawl_id": job.crawl_id or new_crawl_id()})
    if args.teacher:
        return _crawl_loop(job, args)
    progress = _Progress(job) if sys.stderr.isatty() else _Announce(job)
    try:
        result = crawl(job, progress=progress)
    finally:
        progress.close()
    print(result.summary())
    if result.interrupted:
        print(f"interrupted: run again with --crawl-id {result.crawl_id} to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    return 0


def _crawl_loop(job: CrawlJob, args: argparse.Namespace) -> int:
    from steer.loop import crawl_loop

    options = from_args(LoopOptions, args, "bad option")
    log = functools.partial(print, file=sys.stderr, flush=True)
    result = crawl_loop(job, args.teacher, options, log=log)
    print(result.summary())
    return 0


class _Announce:
    """Says once, on stderr, where the crawl's stats go."""

    def __init__(self, job: CrawlJob):
        self.job, self.told = job, False

    def __call__(self, progress) -> None:
        if not self.told:
            self.told = True
            where = f"{progress.stats_path}"
            if progress.redis_key:
                where = f"Redis hash {progress.redis_key} at {self.job.redis_url} and {where}"
            else:
                where = f"no --redis: stats in {where}"
            print(f"crawl {progress.crawl_id}: {where}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class _Progress(_Announce):
    """A progress bar of the images stored against the target, when stderr is a terminal."""

    def __init__(self, job: CrawlJob):
        super().__init__(job)
        self.bar = None

    def __call__(self, progress) -> None:
        from tqdm import tqdm

        super().__call__(progress)
        if self.bar is None:
            self.bar = tqdm(total=progress.target, initial=progress.stored, unit="img",
                            desc="stored", file=sys.stderr, dynamic_ncols=True)  # fmt: skip
        self.bar.update(progress.stored - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_stats(args: argparse.Namespace) -> int:
    from crawler.errors import CrawlError
    from crawler.stats import format_stats, read_pool_stats

    if getattr(args, "pool", None):
        if not os.path.isdir(args.pool):
            raise CrawlError(f"{args.pool}: no such pool directory")
        stats, where = read_pool_stats(args.pool, args.crawl_id), args.pool
    elif url := redis_url(args):
        stats, where = _redis_stats(url, args.crawl_id), f"Redis at {url}"
    else:
        raise CrawlError("no Redis and no pool: pass --redis URL (or set KD3_REDIS_URL) "
                         "or --pool POOL")  # fmt: skip
    print(format_stats(args.crawl_id, stats, where))
    return 0 if stats else 1


def _redis_stats(url: str, crawl_id: str) -> dict[str, str]:
    import redis

    from crawler.errors import CrawlError
    from crawler.stats import read_stats

    try:
        return read_stats(redis.Redis.from_url(url, socket_connect_timeout=3), crawl_id)
    except (redis.RedisError, ValueError) as exc:
        raise CrawlError(f"cannot read stats from Redis at {url} ({exc})") from None
