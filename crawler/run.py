"""Run a crawl: `crawl(job)`, the one stage function behind `kd3 crawl` and the worker.

A Twisted reactor starts once per process, so `crawl` runs once per process; the worker runs
each crawl in a child process:

    python -m crawler.run --job FILE.json

    FILE.json  a CrawlJob (crawler.options) as JSON
    stdout     its last line is a one-line summary (CrawlResult.summary())
    stderr     Scrapy's log; a user error is one last line `crawl: error: MESSAGE`
    exit       0 done; 2 user error; 130 interrupted (SIGINT: Scrapy stops gracefully and keeps
               its job directory POOL/crawls/<crawl id>/, so the same job resumes)

While it runs, its stats are in POOL/crawls/<crawl id>/stats.json and, with a Redis, in the hash
kd3:crawl:<crawl id>:stats (crawler.stats). `python -m crawler.run ARGS` is `kd3 crawl ARGS`.
Several processes may share one crawl (`shared`): their request queue and duplicate filter live
in Redis (scrapy-redis).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from common.errors import UserError
from common.services import redis_client
from crawler.allowed_settings import check_settings
from crawler.errors import CrawlError
from crawler.options import DEFAULT_SOURCES, SOURCES, CrawlJob, CrawlOptions
from crawler.stats import read_pool_stats, read_stats, stats_key, stats_path

__all__ = ["DEFAULT_SOURCES", "SOURCES", "CrawlProgress", "CrawlResult", "crawl", "main"]

REDIS_PING_TIMEOUT = 3.0  # seconds: an unreachable Redis is refused before anything starts


@dataclass
class CrawlResult:
    crawl_id: str
    pool: Path
    stats: dict[str, str] = field(default_factory=dict)  # the crawl's totals (Redis or pool)
    interrupted: bool = False  # stopped by a signal; run the same job again to resume

    @property
    def stats_path(self) -> Path:
        return stats_path(self.pool, self.crawl_id)

    def summary(self) -> str:
        stats = self.stats
        rejected = sum(int(v) for k, v in stats.items() if k.startswith("rejected:"))
        return (
            f"crawl {self.crawl_id}: {stats.get('images_stored', 0)} images stored, "
            f"{stats.get('duplicates', 0)} duplicates, {rejected} rejected -> {self.pool}"
        )


@dataclass
class CrawlProgress:
    """What `crawl(progress=...)` is told when the crawl starts and every half second."""

    crawl_id: str
    stats_path: Path  # always written
    redis_key: str | None  # the Redis hash, when there is a Redis
    stored: int  # images of the crawl's classes in the pool (each counted up to per_class)
    target: int | None  # classes x per_class; None without a per-class target


def new_crawl_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def build_settings(pool: Path, crawl_id: str, redis_url: str | None, options: CrawlOptions):
    """The Scrapy settings of one crawl: crawler/settings.py, then the job's options, then its
    `settings` (only those crawler/allowed_settings.py allows; checked again here)."""
    from scrapy.settings import Settings

    if options.shared and not redis_url:
        raise CrawlError("a shared crawl (--shared) needs Redis: pass --redis URL")
    settings = Settings()
    settings.setmodule("crawler.settings", priority="project")
    values = {
        "KD3_POOL": str(pool),
        "KD3_CRAWL_ID": crawl_id,
        "KD3_REDIS_URL": redis_url,
        "KD3_PER_CLASS": options.per_class,
        "KD3_SOURCE_URLS": {**settings.getdict("KD3_SOURCE_URLS"), **options.source_urls},
        "KD3_SEEDS": list(options.seeds),
        "KD3_ALLOWED_NETWORKS": list(options.allow_networks),
        "KD3_STATIC_HOSTS": dict(options.hosts),
        "KD3_SHARED": options.shared,
    }
    if options.shared:
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
    settings.setdict(check_settings(options.settings), priority="cmdline")
    return settings


def crawl(job: CrawlJob, *, progress: Callable[[CrawlProgress], None] | None = None) -> CrawlResult:
    """Collect up to `per_class` images per class from the job's sources into its pool.

    Refused in one line (CrawlError, PoolError) before anything runs: an unreachable Redis, a
    pool made for other classes. Stats: see crawler.stats. Run the same job (same crawl_id)
    again to resume an interrupted crawl. `progress` is called as the crawl starts, every half
    second and at the end.
    """
    from pool.classes import ClassList
    from pool.store import Pool

    if job.redis_url:
        redis_client(job.redis_url, REDIS_PING_TIMEOUT, REDIS_PING_TIMEOUT)  # refused in one line
    class_list = ClassList.from_names([c.name for c in job.classes], job.keywords())
    pool = Pool.create(job.out, class_list)
    crawl_id = job.crawl_id or new_crawl_id()
    settings = build_settings(pool.root, crawl_id, job.redis_url, job.options)
    settings.setdict({
        "KD3_ROUND": job.round,
        "KD3_CLASS_QUERIES": job.queries,
        "KD3_CLASS_TARGETS": job.class_targets or {},
        "KD3_SEED_CLASSES": {url: list(v) for url, v in (job.seed_classes or {}).items()},
        "KD3_RECORD_LINKS": job.record_links,
        "KD3_SKIP_POOL": job.skip_pool or "",
    }, priority="cmdline")  # fmt: skip
    reasons = _run_spiders(settings, job.options.sources, class_list, crawl_id, progress)

    result = CrawlResult(crawl_id, pool.root, interrupted="shutdown" in reasons)
    if not job.redis_url:
        result.stats = read_pool_stats(pool.root, crawl_id)
        return result
    import redis

    try:
        result.stats = read_stats(redis.Redis.from_url(job.redis_url), crawl_id)
    except redis.RedisError as exc:  # Redis went away during the crawl
        raise CrawlError(
            f"lost Redis at {job.redis_url} during crawl {crawl_id} ({exc}); the images stored "
            f"are in {pool.root}, the stats in {result.stats_path}"
        ) from None
    return result


def _run_spiders(settings, sources: Sequence[str], class_list, crawl_id: str,
                 progress: Callable[[CrawlProgress], None] | None) -> list[str]:  # fmt: skip
    """Run one crawler per source until all are done; their close reasons."""
    from scrapy import signals
    from scrapy.crawler import CrawlerProcess
    from scrapy.spiderloader import SpiderLoader

    from crawler.pipelines import PoolWriter

    loader = SpiderLoader.from_settings(settings)
    process = CrawlerProcess(settings)
    # One writer for every source, so that a class target counts the images of all of them.
    writer = PoolWriter.from_settings(settings)
    reasons: list[str] = []
    for name in sources:
        crawler = process.create_crawler(loader.load(name))
        crawler.kd3_pool_writer = writer
        crawler.signals.connect(lambda spider, reason: reasons.append(reason),
                                signals.spider_closed, weak=False)  # fmt: skip
        process.crawl(crawler, classes=class_list)

    if progress is not None:
        from twisted.internet import reactor, task

        tick = partial(_report, progress, writer, class_list.names, settings, crawl_id)
        reactor.callWhenRunning(task.LoopingCall(tick).start, 0.5)
    process.start()
    if progress is not None:
        tick()
    return reasons


def _report(progress, writer, names: list[str], settings, crawl_id: str) -> None:
    per_class = settings.getint("KD3_PER_CLASS")
    counts = [writer.stored_per_class[name] for name in names]
    progress(CrawlProgress(
        crawl_id, stats_path(settings.get("KD3_POOL"), crawl_id),
        stats_key(crawl_id) if settings.get("KD3_REDIS_URL") else None,
        sum(min(n, per_class) for n in counts) if per_class else sum(counts),
        per_class * len(counts) if per_class else None,
    ))  # fmt: skip


# -- python -m crawler.run ------------------------------------------------------------------------
def _read_job(path: str) -> CrawlJob:
    import json

    from common.options import parse

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CrawlError(f"{path}: no such job file") from None
    except (OSError, ValueError) as exc:
        raise CrawlError(f"{path}: not a JSON job file ({exc})") from None
    if not isinstance(data, dict):
        raise CrawlError(f"{path}: a job file holds a JSON object")
    return parse(CrawlJob, data, path, flags=False)


def run_job(path: str) -> int:
    result = crawl(_read_job(path))
    print(result.summary(), flush=True)
    return 130 if result.interrupted else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m crawler.run --job FILE` (see above), or `python -m crawler.run ARGS`, which
    is `kd3 crawl ARGS`."""
    import argparse

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["--job"] or any(a.startswith("--job=") for a in argv[:1]):
            parser = argparse.ArgumentParser(prog="python -m crawler.run")
            parser.add_argument("--job", required=True, metavar="FILE.json",
                                help="a CrawlJob as JSON (crawler.options.CrawlJob)")  # fmt: skip
            return run_job(parser.parse_args(argv).job)
        from crawler.cli import register

        parser = argparse.ArgumentParser(prog="python -m crawler.run")
        register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["crawl", *argv])
        return args.func(args)
    except UserError as exc:
        print(f"crawl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before Scrapy's own handler is installed
        print("crawl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
