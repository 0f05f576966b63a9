"""Wikimedia Commons: MediaWiki API search in the File namespace, image URLs from imageinfo.

One request per query page returns up to 50 files with their URL (a thumbnail of
KD3_WIKIMEDIA_THUMB_WIDTH when the original is larger), licence and author (extmetadata).
"""

from __future__ import annotations

from urllib.parse import urlencode

from w3lib.html import remove_tags

from crawler.spiders.base import ImageSpider


def search_url(api: str, query: str, thumb_width: int, cont: dict | None = None) -> str:
    params = {
        "action": "query",
        "format": "json",
        "formatversion": "2",
        "generator": "search",
        "gsrsearch": f"filetype:bitmap {query}",
        "gsrnamespace": "6",
        "gsrlimit": "50",
        "prop": "imageinfo",
        "iiprop": "url|mime|size|extmetadata",
        "iiextmetadatafilter": "LicenseShortName|LicenseUrl|Artist|ObjectName",
        "iiurlwidth": str(thumb_width),
        **(cont or {}),
    }
    return f"{api}?{urlencode(params)}"


def parse_search(data: dict) -> list[dict]:
    """Image hits of one API answer: url, page_url, license, license_url, author, title."""
    pages = data.get("query", {}).get("pages", [])
    if isinstance(pages, dict):  # formatversion=1 answers
        pages = list(pages.values())
    hits = []
    for page in pages:
        for info in page.get("imageinfo", [])[:1]:
            if not str(info.get("mime", "image/")).startswith("image/"):
                continue
            meta = info.get("extmetadata", {})

            def value(name, meta=meta):
                text = meta.get(name, {}).get("value")  # may hold HTML (links to the author)
                return (remove_tags(str(text)).strip() or None) if text else None

            hits.append(
                {
                    "url": info.get("thumburl") or info.get("url"),
                    "page_url": info.get("descriptionurl", ""),
                    "license": value("LicenseShortName"),
                    "license_url": value("LicenseUrl"),
                    "author": value("Artist"),
                    "title": value("ObjectName") or page.get("title"),
                }
            )
    return [h for h in hits if h["url"]]


class WikimediaSpider(ImageSpider):
    name = "wikimedia"
    api = True

    async def start(self):
        width = self.settings.getint("KD3_WIKIMEDIA_THUMB_WIDTH")
        for class_name, query, term in self.class_queries():
            meta = self.meta(class_name, term, query=query, page=1)
            yield self.api_request(search_url(self.base_url, query, width), self.parse_api, meta)

    def parse_api(self, response):
        info = response.meta["kd3"]
        data = self.api_json(response)
        if data is None:
            return
        if "error" in data:
            self.count_rejected("api_error")
            self.logger.warning("Commons API error: %s", data["error"].get("info", data["error"]))
            return
        for hit in parse_search(data):
            url = hit.pop("url")
            request = self.image_request(url, info["class_name"], info["keyword"], **hit)
            if request:
                yield request
        cont = data.get("continue")
        if cont and info["page"] < self.max_pages:
            width = self.settings.getint("KD3_WIKIMEDIA_THUMB_WIDTH")
            url = search_url(self.base_url, info["query"], width, cont)
            meta = self.meta(info["class_name"], info["keyword"], query=info["query"],
                             page=info["page"] + 1)  # fmt: skip
            yield self.api_request(url, self.parse_api, meta)
