"""Crawl stats: Scrapy's stats collector (STATS_CLASS) that also writes kd3's counters to the pool
and, when a Redis is given, to one Redis hash per crawl.

    POOL/crawls/<crawl id>/stats.json    always (replaced atomically at every flush)
    Redis hash kd3:crawl:<crawl id>:stats when a Redis URL is given (`redis-cli HGETALL ...`)

Both hold the same fields (plain names):
    start_time, end_time, status, finish_reason   ISO times and the last spider's close reason
    processes_running                             spiders running on this crawl (one per source
                                                  per process); status turns "finished" at 0
    requests, bytes_received, responses:<status>  traffic actually sent and received
    images_stored, duplicates, bytes_stored       what the pool gained
    rejected:<reason>                             every refused request, response or image
    skipped:<reason>                              work not done on purpose (class target reached)
    class:<name>:stored, source:<name>:stored, source:<name>:rejected, source:<name>:duplicates

Components count through Scrapy's API (`crawler.stats.inc_value`); Scrapy's own stats stay in
memory and in the closing log as usual, kd3's are also added to the file and the hash every
KD3_STATS_FLUSH_SECONDS and when the spider closes, as increments (HINCRBY, or the same under a
file lock), so every spider and process of a crawl adds to one total and a resumed crawl goes on
counting. A store that fails (a Redis outage) keeps its increments for the next flush and the
crawl goes on.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from scrapy.statscollectors import MemoryStatsCollector

from common.files import atomic_write

logger = logging.getLogger(__name__)

KD3_COUNTERS = frozenset({"requests", "bytes_received", "images_stored", "duplicates",
                          "bytes_stored"})  # fmt: skip
KD3_COUNTER_PREFIXES = ("responses:", "rejected:", "skipped:", "class:", "source:")
RUNNING = "processes_running"


def is_kd3_counter(key: str) -> bool:
    """kd3's counters (Scrapy's own, like downloader/request_count, stay in memory only)."""
    return key in KD3_COUNTERS or key.startswith(KD3_COUNTER_PREFIXES)


def stats_key(crawl_id: str) -> str:
    return f"kd3:crawl:{crawl_id}:stats"


def stats_path(pool_root: str | Path, crawl_id: str) -> Path:
    return Path(pool_root) / "crawls" / crawl_id / "stats.json"


def links_path(pool_root: str | Path, crawl_id: str) -> Path:
    """{page: [on-site pages it links to]} of a site crawl with KD3_RECORD_LINKS."""
    return Path(pool_root) / "crawls" / crawl_id / "links.json"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def reject(stats, reason: str, source: str = "") -> None:
    """Count a refused request, response or image under its reason (and its source)."""
    stats.inc_value(f"rejected:{reason}")
    if source:
        stats.inc_value(f"source:{source}:rejected")


def skip(stats, reason: str) -> None:
    """Count work not done on purpose."""
    stats.inc_value(f"skipped:{reason}")


@dataclass
class Update:
    """Changes to a crawl's stats not yet written to a store."""

    counts: Counter = field(default_factory=Counter)  # added to the stored values
    fields: dict[str, str] = field(default_factory=dict)  # replace the stored values
    first: dict[str, str] = field(default_factory=dict)  # set only where still unset
    settle: bool = False  # a spider closed: status "finished" if none is left running

    def merge(self, later: Update) -> Update:
        counts = Counter(self.counts)
        counts.update(later.counts)  # not `+`: that drops the negative processes_running
        return Update(counts, {**self.fields, **later.fields}, {**later.first, **self.first},
                      self.settle or later.settle)  # fmt: skip

    def __bool__(self) -> bool:
        return bool(self.counts or self.fields or self.first or self.settle)


class _Store:
    """One place a crawl's stats go; keeps what it could not write for the next flush."""

    errors: tuple[type[Exception], ...] = ()

    def __init__(self, where: str):
        self.where = where
        self.pending = Update()
        self.failing = False  # warn once per outage, not at every flush

    def flush(self, update: Update, final: bool = False) -> bool:
        self.pending = self.pending.merge(update)
        if not self.pending:
            return True
        try:
            self.write(self.pending)
        except self.errors as exc:
            if final or not self.failing:
                level = logging.ERROR if final else logging.WARNING
                logger.log(level, "crawl stats: could not write to %s (%s)", self.where, exc)
            self.failing = True
            return False
        self.pending, self.failing = Update(), False
        return True

    def write(self, update: Update) -> None:
        raise NotImplementedError


class PoolStatsFile(_Store):
    """POOL/crawls/<id>/stats.json, read-modify-written under a file lock, so that the spiders
    and processes of a crawl sharing the pool add up like HINCRBY."""

    errors = (OSError, ValueError)

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path

    def write(self, update: Update) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / ".stats.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stats = json.loads(self.path.read_text()) if self.path.exists() else {}
            for name, n in update.counts.items():
                stats[name] = int(stats.get(name, 0)) + n
            for name, value in update.first.items():
                stats.setdefault(name, value)
            stats.update(update.fields)
            if update.settle and int(stats.get(RUNNING, 0)) <= 0:
                stats["status"] = "finished"
            atomic_write(self.path, json.dumps(stats, indent=1, sort_keys=True).encode())


# Atomic with the increments: a process starting as the last one stops must stay "running".
_SETTLE = """if tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') <= 0 then
  redis.call('HSET', KEYS[1], 'status', 'finished') end"""


class RedisStatsHash(_Store):
    def __init__(self, redis_url: str, crawl_id: str):
        import redis

        super().__init__(f"Redis at {redis_url}")
        self.errors = (redis.RedisError,)
        self.client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.key = stats_key(crawl_id)

    def write(self, update: Update) -> None:
        pipe = self.client.pipeline(transaction=True)
        for name, n in update.counts.items():
            pipe.hincrby(self.key, name, n)
        for name, value in update.first.items():
            pipe.hsetnx(self.key, name, value)
        if update.fields:
            pipe.hset(self.key, mapping=update.fields)
        if update.settle:
            pipe.eval(_SETTLE, 1, self.key, RUNNING)
        pipe.execute()


class CrawlStatsCollector(MemoryStatsCollector):
    """Scrapy's in-memory stats, plus kd3's counters written to the pool and Redis (see above).

    Settings: KD3_POOL and KD3_CRAWL_ID (required), KD3_REDIS_URL (optional),
    KD3_STATS_FLUSH_SECONDS.
    """

    def __init__(self, crawler):
        super().__init__(crawler)
        settings = crawler.settings
        pool, self.crawl_id = settings.get("KD3_POOL"), settings.get("KD3_CRAWL_ID")
        if not pool or not self.crawl_id:
            raise ValueError("KD3_POOL and KD3_CRAWL_ID must be set: crawl stats live in the pool")
        self.stores: list[_Store] = [PoolStatsFile(stats_path(pool, self.crawl_id))]
        if settings.get("KD3_REDIS_URL"):
            self.stores.append(RedisStatsHash(settings.get("KD3_REDIS_URL"), self.crawl_id))
        self.flush_seconds = settings.getfloat("KD3_STATS_FLUSH_SECONDS")
        self._update = Update()
        self._loop = None

    def inc_value(self, key, count=1, start=0, spider=None) -> None:
        super().inc_value(key, count, start)
        if is_kd3_counter(key):
            self._update.counts[key] += count

    def open_spider(self, spider=None) -> None:
        from twisted.internet import task

        super().open_spider()
        self._update.first["start_time"] = now_iso()
        self._update.counts[RUNNING] += 1
        self._update.fields.update(status="running", crawl_id=self.crawl_id)
        self.flush()  # watchers see the crawl running at once
        self._loop = task.LoopingCall(self.flush)
        self._loop.start(self.flush_seconds, now=False)

    def close_spider(self, spider=None, reason=None) -> None:
        # Runs after the pipelines' close_spider: the pool writer has counted every image.
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._update.counts[RUNNING] -= 1
        self._update.fields.update(finish_reason=str(reason), end_time=now_iso())
        self._update.settle = True
        self.flush(final=True)
        super().close_spider(reason=reason)

    def flush(self, final: bool = False) -> None:
        update, self._update = self._update, Update()
        for store in self.stores:
            store.flush(update, final)


class SharedIdleExtension:
    """In a shared crawl, keep an idle spider open until the shared queue stayed empty for
    KD3_IDLE_CLOSE_SECONDS (another process may still be parsing a page that queues more), and
    look at that queue every KD3_SHARED_POLL_SECONDS.

    An idle engine asks its scheduler for requests only on its heartbeat (every 5 s). So, as
    scrapy-redis's RedisSpider does with the start URLs it finds in Redis, a request that another
    process queued is taken here and handed to the engine with `engine.crawl()`, which wakes it.
    """

    def __init__(self, crawler, idle_seconds: float, poll_seconds: float):
        self.crawler = crawler
        self.idle_seconds, self.poll_seconds = idle_seconds, poll_seconds
        self.idle_since: float | None = None
        self._loop = None

    @classmethod
    def from_crawler(cls, crawler):
        from scrapy import signals
        from scrapy.exceptions import NotConfigured

        settings = crawler.settings
        if not settings.getbool("KD3_SHARED"):
            raise NotConfigured
        ext = cls(crawler, settings.getfloat("KD3_IDLE_CLOSE_SECONDS"),
                  settings.getfloat("KD3_SHARED_POLL_SECONDS"))  # fmt: skip
        crawler.signals.connect(ext.opened, signals.spider_opened)
        crawler.signals.connect(ext.closed, signals.spider_closed)
        crawler.signals.connect(ext.idle, signals.spider_idle)
        crawler.signals.connect(ext.busy, signals.request_reached_downloader)
        return ext

    def opened(self, spider) -> None:
        from twisted.internet import task

        self._loop = task.LoopingCall(self.poll)
        self._loop.start(self.poll_seconds, now=False)

    def closed(self, spider, reason) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def poll(self) -> None:
        """Wake an engine that is downloading nothing while the shared queue holds requests."""
        engine = self.crawler.engine
        scheduler = engine.scheduler
        if scheduler is None or engine.downloader.active or engine.needs_backout():
            return
        if scheduler.has_pending_requests():
            request = scheduler.next_request()
            if request is not None:  # the shared duplicate filter admitted it already
                engine.crawl(request.replace(dont_filter=True))

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
def read_stats(client, crawl_id: str) -> dict[str, str]:
    """A crawl's stats from Redis (`client`: a redis.Redis)."""
    raw = client.hgetall(stats_key(crawl_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def read_pool_stats(pool_root: str | Path, crawl_id: str) -> dict[str, str]:
    """A crawl's stats from its pool ({} when the crawl never wrote there)."""
    path = stats_path(pool_root, crawl_id)
    try:
        return {k: str(v) for k, v in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        return {}


def format_stats(crawl_id: str, stats: dict[str, str], where: str = "") -> str:
    """A two-column table: times and status first, then counters grouped by prefix."""
    if not stats:
        return f"no stats for crawl {crawl_id}{f' in {where}' if where else ''}"
    head = ["crawl_id", "status", "start_time", "end_time", "finish_reason", RUNNING]
    first = [k for k in head if k in stats]
    rest = sorted(set(stats) - set(first), key=lambda k: (k.count(":"), k))
    width = max(len(k) for k in stats)
    lines = [f"{'field':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {stats[k]}" for k in first + rest]
    return "\n".join(lines)
