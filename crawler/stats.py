"""Crawl stats in one Redis hash per crawl, readable with `redis-cli HGETALL kd3:crawl:<id>:stats`.

Fields (plain names):
    start_time, end_time, status, finish_reason   ISO times and the last process's close reason
    processes_running                             crawler processes currently on this crawl
    requests, bytes_received, responses:<status>  traffic actually sent and received
    images_stored, duplicates, bytes_stored       what the pool gained
    rejected:<reason>                             every refused request, response or image
    skipped:<reason>                              work not done on purpose (class target reached)
    class:<name>:stored, source:<name>:stored, source:<name>:rejected, source:<name>:duplicates

Counters are buffered in memory and added to Redis every KD3_STATS_FLUSH_SECONDS (HINCRBY, so
several processes can share one crawl) and when the crawl closes. A Redis outage loses nothing:
the counts stay buffered and the crawl goes on.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime

import redis

logger = logging.getLogger(__name__)


def stats_key(crawl_id: str) -> str:
    return f"kd3:crawl:{crawl_id}:stats"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class CrawlStats:
    """One per (Redis, crawl) per process, shared by every spider of that crawl in the process."""

    _shared: dict[tuple[str, str], CrawlStats] = {}

    def __init__(self, redis_url: str, crawl_id: str, flush_seconds: float = 1.0):
        self.client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.key = stats_key(crawl_id)
        self.crawl_id = crawl_id
        self.flush_seconds = flush_seconds
        self.counts: Counter[str] = Counter()
        self.fields: dict[str, str] = {}
        self.users = 0
        self._loop = None
        self._failing = False  # warn once per Redis outage, not every flush

    @classmethod
    def for_crawler(cls, crawler) -> CrawlStats:
        settings = crawler.settings
        redis_url, crawl_id = settings.get("KD3_REDIS_URL"), settings.get("KD3_CRAWL_ID")
        if not redis_url or not crawl_id:
            raise ValueError(
                "KD3_REDIS_URL and KD3_CRAWL_ID must be set: crawl stats live in Redis"
            )
        key = (redis_url, crawl_id)
        if key not in cls._shared:
            cls._shared[key] = cls(
                redis_url, crawl_id, settings.getfloat("KD3_STATS_FLUSH_SECONDS")
            )
        return cls._shared[key]

    # -- recording ----------------------------------------------------------------------------
    def inc(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def reject(self, reason: str, source: str = "") -> None:
        self.inc(f"rejected:{reason}")
        if source:
            self.inc(f"source:{source}:rejected")

    def skip(self, reason: str) -> None:
        self.inc(f"skipped:{reason}")

    def set(self, name: str, value) -> None:
        self.fields[name] = str(value)

    # -- lifecycle ----------------------------------------------------------------------------
    def open(self) -> None:
        from twisted.internet import task

        self.users += 1
        if self.users > 1:
            return
        try:
            self.client.hsetnx(self.key, "start_time", now_iso())
            self.client.hincrby(self.key, "processes_running", 1)
            self.client.hset(self.key, mapping={"status": "running", "crawl_id": self.crawl_id})
        except redis.RedisError as exc:
            logger.warning("crawl stats: Redis unavailable (%s); counts stay buffered", exc)
        self._loop = task.LoopingCall(self.flush)
        self._loop.start(self.flush_seconds, now=False)

    def close(self, reason: str) -> None:
        self.users -= 1
        if self.users > 0:
            return
        if self._loop and self._loop.running:
            self._loop.stop()
        self.set("finish_reason", reason)
        self.set("end_time", now_iso())
        self.flush(final=True)

    def flush(self, final: bool = False) -> None:
        counts, fields = self.counts, self.fields
        self.counts, self.fields = Counter(), {}
        try:
            pipe = self.client.pipeline(transaction=True)
            for name, n in counts.items():
                pipe.hincrby(self.key, name, n)
            if fields:
                pipe.hset(self.key, mapping=fields)
            if final:
                pipe.hincrby(self.key, "processes_running", -1)
            pipe.execute()
            if final:
                left = int(self.client.hget(self.key, "processes_running") or 0)
                self.client.hset(self.key, "status", "running" if left > 0 else "finished")
            self._failing = False
        except redis.RedisError as exc:
            self.counts.update(counts)  # keep them for the next flush
            self.fields = {**fields, **self.fields}
            if final or not self._failing:
                level = logging.ERROR if final else logging.WARNING
                logger.log(level, "crawl stats: could not write to Redis (%s)", exc)
            self._failing = True


class StatsExtension:
    """Opens the shared CrawlStats with the spider and closes it (final flush) after it."""

    def __init__(self, stats: CrawlStats):
        self.stats = stats

    @classmethod
    def from_crawler(cls, crawler):
        from scrapy import signals

        ext = cls(CrawlStats.for_crawler(crawler))
        crawler.signals.connect(ext.opened, signals.spider_opened)
        # Connected late and low: runs after the pipelines' close_spider has flushed the pool.
        crawler.signals.connect(ext.closed, signals.spider_closed)
        return ext

    def opened(self, spider) -> None:
        self.stats.open()

    def closed(self, spider, reason) -> None:
        self.stats.close(reason)


class SharedIdleExtension:
    """In a shared crawl, keep an idle spider open until the Redis queue stayed empty a while.

    Another process may still be parsing a page that will queue more requests.
    """

    def __init__(self, crawler, idle_seconds: float):
        self.crawler = crawler
        self.idle_seconds = idle_seconds
        self.idle_since: float | None = None

    @classmethod
    def from_crawler(cls, crawler):
        from scrapy import signals
        from scrapy.exceptions import NotConfigured

        if not crawler.settings.getbool("KD3_SHARED"):
            raise NotConfigured
        ext = cls(crawler, crawler.settings.getfloat("KD3_IDLE_CLOSE_SECONDS"))
        # An idle engine looks at its scheduler only every heartbeat (5 s in Scrapy); requests
        # that other processes add to the shared queue should be picked up sooner.
        from scrapy.core.engine import ExecutionEngine

        ExecutionEngine._SLOT_HEARTBEAT_INTERVAL = crawler.settings.getfloat(
            "KD3_SHARED_POLL_SECONDS"
        )
        crawler.signals.connect(ext.idle, signals.spider_idle)
        crawler.signals.connect(ext.busy, signals.request_reached_downloader)
        return ext

    def busy(self, request, spider) -> None:
        self.idle_since = None

    def idle(self, spider) -> None:
        import time

        from scrapy.exceptions import DontCloseSpider

        now = time.monotonic()
        if self.idle_since is None:
            self.idle_since = now
        if now - self.idle_since < self.idle_seconds:
            raise DontCloseSpider


# -- reading ------------------------------------------------------------------------------------
def read_stats(client: redis.Redis, crawl_id: str) -> dict[str, str]:
    raw = client.hgetall(stats_key(crawl_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def format_stats(crawl_id: str, stats: dict[str, str]) -> str:
    """A two-column table: times and status first, then counters grouped by prefix."""
    if not stats:
        return f"no stats for crawl {crawl_id} (key {stats_key(crawl_id)} is empty)"
    head = ["crawl_id", "status", "start_time", "end_time", "finish_reason", "processes_running"]
    first = [k for k in head if k in stats]
    rest = sorted(set(stats) - set(first), key=lambda k: (k.count(":"), k))
    width = max(len(k) for k in stats)
    lines = [f"{'field':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {stats[k]}" for k in first + rest]
    return "\n".join(lines)
