"""Flickr: the REST API (flickr.photos.search), Creative Commons licences only.

Needs an API key (FLICKR_API_KEY in the environment, or the KD3_FLICKR_API_KEY setting);
without one the spider logs why and collects nothing.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from crawler.spiders.base import ImageSpider

# flickr.photos.licenses.getInfo; the ones asked for are openly licensed.
LICENSES = {
    "1": ("CC BY-NC-SA 2.0", "https://creativecommons.org/licenses/by-nc-sa/2.0/"),
    "2": ("CC BY-NC 2.0", "https://creativecommons.org/licenses/by-nc/2.0/"),
    "3": ("CC BY-NC-ND 2.0", "https://creativecommons.org/licenses/by-nc-nd/2.0/"),
    "4": ("CC BY 2.0", "https://creativecommons.org/licenses/by/2.0/"),
    "5": ("CC BY-SA 2.0", "https://creativecommons.org/licenses/by-sa/2.0/"),
    "6": ("CC BY-ND 2.0", "https://creativecommons.org/licenses/by-nd/2.0/"),
    "7": ("No known copyright restrictions", "https://www.flickr.com/commons/usage/"),
    "8": ("United States Government Work", "http://www.usa.gov/copyright.shtml"),
    "9": ("CC0 1.0", "https://creativecommons.org/publicdomain/zero/1.0/"),
    "10": ("Public Domain Mark 1.0", "https://creativecommons.org/publicdomain/mark/1.0/"),
}
NO_KEY_MESSAGE = "flickr: skipped, no API key (set FLICKR_API_KEY)"


def search_url(api: str, key: str, query: str, page: int) -> str:
    params = {
        "method": "flickr.photos.search",
        "api_key": key,
        "text": query,
        "license": ",".join(LICENSES),
        "content_type": "1",
        "media": "photos",
        "safe_search": "1",
        "extras": "url_z,url_m,license,owner_name",
        "per_page": "100",
        "page": str(page),
        "format": "json",
        "nojsoncallback": "1",
    }
    return f"{api}?{urlencode(params)}"


def parse_photos(data: dict) -> list[dict]:
    hits = []
    for photo in data.get("photos", {}).get("photo", []):
        url = photo.get("url_z") or photo.get("url_m")
        if not url and photo.get("server") and photo.get("secret"):
            url = f"https://live.staticflickr.com/{photo['server']}/{photo['id']}_{photo['secret']}_z.jpg"
        if not url:
            continue
        name, licence_url = LICENSES.get(str(photo.get("license")), (None, None))
        hits.append(
            {
                "url": url,
                "page_url": f"https://www.flickr.com/photos/{photo.get('owner')}/{photo.get('id')}",
                "license": name,
                "license_url": licence_url,
                "author": photo.get("ownername"),
                "title": photo.get("title") or None,
            }
        )
    return hits


class FlickrSpider(ImageSpider):
    name = "flickr"
    api = True

    async def start(self):
        key = self.settings.get("KD3_FLICKR_API_KEY")
        if not key:
            self.logger.error(NO_KEY_MESSAGE)
            self.count_skipped("flickr_no_api_key")
            return
        for class_name, query, term in self.class_queries():
            meta = self.meta(class_name, term, query=query, page=1)
            yield self.api_request(search_url(self.base_url, key, query, 1), self.parse_api, meta)

    def parse_api(self, response):
        info = response.meta["kd3"]
        try:
            data = json.loads(response.text)
        except ValueError:
            data = {"stat": "fail", "message": "not JSON"}
        if data.get("stat") != "ok":
            self.count_rejected("api_error")
            self.logger.warning("Flickr API error: %s", data.get("message"))
            return
        for hit in parse_photos(data):
            url = hit.pop("url")
            request = self.image_request(url, info["class_name"], info["keyword"], **hit)
            if request:
                yield request
        page, pages = info["page"], int(data["photos"].get("pages") or 0)
        if page < min(pages, self.max_pages):
            key = self.settings.get("KD3_FLICKR_API_KEY")
            meta = self.meta(info["class_name"], info["keyword"], query=info["query"],
                             page=page + 1)  # fmt: skip
            yield self.api_request(
                search_url(self.base_url, key, info["query"], page + 1), self.parse_api, meta
            )
