"""The crawler's DNS resolver: static test hosts, Scrapy's cache, and the address policy.

Installed on the reactor (TWISTED_DNS_RESOLVER), so every connection Scrapy makes to a host name
gets an address that passed the policy: a refused answer fails the lookup instead of connecting.
Addresses written literally in URLs never reach a resolver; AddressPolicyMiddleware checks them.
"""

from __future__ import annotations

from scrapy.resolver import CachingThreadedResolver
from twisted.internet import defer
from twisted.internet.error import DNSLookupError

from crawler.addresses import AddressPolicy


class AddressRefused(DNSLookupError):
    def __init__(self, host: str, address: str, reason: str):
        self.host, self.address, self.reason = host, address, reason
        super().__init__(f"{host} resolves to {address} ({reason}): refused by the address policy")


class PolicyResolver(CachingThreadedResolver):
    def __init__(self, reactor, cache_size, timeout, policy: AddressPolicy, static_hosts: dict):
        super().__init__(reactor, cache_size, timeout)
        self.policy = policy
        self.static_hosts = {k.lower(): v for k, v in static_hosts.items()}

    @classmethod
    def from_crawler(cls, crawler, reactor):
        settings = crawler.settings
        cache_size = settings.getint("DNSCACHE_SIZE") if settings.getbool("DNSCACHE_ENABLED") else 0
        return cls(
            reactor,
            cache_size,
            settings.getfloat("DNS_TIMEOUT"),
            AddressPolicy.from_networks(settings.getlist("KD3_ALLOWED_NETWORKS")),
            settings.getdict("KD3_STATIC_HOSTS"),
        )

    def getHostByName(self, name, timeout=()):  # noqa: N802 - Twisted's interface
        static = self.static_hosts.get(name.lower())
        answer = defer.succeed(static) if static else super().getHostByName(name, timeout)
        return answer.addCallback(self._check, name)

    def _check(self, address: str, name: str) -> str:
        reason = self.policy.refusal(address)
        if reason:
            raise AddressRefused(name, address, reason)
        return address
