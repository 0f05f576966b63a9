"""Bing Images: the results page. The fragile one, so the parser is one small function, tested
on saved pages: each result is an `<a class="iusc" m="{json}">` whose JSON gives the image URL
(murl), the page it is on (purl) and a title (t)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from parsel import Selector

from crawler.spiders.base import ImageSpider

PAGE_SIZE = 35


def results_url(base: str, query: str, first: int) -> str:
    return f"{base}?{urlencode({'q': query, 'first': first, 'count': PAGE_SIZE, 'form': 'HDRSC2'})}"


def parse_results_page(html: str) -> list[dict]:
    """[{url, page_url, title}] for each result; entries with unreadable metadata are skipped."""
    hits = []
    for raw in Selector(text=html).css("a.iusc::attr(m)").getall():
        try:
            meta = json.loads(raw)
        except ValueError:
            continue
        if isinstance(meta, dict) and meta.get("murl"):
            hits.append(
                {"url": meta["murl"], "page_url": meta.get("purl", ""), "title": meta.get("t")}
            )
    return hits


class BingSpider(ImageSpider):
    name = "bing"

    async def start(self):
        for class_name, query, term in self.class_queries():
            meta = self.meta(class_name, term, query=query, page=1)
            yield self.api_request(results_url(self.base_url, query, 1), self.parse_page, meta)

    def parse_page(self, response):
        info = response.meta["kd3"]
        hits = parse_results_page(response.text)
        for hit in hits:
            url = hit.pop("url")
            request = self.image_request(url, info["class_name"], info["keyword"], **hit)
            if request:
                yield request
        page = info["page"]
        if hits and page < self.max_pages:
            meta = self.meta(info["class_name"], info["keyword"], query=info["query"],
                             page=page + 1)  # fmt: skip
            url = results_url(self.base_url, info["query"], page * PAGE_SIZE + 1)
            yield self.api_request(url, self.parse_page, meta)
