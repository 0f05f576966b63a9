"""A generated web that behaves like the real one where it matters to the crawl loop: images are
captioned by their fine label, not by the teacher's class.

Built from labelled images: each image's caption is one of its synset's names (a Tiny-ImageNet
synset "German shepherd, German shepherd dog, German police dog, alsatian" captions an image
with one of them, the first most often), so a search for a teacher's class name ("dog") finds
only the images whose caption happens to say it, and the rest must be discovered. Served on a
LocalWeb (crawler.localweb):

    /api/images/?q=&page=&page_size=   search in the shape of Openverse's API: a query matches
                                       an image when every query word is a caption word (a
                                       plural "s" allowed); results with url, title (the
                                       caption), foreign_landing_url (its gallery page), licence
    /img/<i>.png                       the images
    /gallery/<synset>/<page>.html      a gallery per synset: its images (alt and figcaption are
                                       the caption), the next page, and RELATED other galleries
                                       (those of the same group first)

The hidden truth (which image a URL is) stays with the Testbed for benchmarks and tests.
"""

from __future__ import annotations

import functools
import io
import math
import re
from html import escape
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from crawler.keywords import normalise
from crawler.localweb import LocalWeb, Request, Response

API_PATH = "/api/images/"
PAGE_SIZE = 20  # results per API page (Openverse's anonymous limit)
PER_GALLERY_PAGE = 24
RELATED = 4  # galleries each gallery links to
FIRST_NAME_SHARE = 0.5  # share of captions that use the synset's first name


class Testbed:
    __test__ = False  # not a pytest test class

    def __init__(self, images: np.ndarray, synsets, names: list[str], *, groups=None,
                 seed: int = 0, first_name_share: float = FIRST_NAME_SHARE):  # fmt: skip
        """`images` uint8 (N, H, W, 3); `synsets` (N,) the synset of each image, an index into
        `names` (comma-separated synonyms per synset); `groups` (per synset) says which
        galleries are related (same value), None for none in particular."""
        rng = np.random.default_rng(seed)
        self.images = images
        self.synsets = np.asarray(synsets)
        self.names = [[n.strip() for n in entry.split(",") if n.strip()] for entry in names]
        self.groups = None if groups is None else np.asarray(groups)
        self.captions = [self._caption(int(s), rng, first_name_share) for s in self.synsets]
        self._words = [set(normalise(c).split()) for c in self.captions]
        self.members = {int(s): np.nonzero(self.synsets == s)[0] for s in np.unique(self.synsets)}
        self.related = {s: self._related(s, rng) for s in self.members}
        self.web: LocalWeb | None = None

    def _caption(self, synset: int, rng, first_share: float) -> str:
        names = self.names[synset]
        if len(names) == 1 or rng.random() < first_share:
            return names[0]
        return names[int(rng.integers(1, len(names)))]

    def _related(self, synset: int, rng) -> list[int]:
        others = [s for s in self.members if s != synset]
        same = [
            s for s in others if self.groups is not None and self.groups[s] == self.groups[synset]
        ]
        rest = [s for s in others if s not in same]
        picked = list(rng.permutation(same)[: RELATED // 2]) if same else []
        picked += list(rng.permutation(rest)[: RELATED - len(picked)])
        return [int(s) for s in picked]

    # -- the hidden truth ---------------------------------------------------------------------
    def image_of(self, url: str) -> int | None:
        """Which image a URL of this web is, or None."""
        match = re.fullmatch(r"/img/(\d+)\.png", urlsplit(url).path)
        return int(match.group(1)) if match else None

    def search(self, query: str) -> list[int]:
        words = normalise(query).split()
        if not words:
            return []
        return [i for i, have in enumerate(self._words)
                if all(w in have or (w.endswith("s") and w[:-1] in have) for w in words)]  # fmt: skip

    # -- serving ------------------------------------------------------------------------------
    def serve(self, web: LocalWeb) -> Testbed:
        self.web = web
        web.route(API_PATH, self._api)
        for i in range(len(self.images)):
            web.route(f"/img/{i}.png", functools.partial(self._image, i))
        for synset, members in self.members.items():
            pages = math.ceil(len(members) / PER_GALLERY_PAGE)
            for page in range(1, pages + 1):
                web.route(self.gallery_path(synset, page),
                          functools.partial(self._gallery, synset, page, pages))  # fmt: skip
        return self

    @property
    def api_url(self) -> str:
        return self.web.url(API_PATH)

    @staticmethod
    def gallery_path(synset: int, page: int = 1) -> str:
        return f"/gallery/{synset}/{page}.html"

    def landing_path(self, i: int) -> str:
        synset = int(self.synsets[i])
        rank = int(np.searchsorted(self.members[synset], i))
        return self.gallery_path(synset, rank // PER_GALLERY_PAGE + 1)

    def _api(self, request: Request) -> Response:
        import json

        query = (request.query.get("q") or [""])[0]
        try:
            page = max(1, int((request.query.get("page") or ["1"])[0]))
            size = min(PAGE_SIZE, max(1, int((request.query.get("page_size") or ["20"])[0])))
        except ValueError:
            return Response(400, b'{"detail": "bad page"}', {"Content-Type": "application/json"})
        hits = self.search(query)
        part = hits[(page - 1) * size : page * size]
        body = {
            "result_count": len(hits),
            "page_count": math.ceil(len(hits) / size),
            "results": [
                {
                    "url": self.web.url(f"/img/{i}.png"),
                    "title": self.captions[i],
                    "foreign_landing_url": self.web.url(self.landing_path(i)),
                    "creator": "testbed",
                    "license": "by",
                    "license_version": "4.0",
                    "license_url": "https://creativecommons.org/licenses/by/4.0/",
                }
                for i in part
            ],
        }
        return Response(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _image(self, i: int, _request: Request) -> Response:
        buf = io.BytesIO()
        Image.fromarray(self.images[i]).save(buf, "PNG")
        return Response(200, buf.getvalue(), {"Content-Type": "image/png"})

    def _gallery(self, synset: int, page: int, pages: int, _request: Request) -> Response:
        members = self.members[synset][(page - 1) * PER_GALLERY_PAGE : page * PER_GALLERY_PAGE]
        title = escape(self.names[synset][0])
        figures = "".join(
            f"<figure><img src='/img/{i}.png' alt='{escape(self.captions[i])}'>"
            f"<figcaption>{escape(self.captions[i])}</figcaption></figure>"
            for i in members
        )
        links = (
            [f"<a href='{self.gallery_path(synset, page + 1)}'>more</a>"] if page < pages else []
        )
        links += [f"<a href='{self.gallery_path(s)}'>{escape(self.names[s][0])}</a>"
                  for s in self.related[synset]]  # fmt: skip
        html = (
            f"<!doctype html><title>{title}</title><h1>{title}</h1>{figures}"
            f"<nav>{' '.join(links)}</nav>"
        )
        return Response(200, html.encode(), {"Content-Type": "text/html; charset=utf-8"})
