"""Crawls that outlive one process: resume after an interruption (Scrapy's job directory), and
two processes sharing one crawl through Redis (scrapy-redis queue and duplicate filter); and a
crawl that outlives its Redis."""

from __future__ import annotations

import signal
import time

from crawler.localweb import Response
from crawler.stats import read_pool_stats, read_stats
from pool.store import Pool
from tests.crawler.crawler_testkit import (
    settings_args,
    settings_dict,
    smooth_image,
    start_crawl,
    write_job,
)
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


def test_interrupted_job_resumes_without_refetching_and_counts_in_the_pool(local_web, tmp_path):
    """The worker's protocol: `python -m crawler.run --job FILE`, no Redis, SIGINT -> 130, the
    same job again resumes; the stats file in the pool adds both runs up."""
    paths = slow_gallery(local_web, 30, delay=0.05)
    out = tmp_path / "pool"
    # Few requests in flight, so most of the queue is still on disk when the crawl is stopped.
    job = write_job(
        tmp_path / "job.json",
        classes=["cat"],
        out=str(out),
        crawl_id="resume",
        options={
            "sources": ["site"],
            "per_class": 0,
            "seeds": [local_web.url("/gallery.html")],
            "allow_networks": ["127.0.0.1/32"],
            "settings": settings_dict(
                "CONCURRENT_REQUESTS_PER_DOMAIN=2", "DOWNLOAD_DELAY=0.15", "CONCURRENT_REQUESTS=2"
            ),
        },
    )
    first = start_crawl("--job", str(job), env={"KD3_REDIS_URL": ""})

    def stored() -> int:
        return int(read_pool_stats(out, "resume").get("images_stored", 0))

    assert wait_for(lambda: stored() >= 5, 60, first), first.communicate()[1][-2000:]
    first.send_signal(signal.SIGINT)  # what Ctrl-C sends, and the worker to cancel
    stdout, stderr = first.communicate(timeout=60)
    assert first.returncode == 130, stderr[-2000:]
    stats = read_pool_stats(out, "resume")
    assert stats["finish_reason"] == "shutdown" and stats["status"] == "finished"
    before = {row["url"] for row in Pool.open(out).manifest().to_pylist()}
    assert 5 <= len(before) < 30
    assert stdout.strip().splitlines()[-1] == (
        f"crawl resume: {len(before)} images stored, 0 duplicates, 0 rejected -> {out}"
    )

    second = start_crawl("--job", str(job))
    stdout, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr[-2000:]
    after = {row["url"] for row in Pool.open(out).manifest().to_pylist()}
    assert after == {local_web.url(p) for p in paths}
    assert all(local_web.hits(p) == 1 for p in paths), [local_web.hits(p) for p in paths]
    stats = read_pool_stats(out, "resume")
    assert stats["images_stored"] == "30" and stats["finish_reason"] == "finished"
    assert stdout.strip().splitlines()[-1].startswith("crawl resume: 30 images stored")


def test_a_bad_job_file_is_one_line_and_exit_2(tmp_path):
    job = write_job(tmp_path / "job.json", classes=["cat"], out=str(tmp_path / "pool"),
                    options={"sources": ["site"], "seeds": ["gopher://x"]})  # fmt: skip
    done = start_crawl("--job", str(job))
    _, stderr = done.communicate(timeout=60)
    assert done.returncode == 2
    assert stderr.strip() == (
        f"crawl: error: {job}: options.seeds: 'gopher://x' is not an http(s) URL with a host"
    )


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
    assert read_pool_stats(out, "shared") == stats  # both processes wrote to the same pool


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
    assert read_pool_stats(out, "lost")["images_stored"] == "20"  # the pool's stats are whole
    assert len(stderr.split("could not write to Redis")) <= 3  # warned once, then once at close
    assert {row["url"] for row in Pool.open(out).manifest().to_pylist()} == {
        local_web.url(p) for p in paths
    }
