"""What every source spider shares: classes and queries, image requests, failure accounting."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import scrapy

from crawler.failures import Refused, failure_reason
from crawler.items import ImageItem
from crawler.keywords import queries
from crawler.pipelines import PoolWriter
from crawler.stats import reject, skip
from pool.classes import ClassInfo, ClassList
from pool.store import Pool


class ImageSpider(scrapy.Spider):
    """Subclasses set `name` (also the `source` recorded with every image) and implement start().

    Spider arguments: `classes` ("cat,dog" or a ClassList; default: the pool's classes.json)
    and `source_url` (default: KD3_SOURCE_URLS[name]).
    """

    api = False  # API endpoints are not pages: robots.txt governs crawling, not API use

    def __init__(self, *args, classes=None, source_url=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._classes_arg = classes
        self._source_url_arg = source_url

    @classmethod
    def update_settings(cls, settings):
        super().update_settings(settings)
        jobdir_root = settings.get("KD3_JOBDIR_ROOT")
        if jobdir_root:  # one job directory per spider, so each resumes its own queue
            settings.set("JOBDIR", f"{jobdir_root}/{cls.name}", priority="spider")

    @classmethod
    def from_crawler(cls, crawler, *args, **kwargs):
        spider = super().from_crawler(crawler, *args, **kwargs)
        settings = crawler.settings
        spider.classes = spider._load_classes(settings)
        spider.templates = settings.getlist("KD3_QUERY_TEMPLATES") or ["{}"]
        spider.max_pages = settings.getint("KD3_MAX_PAGES")
        spider.base_url = spider._source_url_arg or settings.getdict("KD3_SOURCE_URLS").get(
            cls.name, ""
        )
        spider.writer = PoolWriter.for_crawler(crawler)
        return spider

    def _load_classes(self, settings) -> ClassList:
        arg = self._classes_arg
        if isinstance(arg, ClassList):
            return arg
        if isinstance(arg, str):
            return ClassList.from_names([n for n in arg.split(",") if n.strip()])
        classes = Pool.open(settings.get("KD3_POOL")).classes()
        if classes is None:
            raise ValueError(f"{settings.get('KD3_POOL')}: pool has no classes.json")
        return classes

    # -- queries ------------------------------------------------------------------------------
    def class_queries(self):
        """(class name, query, term) for every class not yet at its target: its name and
        keywords, or exactly the terms the crawl loop gives this round (KD3_CLASS_QUERIES)."""
        this_round = self.settings.get("KD3_CLASS_QUERIES")
        for info in self.classes.classes:
            if this_round is not None:
                info = ClassInfo(info.name, tuple(this_round.get(info.name, ())))
                if not info.keywords:
                    continue
            if not self.writer.full(info.name):
                for query, term in queries(info, self.templates, with_name=this_round is None):
                    yield info.name, query, term

    def count_rejected(self, reason: str) -> None:
        reject(self.crawler.stats, reason, self.name)

    def count_skipped(self, reason: str) -> None:
        skip(self.crawler.stats, reason)

    def meta(self, class_name: str, keyword: str, **extra) -> dict:
        return {"kd3": {"class_name": class_name, "keyword": keyword, **extra}}

    def api_json(self, response) -> dict | None:
        """An API response's JSON body, or None (counted as an api_error) when it is not JSON."""
        try:
            data = json.loads(response.text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self.count_rejected("api_error")
            return None
        return data

    def api_request(self, url: str, callback, meta: dict) -> scrapy.Request:
        meta = {**meta, "dont_obey_robotstxt": self.api}
        return scrapy.Request(url, callback=callback, errback=self.on_error, meta=meta)

    # -- images -------------------------------------------------------------------------------
    def image_request(self, url: str, class_name: str, keyword: str, page_url: str = "",
                      **details) -> scrapy.Request | None:  # fmt: skip
        """A request for an image, or None (recorded) when its URL is not http(s)."""
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            self.count_rejected("scheme_not_allowed")
            self.logger.debug("refused %s link %.80s", scheme or "relative", url)
            return None
        if url in self.writer.known_urls:  # stored by an earlier round of the crawl loop
            self.count_skipped("already_in_pool")
            return None
        meta = self.meta(class_name, keyword, page_url=page_url, **details)
        meta["allow_offsite"] = True  # images may live on another host than the pages
        return scrapy.Request(url, callback=self.parse_image, errback=self.on_error, meta=meta)

    def parse_image(self, response):
        info = response.meta["kd3"]
        yield ImageItem(
            url=response.url,
            body=response.body,
            source=self.name,
            class_name=info["class_name"],
            keyword=info["keyword"],
            page_url=info.get("page_url", ""),
            license=info.get("license"),
            license_url=info.get("license_url"),
            author=info.get("author"),
            title=info.get("title"),
        )

    def on_error(self, failure):
        """Every failed or refused request ends here and in the stats, with its reason."""
        reason = failure_reason(failure)
        if isinstance(failure.value, Refused) and failure.value.skip:
            self.count_skipped(reason)
        else:
            self.count_rejected(reason)
        request = getattr(failure, "request", None)
        self.logger.debug("%s: %s", reason, request.url if request else failure.getErrorMessage())
