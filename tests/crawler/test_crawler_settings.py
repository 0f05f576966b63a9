"""Crawl settings are data, not power: only named, typed, bounded settings pass `-s` or a spec;
the rest (telnet, pool path, middlewares, ...) is refused in one line before anything runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from common.options import OptionsError, parse
from crawler.errors import SettingError
from crawler.options import CrawlOptions
from crawler.run import build_settings
from crawler.stats import read_pool_stats
from pool.store import Pool
from tests.crawler.crawler_testkit import REPO, settings_args, smooth_image
from workers.cli import main as kd3_main

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


def as_set_flag(setting: str) -> tuple[str, object]:
    """NAME=VALUE as `-s` reads it: a JSON value, else the text."""
    name, _, value = setting.partition("=")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def kd3(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KD3_REDIS_URL"}
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(("setting", "message"), REFUSED)
def test_kd3_crawl_refuses_a_setting_in_one_line_before_crawling(
    setting, message, local_web, tmp_path, capsys
):
    out = tmp_path / "pool"
    code = kd3_main(["crawl", "--classes", "cat", "--out", str(out), "--sources", "site",
                     "--seed", local_web.url("/"), "--allow-network", "127.0.0.1/32",
                     "-s", setting])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"kd3 crawl: error: bad option: --set: {message}"), err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not local_web.requests  # nothing ran


def test_kd3_crawl_refuses_a_bad_network_in_one_line(local_web, tmp_path, capsys):
    code = kd3_main(["crawl", "--classes", "cat", "--out", str(tmp_path / "pool"),
                     "--sources", "site", "--seed", local_web.url("/"),
                     "--allow-network", "127.0.0.1/32", "--allow-network", "localhost"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("kd3 crawl: error: bad option: --allow-network: localhost: ")
    assert len(err.strip().splitlines()) == 1 and not local_web.requests


@pytest.mark.parametrize(("setting", "message"), REFUSED)
def test_the_options_model_and_build_settings_refuse_them_too(setting, message, tmp_path):
    name, value = as_set_flag(setting)
    with pytest.raises(OptionsError) as err:  # a config's crawl.settings or a job file
        parse(CrawlOptions, {"settings": {name: value}}, "job.json", flags=False)
    assert str(err.value).startswith(f"job.json: settings: {message}")
    assert "\n" not in str(err.value)
    unchecked = CrawlOptions.model_construct(settings={name: value})  # bypassing the model
    with pytest.raises(SettingError) as err:
        build_settings(tmp_path, "c", None, unchecked)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_build_settings_types_allowed_settings(tmp_path):
    options = CrawlOptions(settings={"DOWNLOAD_DELAY": "0.25", "KD3_MIN_SIDE": 64}, per_class=7)
    settings = build_settings(tmp_path, "c", None, options)
    assert settings["DOWNLOAD_DELAY"] == 0.25 and settings.getint("KD3_MIN_SIDE") == 64
    assert settings["KD3_POOL"] == str(tmp_path) and not settings.getbool("TELNETCONSOLE_ENABLED")
    assert settings.getint("KD3_PER_CLASS") == 7 and settings["KD3_REDIS_URL"] is None
    assert settings["STATS_CLASS"] == "crawler.stats.CrawlStatsCollector"


def test_allowed_settings_take_effect_in_a_crawl_without_redis(local_web, tmp_path):
    """`kd3 crawl` needs no Redis: it says where the stats go, and they land in the pool."""
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
              "--crawl-id", "allowed", "--allow-network", "127.0.0.1/32",
              *settings_args("KD3_MIN_SIDE=64", "USER_AGENT=kd3-settings-test/1.0"))  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"crawl allowed: no --redis: stats in {out}/crawls/allowed/stats.json" in run.stderr
    assert run.stdout.strip().splitlines()[-1] == (
        f"crawl allowed: 2 images stored, 0 duplicates, 2 rejected -> {out}"
    )
    assert {row["url"] for row in Pool.open(out).manifest().to_pylist()} == {
        local_web.url(p) for p in large
    }
    stats = read_pool_stats(out, "allowed")
    assert stats["images_stored"] == "2" and stats["rejected:too_small"] == "2"
    assert stats["status"] == "finished"
    agents = {request.headers.get("User-Agent") for request in local_web.requests}
    assert agents == {"kd3-settings-test/1.0"}
