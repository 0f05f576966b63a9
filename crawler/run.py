"""Run a crawl in this process: `crawl(...)`, mirrored by `kd3 crawl` and `python -m crawler.run`.

A Twisted reactor starts once per process, so `crawl` can be called once per process; run
several crawls from subprocesses. Several processes may share one crawl (`shared=True`): their
request queue and duplicate filter live in Redis (scrapy-redis).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis

from crawler.addresses import parse_networks
from crawler.allowed_settings import check_settings
from crawler.errors import CrawlError
from crawler.stats import read_stats, stats_key
from pool.classes import ClassList
from pool.errors import PoolError
from pool.store import Pool

SOURCES = ("wikimedia", "openverse", "flickr", "bing", "site")
DEFAULT_SOURCES = ("wikimedia", "openverse")


@dataclass
class CrawlResult:
    crawl_id: str
    pool: Path
    stats: dict[str, str] = field(default_factory=dict)
    skipped_sources: list[str] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return self.stats.get("finish_reason") == "shutdown"


def new_crawl_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def build_settings(
    pool: Path,
    crawl_id: str,
    redis_url: str,
    per_class: int,
    *,
    source_urls: Mapping[str, str] | None = None,
    seeds: Sequence[str] = (),
    allow_networks: Sequence[str] = (),
    static_hosts: Mapping[str, str] | None = None,
    shared: bool = False,
    overrides: Mapping | None = None,
):
    """The Scrapy settings of one crawl: crawler/settings.py, then these arguments, then
    `overrides` (only settings crawler/allowed_settings.py allows; anything else is refused)."""
    from scrapy.settings import Settings

    settings = Settings()
    settings.setmodule("crawler.settings", priority="project")
    urls = {**settings.getdict("KD3_SOURCE_URLS"), **(source_urls or {})}
    values = {
        "KD3_POOL": str(pool),
        "KD3_CRAWL_ID": crawl_id,
        "KD3_REDIS_URL": redis_url,
        "KD3_PER_CLASS": per_class,
        "KD3_SOURCE_URLS": urls,
        "KD3_SEEDS": list(seeds),
        "KD3_ALLOWED_NETWORKS": list(allow_networks),
        "KD3_STATIC_HOSTS": dict(static_hosts or {}),
        "KD3_SHARED": shared,
    }
    if shared:
        prefix = f"kd3:crawl:{crawl_id}:%(spider)s"
        values |= {
            "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
            "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
            "SCHEDULER_QUEUE_KEY": f"{prefix}:requests",
            "SCHEDULER_DUPEFILTER_KEY": f"{prefix}:dupefilter",
            "REDIS_URL": redis_url,
        }
    else:  # Scrapy's job directory: an interrupted crawl resumes where it stopped
        values["KD3_JOBDIR_ROOT"] = str(pool / "crawls" / crawl_id)
    settings.setdict(values, priority="cmdline")
    settings.setdict(check_settings(overrides), priority="cmdline")
    return settings


def crawl(
    classes: Sequence[str],
    out: str | os.PathLike,
    *,
    sources: Sequence[str] = DEFAULT_SOURCES,
    per_class: int = 100,
    keywords: Mapping[str, Sequence[str]] | None = None,
    redis_url: str | None = None,
    crawl_id: str | None = None,
    seeds: Sequence[str] = (),
    source_urls: Mapping[str, str] | None = None,
    allow_networks: Sequence[str] = (),
    static_hosts: Mapping[str, str] | None = None,
    shared: bool = False,
    settings: Mapping | None = None,
) -> CrawlResult:
    """Collect up to `per_class` images per class from `sources` into the pool at `out`.

    Stats go to the Redis hash kd3:crawl:<crawl_id>:stats as the crawl runs. Run again with the
    same `crawl_id` to resume an interrupted crawl. `settings`: see crawler/allowed_settings.py.
    """
    settings = check_settings(settings)
    for network in allow_networks:
        try:
            parse_networks([network])
        except ValueError as exc:
            raise CrawlError(f"--allow-network {network}: {exc}") from None
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown or not sources:
        raise CrawlError(f"unknown sources {unknown}; choose from {', '.join(SOURCES)}")
    redis_url = redis_url or os.environ.get("KD3_REDIS_URL")
    if not redis_url:
        raise CrawlError("no Redis for crawl stats: pass --redis URL or set KD3_REDIS_URL")
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise CrawlError(f"cannot reach Redis at {redis_url}: {exc}") from None
    if "site" in sources and not seeds:
        raise CrawlError("the site source needs seed URLs (--seed URL)")

    class_list = ClassList.from_names(classes, {k: list(v) for k, v in (keywords or {}).items()})
    pool = Pool.create(out, class_list)
    crawl_id = crawl_id or new_crawl_id()
    scrapy_settings = build_settings(
        pool.root, crawl_id, redis_url, per_class, source_urls=source_urls, seeds=seeds,
        allow_networks=allow_networks, static_hosts=static_hosts, shared=shared,
        overrides=settings,
    )  # fmt: skip

    result = CrawlResult(crawl_id, pool.root)
    sources = list(dict.fromkeys(sources))
    if "flickr" in sources and not scrapy_settings.get("KD3_FLICKR_API_KEY"):
        from crawler.spiders.flickr import NO_KEY_MESSAGE

        print(NO_KEY_MESSAGE, file=sys.stderr)
        client.hincrby(stats_key(crawl_id), "skipped:flickr_no_api_key", 1)
        sources.remove("flickr")
        result.skipped_sources.append("flickr")
    if sources:
        _run_spiders(scrapy_settings, sources, class_list)
    try:
        result.stats = read_stats(client, crawl_id)
    except redis.RedisError as exc:  # Redis went away during the crawl
        raise CrawlError(
            f"lost Redis at {redis_url} during crawl {crawl_id} ({exc}); the images stored are "
            f"in {pool.root}, but the crawl's stats are incomplete"
        ) from None
    return result


def _run_spiders(settings, sources: Sequence[str], class_list: ClassList) -> None:
    from scrapy.crawler import CrawlerProcess
    from scrapy.spiderloader import SpiderLoader

    loader = SpiderLoader.from_settings(settings)
    process = CrawlerProcess(settings)
    for name in sources:
        process.crawl(loader.load(name), classes=class_list)
    process.start()


def main(argv: list[str] | None = None) -> int:
    """`python -m crawler.run ARGS` is `kd3 crawl ARGS`."""
    import argparse

    from crawler.cli import register

    parser = argparse.ArgumentParser(prog="python -m crawler.run")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["crawl", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (CrawlError, PoolError, ValueError) as exc:
        print(f"crawl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
