"""Images/s of a 5,000-image crawl of the local web: kd3's crawler (validation, pool storage,
Redis stats, address policy on) side by side with a plain Scrapy ImagesPipeline crawl of the same
pages, in the same run. Each crawl runs in its own process (a Twisted reactor starts once per
process); the local web and Redis run in this one. Nothing leaves 127.0.0.1.

    nice -n 10 .venv/bin/python bench/crawl_local.py [--images 5000] [--per-page 100]

With --pool-sizes 1000,10000,100000 the kd3 crawl runs once per size into a pool that already
holds that many images, and prints the cost per crawled image for each: it should not grow with
the pool (the crawler reads the pool once when it opens; what Pool.add costs is the pool's part).

    nice -n 10 .venv/bin/python bench/crawl_local.py --no-plain --pool-sizes 1000,10000,100000
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
from crawler.options import CrawlJob
from crawler.run import crawl
seed, out, redis_url, network, extra = sys.argv[1:6]
settings = {**json.loads(network), "KD3_SITE_DEPTH": 1, "KD3_MIN_SIDE": 8, **json.loads(extra)}
job = CrawlJob(classes=["cat", "dog"], out=out, redis_url=redis_url or None, crawl_id="bench",
               options={"sources": ["site"], "per_class": 0, "seeds": [seed],
                        "allow_networks": ["127.0.0.1/32"], "settings": settings})
start = time.perf_counter()
result = crawl(job)
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


def prefill(out: Path, n: int) -> None:
    """A pool of classes cat, dog already holding `n` small distinct images (not timed)."""
    from pool.classes import ClassList
    from pool.images import ImageInfo
    from pool.store import NewImage, Pool, sha256_hex

    pool = Pool.create(out, ClassList.from_names(["cat", "dog"]))
    rng = np.random.default_rng(12345)
    info = ImageInfo(width=8, height=8, format="PNG", frames=1)
    for start in range(0, n, 5000):
        batch = []
        for i in range(start, min(start + 5000, n)):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
            data = buf.getvalue()
            batch.append(NewImage(data=data, url=f"prefill:{i}", source="prefill",
                                  class_name=("cat", "dog")[i % 2], info=info,
                                  sha256=sha256_hex(data)))  # fmt: skip
        pool.add(batch)


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
    parser.add_argument("--pool-sizes", default="0", metavar="N,N",
                        help="images already in the pool before each kd3 crawl (default: 0)")  # fmt: skip
    parser.add_argument("--no-plain", action="store_true", help="skip the plain Scrapy crawl")
    parser.add_argument("--no-redis", action="store_true", help="kd3 stats in the pool only")
    args = parser.parse_args()
    sizes = [int(n) for n in args.pool_sizes.split(",")]

    with tempfile.TemporaryDirectory() as tmp, RedisServer() as redis_server, LocalWeb() as web:
        nbytes = build_web(web, args.images, args.per_page, args.size)
        seed = web.url("/index.html")
        print(f"local web: {args.images} JPEG images ({args.size}x{args.size}, "
              f"{nbytes / 1e6:.1f} MB) on {-(-args.images // args.per_page)} pages")  # fmt: skip
        network = json.dumps(NETWORK)
        plain_rate = None
        if not args.no_plain:
            plain = run(PLAIN, seed, f"{tmp}/plain", json.dumps({**NETWORK, **KD3_FIXED}))
            plain_files = sum(1 for p in Path(tmp, "plain").rglob("*.jpg"))
            plain_rate = plain_files / plain["seconds"]
            print(f"plain Scrapy ImagesPipeline: {plain_files} images in "
                  f"{plain['seconds']:.1f} s = {plain_rate:.0f} images/s")  # fmt: skip
        redis_url = "" if args.no_redis else redis_server.url
        rates = {}
        for n in sizes:
            out = Path(tmp, f"pool-{n}")
            prefill(out, n)
            ours = run(KD3, seed, str(out), redis_url, network, args.extra)
            stored = int(ours["stats"].get("images_stored", 0))
            rates[n] = stored / ours["seconds"]
            print(f"kd3 crawler (validate, pool, {'pool' if args.no_redis else 'Redis'} stats), "
                  f"pool of {n:,} before: {stored} images in {ours['seconds']:.1f} s = "
                  f"{rates[n]:.0f} images/s ({1000 / rates[n]:.2f} ms per image)")  # fmt: skip
        if plain_rate:
            print(f"ratio kd3 / plain: {rates[sizes[0]] / plain_rate:.2f} (target >= 0.8)")
        if len(sizes) > 1:
            base = rates[sizes[0]]
            print("cost per image relative to the first pool size: " + ", ".join(
                f"{n:,}: {base / rate:.2f}x" for n, rate in rates.items()))  # fmt: skip


if __name__ == "__main__":
    main()
