"""Which addresses the crawler may connect to: only global ones, unless a network is allowed.

Pure functions, no I/O: the resolver and the address middleware apply them to resolved
addresses (before connecting, and again for every redirect target).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> Address | None:
    """The address in `text` (brackets and IPv6 zone ids allowed), or None for a host name."""
    try:
        return ipaddress.ip_address(text.strip("[]").split("%")[0])
    except ValueError:
        return None


def refusal_reason(address: Address) -> str | None:
    """Why `address` is not a public unicast address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return refusal_reason(embedded)
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link_local", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("not_global", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def parse_networks(
    networks: Iterable[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Networks in CIDR form (host bits allowed); a ValueError names the first bad one."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


@dataclass(frozen=True)
class AddressPolicy:
    """Refuse non-global addresses except inside `allowed` networks (e.g. 127.0.0.1/32)."""

    allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_networks(cls, networks: Iterable[str]) -> AddressPolicy:
        try:
            return cls(parse_networks(networks))
        except ValueError as exc:
            raise ValueError(f"KD3_ALLOWED_NETWORKS: {exc}") from None

    def refusal(self, address: str | Address) -> str | None:
        """None if the crawler may connect to `address`, else a short reason."""
        ip = parse_address(address) if isinstance(address, str) else address
        if ip is None:
            return "not_an_address"
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return None
        return refusal_reason(ip)
