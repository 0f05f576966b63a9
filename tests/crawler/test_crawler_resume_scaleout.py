"""Crawls that outlive one process: resume after an interruption (Scrapy's job directory), and
two processes sharing one crawl through Redis (scrapy-redis queue and duplicate filter); and a
crawl that outlives its Redis."""

from __future__ import annotations

import signal
import time

from crawler.localweb import Response
from crawler.stats import read_stats
from pool.store import Pool
from tests.crawler.crawler_testkit import settings_args, smooth_image, start_crawl
from workers.local_redis import RedisServer


def slow_gallery(web, n: int, delay: float) -> list[str]:
    """/gallery.html with n cat images, each answered after `delay` seconds."""
    paths = [f"/img/cat-{i}.jpg" for i in range(n)]
    for i, path in enumerate(paths):
        body = smooth_image(1000 + i)

        def handler(_request, body=body):
            time.sleep(delay)
            return Response(200, body, {"Content-Type": "image/jpeg"})

        web.route(path, handler)
    web.add_html(
        "/gallery.html", "".join(f'<img src="{p}" alt="cat {i}">' for i, p in enumerate(paths))
    )
    return paths


def crawl_args(web, redis_server, out, crawl_id, *extra_settings):
    return [
        "--classes", "cat", "--out", str(out), "--sources", "site", "--per-class", "0",
        "--seed", web.url("/gallery.html"), "--redis", redis_server.url, "--crawl-id", crawl_id,
        "--allow-network", "127.0.0.1/32",
        *settings_args("CONCURRENT_REQUESTS_PER_DOMAIN=2", *extra_settings),
    ]  # fmt: skip


def wait_for(predicate, timeout: float, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def test_interrupted_crawl_resumes_without_refetching(local_web, redis_server, tmp_path):
    paths = slow_gallery(local_web, 30, delay=0.05)
    out = tmp_path / "pool"
    # Few requests in flight, so most of the queue is still on disk when the crawl is stopped.
    args = crawl_args(
        local_web, redis_server, out, "resume", "DOWNLOAD_DELAY=0.15", "CONCURRENT_REQUESTS=2"
    )
    first = start_crawl(*args)

    def stored() -> int:
        return int(read_stats(redis_server.client(), "resume").get("images_stored", 0))

    assert wait_for(lambda: stored() >= 5, 60, first), first.communicate()[1][-2000:]
    first.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130, stderr[-2000:]
    assert "run again with --crawl-id resume" in stderr
    stats = read_stats(redis_server.client(), "resume")
    assert stats["finish_reason"] == "shutdown"
    before = {row["url"] for row in Pool.open(out).manifest().to_pylist()}
    assert 5 <= len(before) < 30

    second = start_crawl(*args)
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr[-2000:]
    after = {row["url"] for row in Pool.open(out).manifest().to_pylist()}
    assert after == {local_web.url(p) for p in paths}
    assert all(local_web.hits(p) == 1 for p in paths), [local_web.hits(p) for p in paths]
    assert int(read_stats(redis_server.client(), "resume")["images_stored"]) == 30


def test_two_processes_share_one_crawl(local_web, redis_server, tmp_path):
    paths = slow_gallery(local_web, 60, delay=0.05)
    out = tmp_path / "pool"
    workers = [
        start_crawl(
            *crawl_args(
                local_web,
                redis_server,
                out,
                "shared",
                "KD3_IDLE_CLOSE_SECONDS=1",
                "DOWNLOAD_DELAY=0.05",
                f'DEFAULT_REQUEST_HEADERS={{"X-Worker": "{name}"}}',
            ),
            "--shared",
        )  # fmt: skip
        for name in ("a", "b")
    ]
    for worker in workers:  # both finish on their own once the shared queue stays empty
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr[-2000:]
    assert all(local_web.hits(p) == 1 for p in paths), [local_web.hits(p) for p in paths]
    assert local_web.hits("/gallery.html") == 1
    by_worker = {"a": 0, "b": 0}
    for request in local_web.requests:
        if request.path.startswith("/img/"):
            by_worker[request.headers["X-Worker"]] += 1
    assert by_worker["a"] > 0 and by_worker["b"] > 0, by_worker
    assert len(Pool.open(out).manifest()) == 60
    stats = read_stats(redis_server.client(), "shared")
    assert stats["images_stored"] == "60" and stats["processes_running"] == "0"
    assert stats["status"] == "finished"


def test_redis_lost_mid_crawl_ends_in_one_line_with_the_images_kept(local_web, tmp_path):
    paths = slow_gallery(local_web, 20, delay=0.2)
    out = tmp_path / "pool"
    with RedisServer(data_dir=tmp_path / "redis") as server:
        process = start_crawl(*crawl_args(local_web, server, out, "lost"))
        sent = lambda: int(read_stats(server.client(), "lost").get("requests", 0))  # noqa: E731
        assert wait_for(lambda: sent() >= 4, 60, process), process.communicate()[1][-2000:]
        server.stop()  # Redis goes away; the crawl goes on without it
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith(f"crawl: error: lost Redis at {server.url} during crawl lost")
    )
    assert len(stderr.split("could not write to Redis")) <= 3  # warned once, then once at close
    assert {row["url"] for row in Pool.open(out).manifest().to_pylist()} == {
        local_web.url(p) for p in paths
    }
