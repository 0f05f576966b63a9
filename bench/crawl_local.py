"""Images/s of a 5,000-image crawl of the local web: kd3's crawler (validation, pool storage,
Redis stats, address policy on) side by side with a plain Scrapy ImagesPipeline crawl of the same
pages, in the same run. Each crawl runs in its own process (a Twisted reactor starts once per
process); the local web and Redis run in this one. Nothing leaves 127.0.0.1.

    nice -n 10 .venv/bin/python bench/crawl_local.py [--images 5000] [--per-page 100]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crawler.localweb import LocalWeb  # noqa: E402
from workers.local_redis import RedisServer  # noqa: E402

# The same network settings for both crawls: the comparison is about what happens per image.
NETWORK = {
    "CONCURRENT_REQUESTS": 32,
    "CONCURRENT_REQUESTS_PER_DOMAIN": 32,
    "AUTOTHROTTLE_ENABLED": False,
    "LOG_LEVEL": "WARNING",
}
# kd3's fixed defaults (crawler/settings.py; a crawl may not change them), given to plain Scrapy
KD3_FIXED = {
    "ROBOTSTXT_OBEY": True,
    "TELNETCONSOLE_ENABLED": False,
    "REMOTE_CONTROL_ENABLED": False,
}

PLAIN = """
import json, sys, time
import scrapy
from scrapy.crawler import CrawlerProcess

seed, store, network = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

class Gallery(scrapy.Spider):
    name = "plain"
    async def start(self):
        yield scrapy.Request(seed)
    def parse(self, response):
        yield {"image_urls": [response.urljoin(s) for s in response.css("img::attr(src)").getall()]}
        yield from response.follow_all(css="a")

process = CrawlerProcess({**network, "ITEM_PIPELINES": {"scrapy.pipelines.images.ImagesPipeline": 1},
                          "IMAGES_STORE": store})
process.crawl(Gallery)
start = time.perf_counter()
process.start()
print(json.dumps({"seconds": time.perf_counter() - start}))
"""

KD3 = """
import json, sys, time
from crawler.run import crawl
seed, out, redis_url, network = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
start = time.perf_counter()
result = crawl(["cat", "dog"], out, sources=["site"], per_class=0, seeds=[seed], redis_url=redis_url,
               crawl_id="bench", allow_networks=["127.0.0.1/32"],
               settings={**network, "KD3_SITE_DEPTH": 1, "KD3_MIN_SIDE": 8, **json.loads(sys.argv[5])})
print(json.dumps({"seconds": time.perf_counter() - start, "stats": result.stats}))
"""


def photo_like(seed: int, size: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = rng.uniform(0, 255, 3) + np.stack([xx * rng.uniform(-2, 2), yy * rng.uniform(-2, 2),
                                              (xx + yy) * rng.uniform(-1, 1)], -1)  # fmt: skip
    pixels = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def build_web(web: LocalWeb, n_images: int, per_page: int, size: int) -> int:
    web.add_bytes("/robots.txt", b"User-agent: *\nAllow: /\n", "text/plain")
    total = 0
    pages = []
    for p in range(0, n_images, per_page):
        imgs = []
        for i in range(p, min(p + per_page, n_images)):
            data = photo_like(i, size)
            total += len(data)
            web.add_bytes(f"/img/{i}.jpg", data, "image/jpeg")
            imgs.append(f'<img src="/img/{i}.jpg" alt="{("cat", "dog")[i % 2]} {i}">')
        web.add_html(f"/page/{p // per_page}.html", "".join(imgs))
        pages.append(f'<a href="/page/{p // per_page}.html">{p}</a>')
    web.add_html("/index.html", "".join(pages))
    return total


def run(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=580)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"crawl failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--per-page", type=int, default=100)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--extra", default="{}", help="extra kd3 settings as JSON (experiments)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis_server, LocalWeb() as web:
        nbytes = build_web(web, args.images, args.per_page, args.size)
        seed = web.url("/index.html")
        print(f"local web: {args.images} JPEG images ({args.size}x{args.size}, "
              f"{nbytes / 1e6:.1f} MB) on {-(-args.images // args.per_page)} pages")  # fmt: skip
        network = json.dumps(NETWORK)
        plain = run(PLAIN, seed, f"{tmp}/plain", json.dumps({**NETWORK, **KD3_FIXED}))
        plain_files = sum(1 for p in Path(tmp, "plain").rglob("*.jpg"))
        ours = run(KD3, seed, f"{tmp}/pool", redis_server.url, network, args.extra)
        stored = int(ours["stats"].get("images_stored", 0))
        plain_rate = plain_files / plain["seconds"]
        our_rate = stored / ours["seconds"]
        print(f"plain Scrapy ImagesPipeline: {plain_files} images in {plain['seconds']:.1f} s "
              f"= {plain_rate:.0f} images/s")  # fmt: skip
        print(f"kd3 crawler (validate, pool, Redis stats): {stored} images in "
              f"{ours['seconds']:.1f} s = {our_rate:.0f} images/s")  # fmt: skip
        print(f"ratio kd3 / plain: {our_rate / plain_rate:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
