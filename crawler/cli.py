"""`kd3 crawl ...` and `kd3 stats CRAWL_ID`. Scrapy is imported only when a crawl runs."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _pairs(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def _setting(text: str) -> tuple[str, object]:
    name, value = _pairs(text)
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(subparsers) -> None:
    crawl = subparsers.add_parser(
        "crawl",
        help="collect images for class names into a pool",
        description="Crawl image sources for each class; stats go to the Redis hash "
        "kd3:crawl:<crawl id>:stats. Run again with --crawl-id to resume.",
    )
    crawl.add_argument("--classes", type=_csv, required=True, metavar="A,B,...")
    crawl.add_argument("--out", required=True, metavar="POOL")
    crawl.add_argument("--sources", type=_csv, default=["wikimedia", "openverse"],
                       metavar="S1,S2", help="wikimedia, openverse, flickr, bing, site "
                       "(default: wikimedia,openverse)")  # fmt: skip
    crawl.add_argument("--per-class", type=int, default=100, metavar="N",
                       help="target images per class (0: no limit; default 100)")  # fmt: skip
    crawl.add_argument("--keywords", type=_pairs, action="append", default=[],
                       metavar="CLASS=KW1;KW2", help="extra search keywords for a class")  # fmt: skip
    crawl.add_argument("--seed", action="append", default=[], metavar="URL",
                       help="start page or sitemap for the site source")  # fmt: skip
    crawl.add_argument("--source-url", type=_pairs, action="append", default=[],
                       metavar="SOURCE=URL", help="API or base URL of a source")  # fmt: skip
    crawl.add_argument("--redis", default=os.environ.get("KD3_REDIS_URL"), metavar="URL",
                       help="Redis for stats and shared crawls (default: $KD3_REDIS_URL)")  # fmt: skip
    crawl.add_argument("--crawl-id", metavar="ID", help="resume or join this crawl")
    crawl.add_argument("--shared", action="store_true",
                       help="share the request queue in Redis with other processes on this crawl")  # fmt: skip
    crawl.add_argument("--allow-network", action="append", default=[], metavar="CIDR",
                       help="allow this non-public network, as narrow as possible "
                       "(e.g. 127.0.0.1/32 for a local demo)")  # fmt: skip
    crawl.add_argument("--host", type=_pairs, action="append", default=[], metavar="NAME=IP",
                       help="answer this host name with this address before DNS")  # fmt: skip
    crawl.add_argument("-s", "--set", type=_setting, action="append", default=[],
                       metavar="NAME=VALUE", help="an allowed crawl setting, JSON value (e.g. "
                       "DOWNLOAD_DELAY=0.5; the list is in crawler/allowed_settings.py)")  # fmt: skip
    crawl.set_defaults(func=cmd_crawl)

    stats = subparsers.add_parser("stats", help="print a crawl's stats from Redis")
    stats.add_argument("crawl_id", metavar="CRAWL_ID")
    stats.add_argument("--redis", default=os.environ.get("KD3_REDIS_URL"), metavar="URL")
    stats.set_defaults(func=cmd_stats)


def cmd_crawl(args: argparse.Namespace) -> int:
    from crawler.run import crawl

    result = crawl(
        args.classes,
        args.out,
        sources=args.sources,
        per_class=args.per_class,
        keywords={name: _csv(value.replace(";", ",")) for name, value in args.keywords},
        redis_url=args.redis,
        crawl_id=args.crawl_id,
        seeds=args.seed,
        source_urls=dict(args.source_url),
        allow_networks=args.allow_network,
        static_hosts=dict(args.host),
        shared=args.shared,
        settings=dict(args.set),
    )
    stats = result.stats
    print(
        f"crawl {result.crawl_id}: {stats.get('images_stored', 0)} images stored, "
        f"{stats.get('duplicates', 0)} duplicates, "
        f"{sum(int(v) for k, v in stats.items() if k.startswith('rejected:'))} rejected "
        f"-> {result.pool}"
    )
    if result.interrupted:
        print(f"interrupted: run again with --crawl-id {result.crawl_id} to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    import redis

    from crawler.errors import CrawlError
    from crawler.stats import format_stats, read_stats

    if not args.redis:
        raise CrawlError("no Redis given: pass --redis URL or set KD3_REDIS_URL")
    try:
        stats = read_stats(
            redis.Redis.from_url(args.redis, socket_connect_timeout=5), args.crawl_id
        )
    except redis.RedisError as exc:
        raise CrawlError(f"cannot read stats from Redis at {args.redis}: {exc}") from None
    print(format_stats(args.crawl_id, stats))
    return 0 if stats else 1
