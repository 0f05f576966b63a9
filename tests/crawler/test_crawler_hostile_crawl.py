"""One crawl of every source against a hostile local web, then many checks of its outcome.

The crawl allows only 127.0.0.1: a redirect to 127.0.0.2 and a host name that the crawl's own
resolver maps to 127.0.0.3 must be refused before connecting (both servers must see nothing).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from crawler.localweb import LocalWeb, Response
from crawler.stats import read_pool_stats
from pool.store import Pool
from tests.crawler.crawler_testkit import (
    FIXTURES,
    animated_gif,
    png_declaring,
    settings_args,
    smooth_image,
    start_crawl,
    truncated_jpeg,
)
from workers.local_redis import RedisServer, redis_server_binary

CRAWL_ID = "hostile"
PER_CLASS = 20


class HostileWeb:
    """Routes imitating each source plus the hostile cases; remembers what it expects."""

    def __init__(self, web: LocalWeb, other: LocalWeb, evil: LocalWeb):
        self.web, self.other, self.evil = web, other, evil
        self.times: dict[str, list[float]] = {}
        self.build()

    def timed(self, name: str, responses: list[Response]):
        """A handler answering `responses` in turn (the last one repeats), logging times."""
        self.times[name] = []

        def handler(_request):
            self.times[name].append(time.monotonic())
            return responses[min(len(self.times[name]), len(responses)) - 1]

        return handler

    def image(self, path: str, data: bytes, content_type: str = "image/jpeg", **headers):
        self.web.add_bytes(path, data, content_type, **headers)
        return self.web.url(path)

    def build(self) -> None:
        web, url = self.web, self.web.url
        web.add_bytes("/robots.txt", b"User-agent: *\nDisallow: /private/\n", "text/plain")

        # -- Wikimedia Commons API: 2 pages of cats, licence and author as Commons sends them.
        def commons(request):
            query = request.query.get("gsrsearch", [""])[0]
            if "cat" not in query or request.query.get("generator") != ["search"]:
                return Response(200, json.dumps({"batchcomplete": True}).encode(),
                                {"Content-Type": "application/json"})  # fmt: skip
            offset = int(request.query.get("gsroffset", ["0"])[0])
            pages = [
                {
                    "pageid": 100 + i,
                    "ns": 6,
                    "title": f"File:Cat {i}.jpg",
                    "imageinfo": [
                        {
                            "thumburl": url(f"/wm/cat{i}.jpg"),
                            "url": url(f"/wm/orig/cat{i}.jpg"),
                            "descriptionurl": url(f"/wiki/File:Cat_{i}.jpg"),
                            "mime": "image/jpeg",
                            "extmetadata": {
                                "LicenseShortName": {
                                    "value": "CC BY-SA 4.0",
                                    "source": "commons-desc-page",
                                },
                                "LicenseUrl": {
                                    "value": "https://creativecommons.org/licenses/by-sa/4.0"
                                },
                                "Artist": {
                                    "value": f'<a href="//commons.wikimedia.org/wiki/User:P{i}">Photographer {i}</a>'
                                },
                            },
                        }
                    ],
                }  # fmt: skip
                for i in ((0, 1) if offset == 0 else (2,))
            ]
            body = {"batchcomplete": True, "query": {"pages": pages}}
            if offset == 0:
                body["continue"] = {"gsroffset": 2, "continue": "gsroffset||"}
            return Response(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

        web.route("/w/api.php", commons)
        for i in range(3):
            self.image(f"/wm/cat{i}.jpg", smooth_image(100 + i))

        # -- Openverse: 25 dogs (the class target of 20 must stop the class at 20).
        def openverse(request):
            query = request.query.get("q", [""])[0]
            results = (
                [
                    {
                        "id": f"d{i}",
                        "title": f"Dog {i}",
                        "url": url(f"/ov/dog{i}.jpg"),
                        "foreign_landing_url": url(f"/ov/page{i}"),
                        "creator": f"Walker {i}",
                        "license": "by",
                        "license_version": "2.0",
                        "license_url": "https://creativecommons.org/licenses/by/2.0/",
                        "provider": "flickr",
                        "source": "flickr",
                    }  # fmt: skip
                    for i in range(25)
                ]
                if "dog" in query
                else []
            )
            body = {"result_count": len(results), "page_count": 1, "page_size": 20, "page": 1,
                    "results": results}  # fmt: skip
            return Response(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

        web.route("/v1/images/", openverse)
        for i in range(25):
            self.image(f"/ov/dog{i}.jpg", smooth_image(200 + i))

        # -- Flickr REST: birds, only with the right API key.
        def flickr(request):
            if request.query.get("api_key") != ["test-key"]:
                body = {"stat": "fail", "code": 100, "message": "Invalid API Key"}
            elif "bird" in request.query.get("text", [""])[0]:
                photos = [{"id": f"5{i}", "owner": "1@N0", "secret": "s", "server": "1",
                           "title": f"Bird {i}", "license": "4", "ownername": f"Birder {i}",
                           "url_z": url(f"/fl/bird{i}.jpg")} for i in range(2)]  # fmt: skip
                body = {"photos": {"page": 1, "pages": 1, "perpage": 100, "total": 2,
                                   "photo": photos}, "stat": "ok"}  # fmt: skip
            else:
                body = {"photos": {"page": 1, "pages": 0, "perpage": 100, "total": 0,
                                   "photo": []}, "stat": "ok"}  # fmt: skip
            return Response(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

        web.route("/services/rest/", flickr)
        for i in range(2):
            self.image(f"/fl/bird{i}.jpg", smooth_image(300 + i))

        # -- Bing: the saved results page, its image URLs pointed at the local web.
        saved = (FIXTURES / "bing_results.html").read_text()
        local_page = saved.replace("https://upload.example.org", url("").rstrip("/"))
        web.route("/images/search", lambda r: Response(
            200, (local_page if r.query.get("first") == ["1"] and "cat" in r.query["q"][0]
                  else (FIXTURES / "bing_no_results.html").read_text()).encode(),
            {"Content-Type": "text/html; charset=utf-8"}))  # fmt: skip
        self.image("/cats/tabby-1.jpg", smooth_image(400))
        self.image("/cats/kitten-2.png", smooth_image(401, fmt="PNG"), "image/png")
        self.image("/cats/grey%20cat.webp", smooth_image(402, fmt="WEBP"), "image/webp")

        # -- The generic site: every hostile case as an <img alt="cat ..."> on one page.
        same = smooth_image(500)
        cases = {
            "good": self.image("/img/good-cat.jpg", smooth_image(501)),
            "same1": self.image("/img/same-a.jpg", same),
            "same2": self.image("/img/same-b.jpg", same),
            "same3": self.image("/other/same-c.jpg", same),
            "missing": url("/img/missing.jpg"),  # 404
            "animated": self.image("/img/anim.gif", animated_gif(502), "image/gif"),
            "truncated": self.image("/img/truncated.jpg", truncated_jpeg(503)),
            "html_as_jpeg": self.image("/img/page.jpg", b"<html><body>not an image</body></html>"),
            "bomb": self.image("/img/bomb.png", png_declaring(30000, 30000), "image/png"),
            "tiny": self.image(
                "/img/tiny.png", smooth_image(504, size=(4, 4), fmt="PNG"), "image/png"
            ),
            "huge_file": self.image(
                "/img/huge.bmp", smooth_image(505, size=(400, 400), fmt="BMP"), "image/bmp"
            ),
            "robots": self.image("/private/cat.jpg", smooth_image(506)),
            "noai": self.image("/img/noai.jpg", smooth_image(507), **{"X-Robots-Tag": "noai"}),
            "noimageai_ua": self.image(
                "/img/noimageai.jpg",
                smooth_image(508),
                **{"X-Robots-Tag": "kd3bot: noimageai, noarchive"},
            ),
            "loop": url("/loop/a"),
            "chain": url("/chain/0"),
            "to_other": url("/redirect/other"),
            "evil_host": f"http://evil.test:{self.evil.port}/cat.jpg",
            "mapped_ok": f"http://images.test:{web.port}/img/mapped.jpg",
            "rate_limited": url("/img/rate-limited.jpg"),
            "flaky": url("/img/flaky.jpg"),
            "slow": url("/img/slow.jpg"),
            "too_slow": url("/img/too-slow.jpg"),
        }
        self.image("/img/mapped.jpg", smooth_image(509))
        ok = Response(200, smooth_image(510), {"Content-Type": "image/jpeg"})
        web.route("/img/rate-limited.jpg", self.timed("rate_limited", [
            Response(429, b"slow down", {"Retry-After": "1"}), ok]))  # fmt: skip
        flaky_ok = Response(200, smooth_image(511), {"Content-Type": "image/jpeg"})
        web.route("/img/flaky.jpg", self.timed("flaky", [Response(500, b"oops"), flaky_ok]))

        def slow(delay, seed):
            def handler(_request):
                time.sleep(delay)
                return Response(200, smooth_image(seed), {"Content-Type": "image/jpeg"})

            return handler

        web.route("/img/slow.jpg", slow(0.8, 512))
        web.route("/img/too-slow.jpg", slow(3.5, 513))
        web.route("/loop/a", Response(302, b"", {"Location": "/loop/b"}))
        web.route("/loop/b", Response(302, b"", {"Location": "/loop/a"}))
        for n in range(12):
            web.route(f"/chain/{n}", Response(302, b"", {"Location": f"/chain/{n + 1}"}))
        web.route("/redirect/other", Response(302, b"", {"Location": self.other.url("/cat.jpg")}))
        self.other.add_bytes("/cat.jpg", smooth_image(514), "image/jpeg")
        self.evil.add_bytes("/cat.jpg", smooth_image(515), "image/jpeg")
        self.cases = cases

        imgs = "\n".join(f'<img src="{u}" alt="cat {name}">' for name, u in cases.items())
        imgs += '\n<img src="data:image/png;base64,iVBORw0KGgo=" alt="cat inline">'
        imgs += '\n<img src="file:///etc/passwd" alt="cat file">'
        imgs += '\n<img src="ftp://127.0.0.1/cat.jpg" alt="cat ftp">'
        imgs += f'\n<img src="{url("/img/category.jpg")}" alt="a category page">'
        web.add_html("/site/index.html", f"""<html><body>{imgs}
            <figure><img src="/img/fig.jpg"><figcaption>Our cat at home</figcaption></figure>
            <a href="/site/page2.html">more</a> <a href="/site/optout.html">opt out</a>
            <a href="http://elsewhere.invalid/page.html">offsite</a></body></html>""")  # fmt: skip
        self.image("/img/fig.jpg", smooth_image(516))
        self.image("/img/category.jpg", smooth_image(517))
        web.add_html("/site/page2.html", '<img src="/img/tabby_cat-2.jpg" alt="">')
        self.image("/img/tabby_cat-2.jpg", smooth_image(518))
        web.add_html("/site/optout.html", '<html><head><meta name="robots" content="noai">'
                     '</head><body><img src="/img/optout-cat.jpg" alt="cat"></body></html>')  # fmt: skip
        self.image("/img/optout-cat.jpg", smooth_image(519))
        # A sitemap leads to a page with a sparrow (a keyword of "bird").
        web.add_bytes("/sitemap.xml", f"""<?xml version="1.0" encoding="UTF-8"?>
            <urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
            <url><loc>{url("/site/from-sitemap.html")}</loc></url></urlset>""".encode(),
                      "application/xml")  # fmt: skip
        web.add_html("/site/from-sitemap.html", '<img src="/img/s.jpg" alt="A sparrow">')
        self.image("/img/s.jpg", smooth_image(520))


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    with (
        RedisServer(data_dir=tmp / "redis") as redis_server,
        LocalWeb() as web,
        LocalWeb(host="127.0.0.2") as other,
        LocalWeb(host="127.0.0.3") as evil,
    ):
        site = HostileWeb(web, other, evil)
        out = tmp / "pool"
        process = start_crawl(
            "--classes", "cat,dog,bird", "--out", str(out), "--per-class", str(PER_CLASS),
            "--keywords", "bird=sparrow", "--redis", redis_server.url, "--crawl-id", CRAWL_ID,
            "--sources", "wikimedia,openverse,flickr,bing,site",
            "--source-url", f"wikimedia={web.url('/w/api.php')}",
            "--source-url", f"openverse={web.url('/v1/images/')}",
            "--source-url", f"flickr={web.url('/services/rest/')}",
            "--source-url", f"bing={web.url('/images/search')}",
            "--seed", web.url("/site/index.html"), "--seed", web.url("/sitemap.xml"),
            "--allow-network", "127.0.0.1/32",
            "--host", "evil.test=127.0.0.3", "--host", "images.test=127.0.0.1",
            # stats flushed every 0.1 s (1 s by default): the crawl's first spider may close
            # within a second, and the watch below must see counts from before that
            *settings_args("DOWNLOAD_TIMEOUT=2", "RETRY_TIMES=1", "DOWNLOAD_MAXSIZE=200000",
                           "KD3_RETRY_BACKOFF_BASE=0.3", "KD3_STATS_FLUSH_SECONDS=0.1"),
            env={"FLICKR_API_KEY": "test-key"},
        )  # fmt: skip
        # Watch the stats with plain redis-cli while the crawl runs.
        cli = [str(redis_server_binary().with_name("redis-cli")), "-p", str(redis_server.port)]
        snapshots = []
        while process.poll() is None:
            out_cli = subprocess.run([*cli, "HGETALL", f"kd3:crawl:{CRAWL_ID}:stats"],
                                     capture_output=True, text=True, timeout=10).stdout.split()  # fmt: skip
            snapshots.append(dict(zip(out_cli[::2], out_cli[1::2], strict=False)))
            time.sleep(0.02)  # the first spider's run, the window watched for, is under 1 s
        stdout, stderr = process.communicate(timeout=60)
        stats = {k.decode(): v.decode() for k, v in redis_server.client().hgetall(
            f"kd3:crawl:{CRAWL_ID}:stats").items()}  # fmt: skip
        yield {
            "rc": process.returncode, "stdout": stdout, "stderr": stderr, "stats": stats,
            "snapshots": snapshots, "pool": Pool.open(out), "site": site, "web": web,
            "other": other, "evil": evil,
        }  # fmt: skip


def count(stats, name) -> int:
    return int(stats.get(name, 0))


def rows_by_url(pool: Pool) -> dict[str, dict]:
    return {row["url"]: row for row in pool.manifest().to_pylist()}


def test_crawl_finishes_cleanly(crawl):
    assert crawl["rc"] == 0, crawl["stderr"][-3000:]
    assert "Traceback" not in crawl["stderr"], crawl["stderr"][-3000:]
    stats = crawl["stats"]
    assert stats["status"] == "finished" and stats["finish_reason"] == "finished"
    assert stats["start_time"] <= stats["end_time"]
    assert count(stats, "processes_running") == 0


def test_the_pool_holds_the_same_stats_as_redis(crawl):
    assert read_pool_stats(crawl["pool"].root, CRAWL_ID) == crawl["stats"]


def test_stats_were_readable_with_redis_cli_while_running(crawl):
    running = [s for s in crawl["snapshots"] if s.get("status") == "running"]
    assert running, "never saw the crawl running"
    assert any(int(s.get("requests", 0)) > 0 and "end_time" not in s for s in running)


def test_sources_store_images_with_licence_author_keyword_and_source(crawl):
    rows = rows_by_url(crawl["pool"])
    web = crawl["web"]
    wm = rows[web.url("/wm/cat0.jpg")]
    assert (wm["source"], wm["class_name"], wm["keyword"]) == ("wikimedia", "cat", "cat")
    assert wm["license"] == "CC BY-SA 4.0" and wm["author"] == "Photographer 0"
    assert wm["page_url"] == web.url("/wiki/File:Cat_0.jpg")
    assert web.url("/wm/cat2.jpg") in rows  # from the continued (second) API page
    bird = rows[web.url("/fl/bird0.jpg")]
    assert (bird["source"], bird["class_name"], bird["license"], bird["author"]) == (
        "flickr", "bird", "CC BY 2.0", "Birder 0")  # fmt: skip
    assert rows[web.url("/cats/tabby-1.jpg")]["source"] == "bing"
    assert rows[web.url("/cats/grey%20cat.webp")]["format"] == "WEBP"
    sparrow = rows[web.url("/img/s.jpg")]
    assert (sparrow["source"], sparrow["class_name"], sparrow["keyword"]) == (
        "site",
        "bird",
        "sparrow",
    )
    assert rows[web.url("/img/fig.jpg")]["class_name"] == "cat"  # matched by its caption
    assert rows[web.url("/img/tabby_cat-2.jpg")]["class_name"] == "cat"  # by file name, page 2
    dogs = [r for r in rows.values() if r["class_name"] == "dog"]
    assert all(r["source"] == "openverse" and r["license"] == "CC BY 2.0" for r in dogs)


def test_class_target_stops_the_class(crawl):
    stats, pool = crawl["stats"], crawl["pool"]
    dogs = pool.manifest().filter(pc.equal(pool.manifest()["class_name"], "dog"))
    assert dogs.num_rows == PER_CLASS == count(stats, "class:dog:stored")
    assert count(stats, "skipped:class_target_reached") >= 1


def test_hostile_cases_end_in_stats_with_their_reason(crawl):
    stats, web = crawl["stats"], crawl["web"]
    expected = {
        "rejected:http_404": 1,
        "rejected:truncated_or_corrupt": 1,
        "rejected:not_an_image": 1,
        "rejected:too_many_pixels": 1,
        "rejected:too_small": 1,
        "rejected:too_large": 1,
        "rejected:robots_txt": 1,
        "rejected:x_robots_tag": 2,
        "rejected:redirect_loop": 1,
        "rejected:redirect_limit": 1,
        "rejected:address_refused": 2,
        "rejected:scheme_not_allowed": 3,
        "rejected:timeout": 1,
        "rejected:meta_robots_noai": 1,
    }
    assert {k: count(stats, k) for k in expected} == expected
    assert count(stats, "duplicates") == 2
    assert count(stats, "skipped:offsite_link") == 1
    assert count(stats, "responses:429") == 1 and count(stats, "responses:500") == 1
    assert web.hits("/private/cat.jpg") == 0  # robots.txt obeyed before fetching
    assert web.hits("/img/category.jpg") == 0  # "category" is not the keyword "cat"
    assert web.hits("/img/optout-cat.jpg") == 0


def test_refused_addresses_got_no_packet(crawl):
    assert crawl["other"].requests == [] and crawl["evil"].requests == []
    rows = rows_by_url(crawl["pool"])
    assert f"http://images.test:{crawl['web'].port}/img/mapped.jpg" in rows  # allowed mapping


def test_retries_wait_for_retry_after_and_backoff(crawl):
    times = crawl["site"].times
    assert (
        len(times["rate_limited"]) == 2
        and times["rate_limited"][1] - times["rate_limited"][0] >= 0.95
    )
    assert len(times["flaky"]) == 2 and times["flaky"][1] - times["flaky"][0] >= 0.3
    rows = rows_by_url(crawl["pool"])
    web = crawl["web"]
    for path in ("/img/rate-limited.jpg", "/img/flaky.jpg", "/img/slow.jpg", "/img/anim.gif"):
        assert web.url(path) in rows, path
    assert rows[web.url("/img/anim.gif")]["format"] == "GIF"


def test_same_image_under_three_urls_is_stored_once_with_every_find(crawl):
    pool, web = crawl["pool"], crawl["web"]
    urls = {web.url(p) for p in ("/img/same-a.jpg", "/img/same-b.jpg", "/other/same-c.jpg")}
    stored = [r for r in pool.manifest().to_pylist() if r["url"] in urls]
    assert len(stored) == 1
    finds = pool.finds().to_pylist()
    assert {f["url"] for f in finds if f["sha256"] == stored[0]["sha256"]} == urls - {
        stored[0]["url"]
    }


def test_pool_holds_exactly_the_stored_images(crawl):
    pool, stats = crawl["pool"], crawl["stats"]
    table = pool.manifest()
    files = {
        str(p.relative_to(pool.root)) for p in (pool.root / "images").rglob("*") if p.is_file()
    }
    assert files == set(table.column("path").to_pylist())  # no rejected response left a file
    assert count(stats, "images_stored") == table.num_rows
    per_class = sum(count(stats, f"class:{c}:stored") for c in ("cat", "dog", "bird"))
    per_source = sum(count(stats, f"source:{s}:stored")
                     for s in ("wikimedia", "openverse", "flickr", "bing", "site"))  # fmt: skip
    assert per_class == per_source == table.num_rows
    leftovers = [p for p in Path(pool.root).rglob(".tmp*")] + list(
        Path(pool.root).rglob(".manifest-*")
    )
    assert leftovers == []
