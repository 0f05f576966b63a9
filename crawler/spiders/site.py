"""A generic site spider: from seed pages or sitemaps, follow links within the seeds' domains
and take each `<img>` whose alt text, title, caption or file name names a class keyword."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import scrapy
from scrapy.linkextractors import LinkExtractor
from scrapy.utils.sitemap import Sitemap, sitemap_urls_from_robots

from crawler.keywords import KeywordMatcher, Match
from crawler.spiders.base import ImageSpider


def page_opts_out(response) -> bool:
    """`<meta name="robots" content="noai">` (or noimageai) on the page."""
    for content in response.css('meta[name="robots" i]::attr(content)').getall():
        if {"noai", "noimageai"} & {d.strip().lower() for d in content.split(",")}:
            return True
    return False


def image_candidates(response):
    """(src, alt, title, caption) for every <img> of an HTML page."""
    for img in response.css("img"):
        src = img.attrib.get("src") or img.attrib.get("data-src")
        if not src:
            continue
        caption = " ".join(img.xpath("ancestor::figure[1]/figcaption//text()").getall())
        yield src.strip(), img.attrib.get("alt", ""), img.attrib.get("title", ""), caption


class SiteSpider(ImageSpider):
    name = "site"

    def __init__(self, *args, seeds=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._seeds_arg = seeds

    @classmethod
    def from_crawler(cls, crawler, *args, **kwargs):
        spider = super().from_crawler(crawler, *args, **kwargs)
        seeds = spider._seeds_arg or crawler.settings.getlist("KD3_SEEDS")
        spider.seeds = seeds.split(",") if isinstance(seeds, str) else list(seeds)
        spider.allowed_domains = sorted({urlsplit(s).hostname for s in spider.seeds} - {None})
        spider.depth_limit = crawler.settings.getint("KD3_SITE_DEPTH")
        spider.matcher = KeywordMatcher(spider.classes.classes)
        # Domains are checked here by host name: LinkExtractor's allow_domains compares host:port.
        spider.links = LinkExtractor(deny_extensions=[])
        spider.page_links = {} if crawler.settings.getbool("KD3_RECORD_LINKS") else None
        return spider

    def closed(self, reason):
        if self.page_links is not None:  # the crawl loop reads the pages' links (steer.feedback)
            from common.files import atomic_write
            from crawler.stats import links_path

            path = links_path(self.settings.get("KD3_POOL"), self.settings.get("KD3_CRAWL_ID"))
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps(self.page_links).encode())

    async def start(self):
        if not self.seeds:
            self.logger.error("site: no seed URLs (pass --seed or set KD3_SEEDS)")
        focused = self.settings.getdict("KD3_SEED_CLASSES")
        for url in self.seeds:
            callback = self.parse_sitemap if self._is_sitemap(url) else self.parse_page
            meta, priority = {}, 0
            if url in focused:  # the crawl loop: a page where the teacher found a class
                class_name, priority = focused[url]
                meta = {"kd3_for": class_name, "kd3_priority": priority}
            yield scrapy.Request(url, callback=callback, errback=self.on_error, meta=meta,
                                 priority=priority)  # fmt: skip

    @staticmethod
    def _is_sitemap(url: str) -> bool:
        path = urlsplit(url).path
        return path.endswith((".xml", ".xml.gz")) or path.endswith("/robots.txt")

    def parse_sitemap(self, response):
        if response.url.endswith("/robots.txt"):
            urls, kind = sitemap_urls_from_robots(response.text, base_url=response.url), "index"
        else:
            sitemap = Sitemap(response.body)
            urls, kind = (entry["loc"] for entry in sitemap), sitemap.type
        for url in urls:
            callback = self.parse_sitemap if kind == "sitemapindex" or kind == "index" else None
            yield scrapy.Request(url, callback=callback or self.parse_page, errback=self.on_error)

    def parse_page(self, response):
        if not isinstance(response, scrapy.http.TextResponse) or self.writer.all_full():
            return
        if page_opts_out(response):
            self.count_rejected("meta_robots_noai")
            return
        links = self.links.extract_links(response)
        if self.page_links is not None:
            self.page_links[response.url] = sorted({k.url for k in links if self.on_site(k.url)})
        for src, alt, title, caption in image_candidates(response):
            url = response.urljoin(src)  # absolute and data:/ftp:/file: URLs stay as they are
            filename = urlsplit(url).path.rsplit("/", 1)[-1] if url.startswith("http") else ""
            match = self.matcher.match(alt, title, caption, filename)
            if match is None and response.meta.get("kd3_for"):  # taken for the teacher to judge
                match = Match(response.meta["kd3_for"], "page")
            if match is None:
                continue
            request = self.image_request(url, match.class_name, match.keyword,
                                         page_url=response.url, title=alt or title or None)  # fmt: skip
            if request:
                yield request
        if response.meta.get("depth", 0) < self.depth_limit:
            for link in links:
                if self.on_site(link.url):
                    focus = {k: response.meta[k] for k in ("kd3_for", "kd3_priority")
                             if k in response.meta}  # fmt: skip
                    yield scrapy.Request(link.url, callback=self.parse_page, errback=self.on_error,
                                         meta=focus, priority=focus.get("kd3_priority", 0))  # fmt: skip
                else:  # never resolved or fetched
                    self.count_skipped("offsite_link")

    def on_site(self, url: str) -> bool:
        host = urlsplit(url).hostname or ""
        return any(host == d or host.endswith(f".{d}") for d in self.allowed_domains)
