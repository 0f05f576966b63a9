"""Crawler parts that need no crawl: address policy, resolver, keywords, source parsers, retry
and robots header parsing, failure reasons, the stats stores and the stats command, and the
crawl command's one-line refusals."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import Counter

import pytest
from scrapy.exceptions import IgnoreRequest
from twisted.python.failure import Failure

from common.options import from_args
from crawler.addresses import AddressPolicy
from crawler.cli import register
from crawler.failures import Refused, failure_reason
from crawler.keywords import KeywordMatcher, queries
from crawler.middlewares import retry_after_seconds, robots_opt_out
from crawler.options import CrawlOptions
from crawler.resolver import AddressRefused, PolicyResolver
from crawler.spiders import bing, flickr, openverse, wikimedia
from crawler.stats import (
    PoolStatsFile,
    RedisStatsHash,
    Update,
    format_stats,
    read_pool_stats,
    read_stats,
    stats_path,
)
from pool.classes import ClassInfo, ClassList
from pool.store import Pool
from tests.crawler.crawler_testkit import FIXTURES, REPO
from workers.cli import build_parser
from workers.cli import main as kd3_main


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.0.0.1", "private"),
        ("169.254.169.254", "link_local"),
        ("::1", "loopback"),
        ("fd00::1", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.2", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
        ("100.64.0.1", "not_global"),  # carrier-grade NAT
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_policy_refuses_non_global_addresses(no_network, address, reason):
    assert AddressPolicy().refusal(address) == reason


def test_allowed_networks_open_only_themselves(no_network):
    policy = AddressPolicy.from_networks(["127.0.0.1/32", "10.1.0.0/16"])
    assert policy.refusal("127.0.0.1") is None and policy.refusal("10.1.2.3") is None
    assert policy.refusal("127.0.0.2") == "loopback" and policy.refusal("10.2.0.1") == "private"
    assert policy.refusal("localhost") == "not_an_address"
    with pytest.raises(ValueError, match="KD3_ALLOWED_NETWORKS"):
        AddressPolicy.from_networks(["not-a-network"])


def test_resolver_refuses_names_that_resolve_to_refused_addresses(no_network):
    from twisted.internet import reactor

    resolver = PolicyResolver(reactor, 100, 5.0, AddressPolicy.from_networks(["127.0.0.1/32"]),
                              {"evil.test": "127.0.0.3", "Images.Test": "127.0.0.1"})  # fmt: skip
    answers = []
    resolver.getHostByName("images.test").addBoth(answers.append)
    resolver.getHostByName("evil.test").addBoth(answers.append)
    assert answers[0] == "127.0.0.1"
    assert isinstance(answers[1], Failure) and answers[1].check(AddressRefused)
    assert answers[1].value.reason == "loopback" and answers[1].value.address == "127.0.0.3"


def test_queries_expand_name_keywords_and_templates():
    info = ClassInfo("cat", ("kitten", "cat"))
    assert queries(info, ["{}", "{} photo"]) == [
        ("cat", "cat"), ("cat photo", "cat"), ("kitten", "kitten"), ("kitten photo", "kitten")]  # fmt: skip


def test_keyword_matcher_matches_whole_words_in_alt_caption_and_file_names():
    matcher = KeywordMatcher([ClassInfo("cat", ("tabby cat",)), ClassInfo("bird", ("sparrow",))])
    assert matcher.match("Two Cats on a sofa").class_name == "cat"
    assert matcher.match("", "", "", "tabby_cat-01.jpg").keyword == "tabby cat"
    assert matcher.match("A house sparrow").keyword == "sparrow"
    assert matcher.match("category listing", "concatenate") is None


def test_bing_parser_on_saved_results_page():
    hits = bing.parse_results_page((FIXTURES / "bing_results.html").read_text())
    assert [h["url"] for h in hits] == [
        "https://upload.example.org/cats/tabby-1.jpg",
        "https://upload.example.org/cats/kitten-2.png",
        "https://upload.example.org/cats/grey%20cat.webp",  # cut-off metadata entry skipped
    ]
    assert hits[0]["page_url"] == "https://blog.example.net/my-cat"
    assert hits[2]["title"] == "Grey cat &amp; friends"
    assert bing.parse_results_page((FIXTURES / "bing_no_results.html").read_text()) == []


def test_api_parsers_keep_licence_author_and_pages():
    commons = {"query": {"pages": {"7": {"title": "File:A.jpg", "imageinfo": [{
        "url": "https://u/A.jpg", "descriptionurl": "https://c/File:A.jpg", "mime": "image/jpeg",
        "extmetadata": {"Artist": {"value": '<a href="x">Ann</a>'},
                        "LicenseShortName": {"value": "CC0"}}}]},
        "8": {"title": "File:B.pdf", "imageinfo": [{"url": "https://u/B.pdf", "mime": "application/pdf"}]}}}}  # fmt: skip
    assert wikimedia.parse_search(commons) == [{
        "url": "https://u/A.jpg", "page_url": "https://c/File:A.jpg", "license": "CC0",
        "license_url": None, "author": "Ann", "title": "File:A.jpg"}]  # fmt: skip
    hits = openverse.parse_results({"results": [
        {"url": "https://i/1.jpg", "license": "by-sa", "license_version": "4.0", "creator": "Bo"},
        {"url": "https://i/2.jpg", "license": "cc0", "license_version": "1.0"}, {"title": "no url"}]})  # fmt: skip
    assert [(h["license"], h["author"]) for h in hits] == [
        ("CC BY-SA 4.0", "Bo"),
        ("CC0 1.0", None),
    ]
    photos = flickr.parse_photos({"photos": {"photo": [
        {"id": "1", "owner": "o", "server": "65", "secret": "ab", "license": "9"}]}})  # fmt: skip
    assert photos[0]["url"] == "https://live.staticflickr.com/65/1_ab_z.jpg"
    assert photos[0]["license"] == "CC0 1.0"
    assert "api_key=K" in flickr.search_url("https://api/", "K", "cat", 2)


def test_retry_after_and_x_robots_tag_parsing():
    assert retry_after_seconds(b"7") == 7.0
    assert retry_after_seconds(b"Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert retry_after_seconds(None) is None and retry_after_seconds(b"soon") is None
    assert robots_opt_out([b"noai"]) and robots_opt_out([b"googlebot: noindex", b"NoImageAI"])
    assert robots_opt_out([b"kd3bot: noimageai, noarchive"])
    assert not robots_opt_out([b"noindex, nofollow"]) and not robots_opt_out([])


def test_failure_reasons():
    assert failure_reason(Failure(Refused("address_refused", "x"))) == "address_refused"
    assert failure_reason(Failure(IgnoreRequest("Forbidden by robots.txt"))) == "robots_txt"
    assert failure_reason(Failure(IgnoreRequest("max redirections reached"))) == "redirect_limit"
    assert failure_reason(Failure(KeyError("x"))) == "error_keyerror"


def test_stats_stores_add_up_and_redis_survives_an_outage(redis_server, tmp_path):
    """Both stores apply the same increments; two writers (spiders, processes) add up."""
    hash_ = RedisStatsHash(redis_server.url, "unit")
    file = PoolStatsFile(stats_path(tmp_path, "unit"))
    opening = Update(Counter(processes_running=1), {"status": "running"}, {"start_time": "t0"})
    for store in (hash_, file):
        assert store.flush(opening) and store.flush(opening)  # two spiders open
        assert store.flush(Update(Counter({"requests": 3, "rejected:http_404": 1})))
        store.flush(Update(Counter(processes_running=-1), {"finish_reason": "finished"},
                           {"start_time": "t1"}, settle=True))  # fmt: skip
    expected = {"requests": "3", "rejected:http_404": "1", "status": "running",
                "processes_running": "1", "start_time": "t0", "finish_reason": "finished"}  # fmt: skip
    assert read_stats(redis_server.client(), "unit") == expected
    assert read_pool_stats(tmp_path, "unit") == expected
    for store in (hash_, file):  # the last spider closes: finished
        store.flush(Update(Counter(processes_running=-1), settle=True))
    assert read_stats(redis_server.client(), "unit")["status"] == "finished"
    assert read_pool_stats(tmp_path, "unit")["status"] == "finished"

    redis_server.stop()
    assert not hash_.flush(Update(Counter(requests=2)))  # Redis is down: nothing raised...
    assert not hash_.flush(Update(Counter(requests=1)))
    assert hash_.pending.counts["requests"] == 3  # ...and the counts kept
    redis_server.start()
    assert hash_.flush(Update())
    assert read_stats(redis_server.client(), "unit") == {"requests": "3"}  # no AOF: restarted empty
    table = format_stats("unit", {"requests": "5", "status": "running", "responses:200": "4"})
    assert table.splitlines()[2].split() == ["status", "running"]


def kd3(*args, env=None):
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip


def test_kd3_stats_prints_the_table_from_redis_or_the_pool(redis_server, tmp_path, capsys):
    redis_server.client().hset("kd3:crawl:abc:stats", mapping={"requests": 12, "rejected:x": 1})
    assert kd3_main(["stats", "abc", "--redis", redis_server.url]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows == [["requests", "12"], ["rejected:x", "1"]]
    PoolStatsFile(stats_path(tmp_path, "abc")).flush(Update(Counter(images_stored=4)))
    assert kd3_main(["stats", "abc", "--pool", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[2].split() == ["images_stored", "4"]
    assert kd3_main(["stats", "nope", "--redis", redis_server.url]) == 1  # documented: 1
    assert "no stats for crawl nope in Redis at" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (
            ["--redis", "URL"],
            "kd3 stats: error: cannot read stats from Redis at redis://127.0.0.1:",
        ),
        (["--pool", "/nonexistent/pool"], "kd3 stats: error: /nonexistent/pool: no such pool"),
    ],
)
def test_kd3_stats_refusals_are_one_line(where, message, free_port_url, capsys):
    where = [free_port_url if w == "URL" else w for w in where]
    assert kd3_main(["stats", "abc", *where]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err


CRAWL = ["crawl", "--classes", "cat", "--sources", "site", "--seed", "http://127.0.0.1:9/"]
REFUSALS = [
    (["--sources", "altavista"], "bad option: --sources: unknown sources ['altavista']"),
    (["--seed", "ftp://example.org/x"], "bad option: --seed: 'ftp://example.org/x' is not an"),
    (["--source-url", "bing=example.org"], "bad option: --source-url: bing: 'example.org' is not"),
    (["--host", "a.test=nowhere"], "bad option: --host: a.test=nowhere: 'nowhere' is not an IP"),
    (["--per-class", "many"], "bad option: --per-class: Input should be a valid integer"),
    (["--shared"], "bad option: --redis: a shared crawl (--shared) needs Redis"),
    (["--redis", "URL"], "cannot reach Redis at redis://127.0.0.1:"),
    (["--keywords", "dog=puppy"], "--keywords for classes not in --classes: dog"),
    (["--crawl-id", "../up"], "bad option: --crawl-id: '../up': a crawl id is letters"),
    (["--classes", "cat,cat"], "bad option: --classes: class names given twice: cat"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "message"), REFUSALS)
def test_kd3_crawl_refusals_are_one_line_before_anything_runs(
    flags, message, free_port_url, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("KD3_REDIS_URL", raising=False)
    flags = [free_port_url if f == "URL" else f for f in flags]
    out = tmp_path / "pool"
    assert kd3_main([*CRAWL, "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kd3 crawl: error: {message}"), err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_kd3_crawl_refuses_a_pool_of_other_classes(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KD3_REDIS_URL", raising=False)
    Pool.create(tmp_path / "pool", ClassList.from_names(["dog", "bird"]))
    assert kd3_main([*CRAWL, "--out", str(tmp_path / "pool")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kd3 crawl: error: ") and "pool has classes ['dog', 'bird']" in err
    assert len(err.strip().splitlines()) == 1


def test_generated_flags_default_to_the_options_model():
    parser = build_parser("crawl")
    args = parser.parse_args(["crawl", "--classes", "cat", "--out", "p"])
    assert from_args(CrawlOptions, args, "test") == CrawlOptions()
    subparsers = argparse.ArgumentParser().add_subparsers()
    register(subparsers)
    actions = subparsers.choices["crawl"]._actions
    helps = {flag: action.help for action in actions for flag in action.option_strings}
    assert "(default: wikimedia,openverse)" in helps["--sources"]
    assert f"(default: {CrawlOptions().per_class})" in helps["--per-class"]
    assert helps["-s"] == helps["--set"] and "(default: off)" in helps["--shared"]
    assert all(
        "(default: " in h or "(required)" in h
        for f, h in helps.items()
        if f not in ("-h", "--help")
    )


def test_flickr_without_a_key_is_skipped_with_a_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("FLICKR_API_KEY", "KD3_REDIS_URL")}
    done = kd3("crawl", "--classes", "cat", "--out", str(tmp_path / "p"), "--sources", "flickr",
               "--crawl-id", "nokey", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "flickr: skipped, no API key (set FLICKR_API_KEY)" in done.stderr
    stats = read_pool_stats(tmp_path / "p", "nokey")
    assert stats["skipped:flickr_no_api_key"] == "1" and stats["status"] == "finished"


def test_scrapy_list_works_in_the_project_folder():
    done = subprocess.run([sys.executable, "-m", "scrapy", "list"], cwd=REPO / "crawler",
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.stdout.split() == ["bing", "flickr", "openverse", "site", "wikimedia"], done.stderr
