"""Validate downloaded images and store them in the pool in batches.

PoolPipeline validates each image (Pillow decode: format, size, pixel cap, truncation) and hands
the good ones to the process's PoolWriter, which batches `Pool.add` calls (the manifest is
rewritten per call) in a worker thread, at least every KD3_FLUSH_SECONDS and at close.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime

import pyarrow.compute as pc
from scrapy.exceptions import DropItem
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet import defer, task, threads

from crawler.items import ImageItem
from crawler.stats import CrawlStats
from pool.errors import InvalidImage, PoolError
from pool.images import inspect_image
from pool.store import NewImage, Pool, sha256_hex

logger = logging.getLogger(__name__)


def image_limits(settings) -> dict:
    return {
        "max_pixels": settings.getint("KD3_MAX_PIXELS"),
        "min_side": settings.getint("KD3_MIN_SIDE"),
        "formats": frozenset(settings.getlist("KD3_ALLOWED_FORMATS")),
    }


class PoolWriter:
    """One per pool per process: buffers finds, writes them in batches, knows class counts."""

    _shared: dict[str, PoolWriter] = {}

    def __init__(self, pool: Pool, stats: CrawlStats, per_class: int, limits: dict,
                 flush_items: int = 256, flush_seconds: float = 2.0):  # fmt: skip
        self.pool, self.stats, self.per_class, self.limits = pool, stats, per_class, limits
        self.flush_items, self.flush_seconds = flush_items, flush_seconds
        classes = pool.classes()
        self.class_names = classes.names if classes else []
        self.buffer: list[tuple[NewImage, ImageItem]] = []
        self.pending: set[str] = set()  # new sha256 queued or being written
        self.pending_per_class: Counter[str] = Counter()
        self.users = 0
        self._writing: defer.Deferred = defer.succeed(None)
        self._loop: task.LoopingCall | None = None
        self._refresh(pool.manifest())

    @classmethod
    def for_crawler(cls, crawler) -> PoolWriter:
        settings = crawler.settings
        root = settings.get("KD3_POOL")
        if not root:
            raise ValueError("KD3_POOL must name the pool directory to store images in")
        if root not in cls._shared:
            cls._shared[root] = cls(
                Pool.open(root),
                CrawlStats.for_crawler(crawler),
                settings.getint("KD3_PER_CLASS"),
                image_limits(settings),
                settings.getint("KD3_FLUSH_ITEMS"),
                settings.getfloat("KD3_FLUSH_SECONDS"),
            )
        return cls._shared[root]

    # -- class targets ------------------------------------------------------------------------
    def _refresh(self, table) -> None:
        self.known = set(table.column("sha256").to_pylist())
        kept = table.filter(pc.equal(table["status"], "kept"))
        self.stored_per_class = Counter(kept.column("class_name").to_pylist())

    def count(self, class_name: str) -> int:
        return self.stored_per_class[class_name] + self.pending_per_class[class_name]

    def full(self, class_name: str) -> bool:
        return bool(self.per_class) and self.count(class_name) >= self.per_class

    def all_full(self) -> bool:
        return bool(self.per_class and self.class_names) and all(
            self.full(c) for c in self.class_names
        )

    # -- buffering ----------------------------------------------------------------------------
    def offer(self, item: ImageItem) -> str:
        """Queue a validated image: returns "new", "duplicate" (find recorded) or "class_full"."""
        sha = sha256_hex(item.body)
        new = sha not in self.known and sha not in self.pending
        if new and self.full(item.class_name):
            return "class_full"
        if new:
            self.pending.add(sha)
            self.pending_per_class[item.class_name] += 1
        extra = {k: getattr(item, k) for k in ("license", "license_url", "author", "title")}
        record = NewImage(
            data=item.body,
            url=item.url,
            source=item.source,
            page_url=item.page_url,
            keyword=item.keyword,
            class_name=item.class_name,
            fetched_at=datetime.now(UTC),
            extra={k: v for k, v in extra.items() if v},
        )
        self.buffer.append((record, item))
        if len(self.buffer) >= self.flush_items:
            self.flush()
        return "new" if new else "duplicate"

    def flush(self) -> defer.Deferred:
        """Write the buffer in a worker thread, after any write still running."""
        if self.buffer:
            batch, self.buffer = self.buffer, []
            self._writing.addCallback(lambda _: threads.deferToThread(self._write, batch))
            self._writing.addCallbacks(self._written, self._failed, (batch,), None, (batch,))
        return self._writing

    def _write(self, batch):
        result = self.pool.add([record for record, _ in batch], **self.limits)
        return result, self.pool.manifest()

    def _written(self, outcome, batch) -> None:
        result, table = outcome
        added, credited = set(result.added), set()
        for record, item in batch:
            sha = sha256_hex(record.data)
            if sha in added and sha not in credited:
                credited.add(sha)
                self.stats.inc("images_stored")
                self.stats.inc("bytes_stored", len(record.data))
                self.stats.inc(f"class:{item.class_name}:stored")
                self.stats.inc(f"source:{item.source}:stored")
            else:
                self.stats.inc("duplicates")
                self.stats.inc(f"source:{item.source}:duplicates")
        self._settle(batch)
        self._refresh(table)

    def _failed(self, failure, batch) -> None:
        # Not expected (images were validated with the same limits): disk full, pool removed...
        # The chain must recover, or no later batch would be written.
        expected = failure.check(PoolError, OSError)
        detail = failure.getErrorMessage() if expected else failure.getTraceback()
        logger.error("could not store %d images in %s: %s", len(batch), self.pool.root, detail)
        for _, item in batch:
            self.stats.reject("store_failed", item.source)
        self._settle(batch)

    def _settle(self, batch) -> None:
        for record, item in batch:
            sha = sha256_hex(record.data)
            if sha in self.pending:
                self.pending.discard(sha)
                self.pending_per_class[item.class_name] -= 1

    # -- lifecycle ----------------------------------------------------------------------------
    def open(self) -> None:
        self.users += 1
        if self._loop is None:
            self._loop = task.LoopingCall(self.flush)
            self._loop.start(self.flush_seconds, now=False)

    def close(self) -> defer.Deferred:
        self.users -= 1
        if self.users == 0 and self._loop is not None:
            self._loop.stop()
            self._loop = None
        return self.flush()


class PoolPipeline:
    def __init__(self, writer: PoolWriter, stats: CrawlStats, limits: dict):
        self.writer, self.stats, self.limits = writer, stats, limits

    @classmethod
    def from_crawler(cls, crawler):
        return cls(
            PoolWriter.for_crawler(crawler),
            CrawlStats.for_crawler(crawler),
            image_limits(crawler.settings),
        )

    def open_spider(self) -> None:
        self.writer.open()

    async def close_spider(self) -> None:
        await maybe_deferred_to_future(self.writer.close())

    def process_item(self, item):
        if not isinstance(item, ImageItem):
            return item
        try:
            inspect_image(item.body, **self.limits)
        except InvalidImage as exc:
            self.stats.reject(exc.reason, item.source)
            raise DropItem(f"{exc.reason}: {item.url}") from None
        if self.writer.offer(item) == "class_full":
            self.stats.skip("class_target_reached")
            raise DropItem(f"class {item.class_name!r} reached its target: {item.url}")
        return item.summary()
