"""Openverse: its public images API (openly licensed images, licence fields kept)."""

from __future__ import annotations

from urllib.parse import urlencode

from crawler.spiders.base import ImageSpider

PAGE_SIZE = 20  # the most an anonymous client may ask for


def search_url(api: str, query: str, page: int) -> str:
    return f"{api}?{urlencode({'q': query, 'page': page, 'page_size': PAGE_SIZE})}"


def licence_name(result: dict) -> str | None:
    name, version = result.get("license"), result.get("license_version")
    if not name:
        return None
    name = name.upper() if name in ("cc0", "pdm") else f"CC {name.upper()}"
    return f"{name} {version}" if version else name


def parse_results(data: dict) -> list[dict]:
    hits = []
    for result in data.get("results", []):
        if result.get("url"):
            hits.append(
                {
                    "url": result["url"],
                    "page_url": result.get("foreign_landing_url") or "",
                    "license": licence_name(result),
                    "license_url": result.get("license_url"),
                    "author": result.get("creator"),
                    "title": result.get("title"),
                }
            )
    return hits


class OpenverseSpider(ImageSpider):
    name = "openverse"
    api = True

    async def start(self):
        for class_name, query, term in self.class_queries():
            meta = self.meta(class_name, term, query=query, page=1)
            yield self.api_request(search_url(self.base_url, query, 1), self.parse_api, meta)

    def parse_api(self, response):
        info = response.meta["kd3"]
        data = self.api_json(response)
        if data is None:
            return
        for hit in parse_results(data):
            url = hit.pop("url")
            request = self.image_request(url, info["class_name"], info["keyword"], **hit)
            if request:
                yield request
        page = info["page"]
        if page < min(int(data.get("page_count") or 0), self.max_pages):
            meta = self.meta(info["class_name"], info["keyword"], query=info["query"],
                             page=page + 1)  # fmt: skip
            yield self.api_request(
                search_url(self.base_url, info["query"], page + 1), self.parse_api, meta
            )
