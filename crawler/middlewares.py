"""Downloader middlewares: address policy, class targets, X-Robots-Tag, retry backoff, redirect
loops, and traffic stats. Their order is set in crawler/settings.py."""

from __future__ import annotations

import email.utils
import time
from urllib.parse import urljoin, urlsplit

from scrapy.downloadermiddlewares.redirect import RedirectMiddleware
from scrapy.downloadermiddlewares.retry import RetryMiddleware, get_retry_request
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.response import response_status_message
from twisted.internet import task
from twisted.internet.error import DNSLookupError

from crawler.addresses import AddressPolicy, parse_address
from crawler.failures import Refused
from crawler.pipelines import PoolWriter
from crawler.resolver import AddressRefused

ALLOWED_SCHEMES = ("http", "https")


class AddressPolicyMiddleware:
    """Only http(s), and only to addresses the policy allows, checked on the resolved address.

    Runs first for every request, including robots.txt fetches and each redirect target (a
    redirect is a new request). The resolver applies the same policy when the connection is made,
    and its cache means the connection uses the address checked here.
    """

    def __init__(self, policy: AddressPolicy):
        self.policy = policy

    @classmethod
    def from_crawler(cls, crawler):
        return cls(AddressPolicy.from_networks(crawler.settings.getlist("KD3_ALLOWED_NETWORKS")))

    async def process_request(self, request):
        from twisted.internet import reactor

        parts = urlparse_cached(request)
        if parts.scheme not in ALLOWED_SCHEMES:
            raise Refused("scheme_not_allowed", parts.scheme or "none")
        host = parts.hostname
        if not host:
            raise Refused("bad_url", request.url[:200])
        address = host if parse_address(host) else None
        if address is None:
            try:
                address = await maybe_deferred_to_future(reactor.resolve(host))
            except AddressRefused as exc:
                raise Refused(
                    "address_refused", f"{host} -> {exc.address} ({exc.reason})"
                ) from None
            except DNSLookupError as exc:
                raise Refused("dns_error", f"{host}: {exc}") from None
        reason = self.policy.refusal(address)
        if reason:
            raise Refused("address_refused", f"{host} -> {address} ({reason})")
        return None


class ClassTargetMiddleware:
    """Stop asking for a class once the pool holds its target (KD3_PER_CLASS)."""

    def __init__(self, writer: PoolWriter):
        self.writer = writer

    @classmethod
    def from_crawler(cls, crawler):
        return cls(PoolWriter.for_crawler(crawler))

    def process_request(self, request):
        class_name = request.meta.get("kd3", {}).get("class_name")
        if (class_name and self.writer.full(class_name)) or self.writer.all_full():
            raise Refused("class_target_reached", class_name or "all classes", skip=True)
        return None


def robots_opt_out(header_values: list[bytes]) -> bool:
    """True if an X-Robots-Tag value says noai or noimageai (for any or no user agent)."""
    for raw in header_values:
        text = raw.decode("latin-1").lower()
        for directive in text.replace(";", ",").split(","):
            if directive.strip().split(":")[-1].strip() in ("noai", "noimageai"):
                return True
    return False


class XRobotsTagMiddleware:
    """Refuse final responses whose X-Robots-Tag opts out of AI use (noai, noimageai)."""

    def process_response(self, request, response):
        if robots_opt_out(response.headers.getlist("X-Robots-Tag")):
            raise Refused("x_robots_tag", request.url)
        return response


def retry_after_seconds(value: bytes | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None if absent or unreadable."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class BackoffRetryMiddleware(RetryMiddleware):
    """Scrapy's retry, waiting before each retry of a 429/5xx: Retry-After when the server sends
    one (giving up when it asks for longer than KD3_RETRY_AFTER_MAX), else exponential backoff."""

    @classmethod
    def from_crawler(cls, crawler):
        mw = super().from_crawler(crawler)
        settings = crawler.settings
        mw.backoff_base = settings.getfloat("KD3_RETRY_BACKOFF_BASE")
        mw.backoff_max = settings.getfloat("KD3_RETRY_BACKOFF_MAX")
        mw.retry_after_max = settings.getfloat("KD3_RETRY_AFTER_MAX")
        return mw

    async def process_response(self, request, response):
        if request.meta.get("dont_retry") or response.status not in self.retry_http_codes:
            return response
        delay = retry_after_seconds(response.headers.get("Retry-After"))
        if delay is not None and delay > self.retry_after_max:
            return response  # fails as http_<status>; the server asked for too long a wait
        retry = get_retry_request(
            request,
            spider=self.crawler.spider,
            reason=response_status_message(response.status),
            max_retry_times=request.meta.get("max_retry_times", self.max_retry_times),
            priority_adjust=request.meta.get("priority_adjust", self.priority_adjust),
        )
        if retry is None:
            return response
        if delay is None:
            delay = min(
                self.backoff_max, self.backoff_base * 2 ** request.meta.get("retry_times", 0)
            )
        if delay > 0:
            from twisted.internet import reactor

            await maybe_deferred_to_future(task.deferLater(reactor, delay, lambda: None))
        return retry


class LoopAwareRedirectMiddleware(RedirectMiddleware):
    """Redirects with two more refusals: back to a URL already in the chain (a loop; Scrapy's
    duplicate filter would otherwise drop it silently) and to a scheme other than http(s)."""

    def _redirect(self, redirected, request, reason):
        chain = [*request.meta.get("redirect_urls", []), request.url]
        if redirected.url in chain:
            raise Refused("redirect_loop", f"{request.url} -> {redirected.url}")
        return super()._redirect(redirected, request, reason)

    def process_response(self, request, response):
        result = super().process_response(request, response)
        location = response.headers.get("Location")
        if result is response and response.status in (301, 302, 303, 307, 308) and location:
            scheme = urlsplit(urljoin(request.url, location.decode("latin-1"))).scheme
            if scheme not in ALLOWED_SCHEMES:
                raise Refused("scheme_not_allowed", f"redirect to {scheme}:")
        return result


class TrafficStatsMiddleware:
    """Counts what goes over the wire: requests sent, responses by status, bytes received."""

    def __init__(self, stats):
        self.stats = stats

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler.stats)

    def process_request(self, request):
        self.stats.inc_value("requests")
        return None

    def process_response(self, request, response):
        self.stats.inc_value(f"responses:{response.status}")
        self.stats.inc_value("bytes_received", len(response.body))
        return response
