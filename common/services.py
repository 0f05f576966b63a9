"""Reaching Redis: one client factory that checks the server answers, and one wording for a
Redis that cannot be reached (used by every command that talks to it)."""

from __future__ import annotations

from common.errors import UserError


class ServiceUnavailable(UserError):
    """Redis (or the artifact store) cannot be reached or its address is malformed."""


def unreachable(url: str, exc: BaseException) -> str:
    return (
        f"cannot reach Redis at {url} ({exc}); start one, or pass --redis URL or set KD3_REDIS_URL"
    )


def redis_client(url: str, timeout: float = 5.0, socket_timeout: float | None = None):
    """A Redis client for `url` that answered a PING, or one line saying why not.
    `socket_timeout` bounds every later reply too (None: wait as long as a call asks)."""
    import redis

    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=socket_timeout
        )
    except ValueError as exc:
        raise ServiceUnavailable(f"bad Redis URL {url!r}: {exc}") from None
    try:
        client.ping()
    except redis.exceptions.AuthenticationError as exc:
        raise ServiceUnavailable(f"Redis at {url} refused the password ({exc})") from None
    except redis.exceptions.RedisError as exc:
        raise ServiceUnavailable(unreachable(url, exc)) from None
    return client
