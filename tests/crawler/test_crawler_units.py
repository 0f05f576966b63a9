"""Crawler parts that need no crawl: address policy, resolver, keywords, source parsers, retry
and robots header parsing, failure reasons, Redis stats and the stats command."""

from __future__ import annotations

import subprocess
import sys

import pytest
from scrapy.exceptions import IgnoreRequest
from twisted.python.failure import Failure

from crawler.addresses import AddressPolicy
from crawler.failures import Refused, failure_reason
from crawler.keywords import KeywordMatcher, queries
from crawler.middlewares import retry_after_seconds, robots_opt_out
from crawler.resolver import AddressRefused, PolicyResolver
from crawler.spiders import bing, flickr, openverse, wikimedia
from crawler.stats import CrawlStats, format_stats, read_stats
from pool.classes import ClassInfo
from tests.crawler.crawler_testkit import FIXTURES, REPO


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


def test_stats_are_added_to_redis_and_survive_an_outage(redis_server):
    stats = CrawlStats(redis_server.url, "unit")
    stats.inc("requests", 3)
    stats.reject("http_404", "site")
    stats.set("status", "running")
    stats.flush()
    client = redis_server.client()
    assert read_stats(client, "unit") == {
        "requests": "3", "rejected:http_404": "1", "source:site:rejected": "1", "status": "running"}  # fmt: skip
    redis_server.stop()
    stats.inc("requests", 2)
    stats.flush()  # Redis is down: nothing raised, counts kept
    redis_server.start()
    stats.flush()
    assert read_stats(redis_server.client(), "unit")["requests"] == "2"  # no AOF: restarted empty
    table = format_stats("unit", {"requests": "5", "status": "running", "responses:200": "4"})
    assert table.splitlines()[2].split() == ["status", "running"]


def kd3(*args, env=None):
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip


def test_kd3_stats_prints_the_hash_as_a_table(redis_server):
    redis_server.client().hset("kd3:crawl:abc:stats", mapping={"requests": 12, "rejected:x": 1})
    done = kd3("stats", "abc", "--redis", redis_server.url)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[2:]]
    assert rows == [["requests", "12"], ["rejected:x", "1"]]
    missing = kd3("stats", "nope", "--redis", redis_server.url)
    assert missing.returncode == 1 and "no stats for crawl nope" in missing.stdout


def test_kd3_crawl_user_errors_are_one_line(redis_server, tmp_path):
    bad_source = kd3("crawl", "--classes", "cat", "--out", str(tmp_path / "p"),
                     "--sources", "altavista", "--redis", redis_server.url)  # fmt: skip
    assert bad_source.returncode == 2
    assert bad_source.stderr.strip().count("\n") == 0 and "unknown sources" in bad_source.stderr
    no_redis = kd3("crawl", "--classes", "cat", "--out", str(tmp_path / "p"),
                   "--redis", "redis://127.0.0.1:1/0")  # fmt: skip
    assert no_redis.returncode == 2 and "cannot reach Redis" in no_redis.stderr
    assert not (tmp_path / "p").exists()


def test_flickr_without_a_key_is_skipped_with_a_message(redis_server, tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "FLICKR_API_KEY"}
    done = kd3("crawl", "--classes", "cat", "--out", str(tmp_path / "p"), "--sources", "flickr",
               "--redis", redis_server.url, "--crawl-id", "nokey", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "flickr: skipped, no API key (set FLICKR_API_KEY)" in done.stderr
    assert read_stats(redis_server.client(), "nokey") == {"skipped:flickr_no_api_key": "1"}


def test_scrapy_list_works_in_the_project_folder():
    done = subprocess.run([sys.executable, "-m", "scrapy", "list"], cwd=REPO / "crawler",
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.stdout.split() == ["bing", "flickr", "openverse", "site", "wikimedia"], done.stderr
