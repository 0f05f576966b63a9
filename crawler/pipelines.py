"""Validate downloaded images and store them in the pool in batches.

PoolPipeline validates each image (one Pillow decode: format, size, pixel cap, truncation) and
hands it, with what the decode found and its sha256, to the crawl's PoolWriter, which batches
`Pool.add` calls in a worker thread, at least every KD3_FLUSH_SECONDS and at close. The writer
reads the pool once when it opens; afterwards each batch's AddResult keeps its view current, so
a flush costs the same on a pool of ten images or a million.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime

from scrapy.exceptions import DropItem
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet import defer, task, threads

from crawler.items import ImageItem
from crawler.stats import reject, skip
from pool.errors import InvalidImage, PoolError
from pool.images import ImageInfo, inspect_image
from pool.store import NewImage, Pool, sha256_hex

logger = logging.getLogger(__name__)


def image_limits(settings) -> dict:
    return {
        "max_pixels": settings.getint("KD3_MAX_PIXELS"),
        "min_side": settings.getint("KD3_MIN_SIDE"),
        "formats": frozenset(settings.getlist("KD3_ALLOWED_FORMATS")),
    }


class PoolWriter:
    """Buffers a crawl's finds, writes them in batches, and knows how many each class has.

    One per crawler (`for_crawler`), unless the code starting the crawlers hands them one to
    share: crawler.run does, so that a class target counts the images of every source.
    """

    def __init__(self, pool: Pool, per_class: int, limits: dict,
                 flush_items: int = 256, flush_seconds: float = 2.0,
                 targets: dict[str, int] | None = None, crawl_round: int = 1,
                 skip_pool: str | None = None):  # fmt: skip
        self.pool, self.per_class, self.limits = pool, per_class, limits
        self.targets = dict(targets or {})  # per class, instead of per_class (the crawl loop)
        self.crawl_round = crawl_round
        self.flush_items, self.flush_seconds = flush_items, flush_seconds
        classes = pool.classes()
        self.class_names = classes.names if classes else []
        # (record, item, the offering crawler's stats): each crawler counts its own images.
        self.buffer: list[tuple[NewImage, ImageItem, object]] = []
        self.pending: set[str] = set()  # new sha256 queued or being written
        self.pending_per_class: Counter[str] = Counter()
        self.users = 0
        self._writing: defer.Deferred = defer.succeed(None)
        self._loop: task.LoopingCall | None = None
        # The pool as it is now, read once; each batch's AddResult keeps this current.
        rows = pool.manifest()
        table = rows.select(["sha256", "class_name", "status"]).to_pydict()
        self.known = set(table["sha256"])
        # The crawl loop's later rounds do not fetch again what an earlier round stored.
        self.known_urls = set(rows["url"].to_pylist()) if crawl_round > 1 else set()
        if skip_pool:  # the crawl loop's probe: what the pool it explores for already holds
            self.known_urls |= set(Pool.open(skip_pool).manifest()["url"].to_pylist())
        self.stored_per_class = Counter(
            name
            for name, status in zip(table["class_name"], table["status"], strict=True)
            if status == "kept"
        )

    @classmethod
    def from_settings(cls, settings) -> PoolWriter:
        root = settings.get("KD3_POOL")
        if not root:
            raise ValueError("KD3_POOL must name the pool directory to store images in")
        return cls(
            Pool.open(root),
            settings.getint("KD3_PER_CLASS"),
            image_limits(settings),
            settings.getint("KD3_FLUSH_ITEMS"),
            settings.getfloat("KD3_FLUSH_SECONDS"),
            settings.getdict("KD3_CLASS_TARGETS"),
            settings.getint("KD3_ROUND", 1),
            settings.get("KD3_SKIP_POOL") or None,
        )

    @classmethod
    def for_crawler(cls, crawler) -> PoolWriter:
        """The crawler's writer (`crawler.kd3_pool_writer`), made on first use."""
        writer = getattr(crawler, "kd3_pool_writer", None)
        if writer is None:
            writer = crawler.kd3_pool_writer = cls.from_settings(crawler.settings)
        return writer

    # -- class targets ------------------------------------------------------------------------
    def count(self, class_name: str) -> int:
        return self.stored_per_class[class_name] + self.pending_per_class[class_name]

    def target(self, class_name: str) -> int:
        """Images of the class the pool may hold (0: no limit)."""
        return self.targets.get(class_name, self.per_class)

    def full(self, class_name: str) -> bool:
        target = self.target(class_name)
        return bool(target) and self.count(class_name) >= target

    def all_full(self) -> bool:
        return bool(self.class_names) and all(self.full(c) for c in self.class_names)

    # -- buffering ----------------------------------------------------------------------------
    def offer(self, item: ImageItem, info: ImageInfo, stats) -> str:
        """Queue a validated image (`info`: its inspect_image result; `stats`: the offering
        crawler's): returns "new", "duplicate" (its find is recorded) or "class_full"."""
        sha = sha256_hex(item.body)  # the one hash of these bytes
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
            extra={**{k: v for k, v in extra.items() if v}, "crawl_round": self.crawl_round},
            info=info,
            sha256=sha,
        )
        self.buffer.append((record, item, stats))
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
        return self.pool.add([record for record, _, _ in batch], **self.limits)

    def _written(self, result, batch) -> None:
        added, credited = set(result.added), set()
        for record, item, stats in batch:
            sha = record.sha256
            if sha in added and sha not in credited:
                credited.add(sha)
                self.stored_per_class[item.class_name] += 1
                stats.inc_value("images_stored")
                stats.inc_value("bytes_stored", len(record.data))
                stats.inc_value(f"class:{item.class_name}:stored")
                stats.inc_value(f"source:{item.source}:stored")
            else:
                stats.inc_value("duplicates")
                stats.inc_value(f"source:{item.source}:duplicates")
        # Stored now, by this batch or (already_present) by another process since the open.
        self.known.update(added, result.already_present)
        self._settle(batch)

    def _failed(self, failure, batch) -> None:
        # Not expected (images were validated with the same limits): disk full, pool removed...
        # The chain must recover, or no later batch would be written.
        expected = failure.check(PoolError, OSError)
        detail = failure.getErrorMessage() if expected else failure.getTraceback()
        logger.error("could not store %d images in %s: %s", len(batch), self.pool.root, detail)
        for _, item, stats in batch:
            reject(stats, "store_failed", item.source)
        self._settle(batch)

    def _settle(self, batch) -> None:
        for record, item, _ in batch:
            if record.sha256 in self.pending:
                self.pending.discard(record.sha256)
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
    def __init__(self, writer: PoolWriter, stats, limits: dict):
        self.writer, self.stats, self.limits = writer, stats, limits

    @classmethod
    def from_crawler(cls, crawler):
        return cls(PoolWriter.for_crawler(crawler), crawler.stats, image_limits(crawler.settings))

    def open_spider(self) -> None:
        self.writer.open()

    async def close_spider(self) -> None:
        await maybe_deferred_to_future(self.writer.close())

    def process_item(self, item):
        if not isinstance(item, ImageItem):
            return item
        try:
            info = inspect_image(item.body, **self.limits)  # the one decode of these bytes
        except InvalidImage as exc:
            reject(self.stats, exc.reason, item.source)
            raise DropItem(f"{exc.reason}: {item.url}") from None
        if self.writer.offer(item, info, self.stats) == "class_full":
            skip(self.stats, "class_target_reached")
            raise DropItem(f"class {item.class_name!r} reached its target: {item.url}")
        return item.summary()
