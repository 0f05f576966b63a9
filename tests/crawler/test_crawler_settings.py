"""Crawl settings are data, not power: only named, typed, bounded settings pass `-s` or a spec;
the rest (telnet, pool path, middlewares, ...) is refused in one line before anything runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from crawler.cli import _setting
from crawler.errors import CrawlError
from crawler.run import build_settings
from pool.store import Pool
from tests.crawler.crawler_testkit import REPO, settings_args, smooth_image

REFUSED = [
    ('TELNETCONSOLE_ENABLED=true', "TELNETCONSOLE_ENABLED: not an allowed crawl setting"),
    ("KD3_POOL=/tmp/another-pool", "KD3_POOL: set it with --out, not as a crawl setting"),
    ('DOWNLOADER_MIDDLEWARES={"crawler.middlewares.AddressPolicyMiddleware": null}',
     "DOWNLOADER_MIDDLEWARES: not an allowed crawl setting"),
    ('KD3_ALLOWED_NETWORKS=["0.0.0.0/0"]', "KD3_ALLOWED_NETWORKS: set it with --allow-network"),
    ("DOWNLOAD_DELAY=fast", "DOWNLOAD_DELAY: Input should be a valid number"),
    ("DOWNLOAD_MAXSIZE=0", "DOWNLOAD_MAXSIZE: Input should be greater than or equal to 1"),
    ("CONCURRENT_REQUESTS=100000", "CONCURRENT_REQUESTS: Input should be less than or equal"),
]  # fmt: skip


def kd3(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(("setting", "message"), REFUSED)
def test_kd3_crawl_refuses_a_setting_in_one_line_before_crawling(
    setting, message, local_web, redis_server, tmp_path
):
    out = tmp_path / "pool"
    run = kd3("crawl", "--classes", "cat", "--out", str(out), "--sources", "site",
              "--seed", local_web.url("/"), "--redis", redis_server.url,
              "--allow-network", "127.0.0.1/32", "-s", setting)  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.startswith(f"kd3 crawl: error: {message}"), run.stderr[-2000:]
    assert len(run.stderr.strip().splitlines()) == 1
    assert not out.exists() and not local_web.requests  # nothing ran


def test_kd3_crawl_refuses_a_bad_network_in_one_line(local_web, redis_server, tmp_path):
    run = kd3("crawl", "--classes", "cat", "--out", str(tmp_path / "pool"), "--sources", "site",
              "--seed", local_web.url("/"), "--redis", redis_server.url,
              "--allow-network", "127.0.0.1/32", "--allow-network", "localhost")  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.startswith("kd3 crawl: error: --allow-network localhost: ")
    assert len(run.stderr.strip().splitlines()) == 1 and not local_web.requests


@pytest.mark.parametrize(("setting", "message"), REFUSED)
def test_build_settings_refuses_them_too(setting, message, tmp_path):
    name, value = _setting(setting)  # as `-s` parses it
    with pytest.raises(CrawlError) as err:
        build_settings(tmp_path, "c", "redis://127.0.0.1:1", 10, overrides={name: value})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_build_settings_types_allowed_settings(tmp_path):
    settings = build_settings(tmp_path, "c", "redis://127.0.0.1:1", 10,
                              overrides={"DOWNLOAD_DELAY": "0.25", "KD3_MIN_SIDE": 64})  # fmt: skip
    assert settings["DOWNLOAD_DELAY"] == 0.25 and settings.getint("KD3_MIN_SIDE") == 64
    assert settings["KD3_POOL"] == str(tmp_path) and not settings.getbool("TELNETCONSOLE_ENABLED")


def test_allowed_settings_take_effect_in_a_real_crawl(local_web, redis_server, tmp_path):
    small = [f"/img/small-{i}.jpg" for i in range(2)]
    large = [f"/img/large-{i}.jpg" for i in range(2)]
    for i, path in enumerate(small + large):
        local_web.add_bytes(path, smooth_image(i, size=(48, 48) if i < 2 else (80, 80)),
                            "image/jpeg")  # fmt: skip
    local_web.add_html(
        "/gallery.html", "".join(f'<img src="{p}" alt="cat">' for p in small + large)
    )
    out = tmp_path / "pool"
    run = kd3("crawl", "--classes", "cat", "--out", str(out), "--sources", "site",
              "--per-class", "0", "--seed", local_web.url("/gallery.html"),
              "--redis", redis_server.url, "--crawl-id", "allowed",
              "--allow-network", "127.0.0.1/32",
              *settings_args("KD3_MIN_SIDE=64", "USER_AGENT=kd3-settings-test/1.0"))  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert {row["url"] for row in Pool.open(out).manifest().to_pylist()} == {
        local_web.url(p) for p in large
    }
    agents = {request.headers.get("User-Agent") for request in local_web.requests}
    assert agents == {"kd3-settings-test/1.0"}
