"""Short, stable reasons for every way a request can fail or be refused (stats field names)."""

from __future__ import annotations

from scrapy.exceptions import (
    CannotResolveHostError,
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadTimeoutError,
    IgnoreRequest,
)
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.internet import error as net_error
from twisted.python.failure import Failure


class Refused(IgnoreRequest):
    """A request kd3 will not make. `reason` names it in the stats; `skip` means on purpose
    (e.g. class target reached) rather than a rejection."""

    def __init__(self, reason: str, detail: str = "", skip: bool = False):
        self.reason, self.detail, self.skip = reason, detail, skip
        super().__init__(f"{reason}: {detail}" if detail else reason)


# Scrapy's IgnoreRequest messages, mapped to reasons.
_IGNORE_MESSAGES = {
    "Forbidden by robots.txt": "robots_txt",
    "max redirections reached": "redirect_limit",
    "Filtered offsite request": "offsite",
}
_EXCEPTIONS = [
    (DownloadCancelledError, "too_large"),
    ((DownloadTimeoutError, net_error.TimeoutError), "timeout"),
    ((CannotResolveHostError, net_error.DNSLookupError), "dns_error"),
    ((DownloadConnectionRefusedError, net_error.ConnectionRefusedError), "connection_refused"),
]


def failure_reason(failure: Failure) -> str:
    exc = failure.value
    if isinstance(exc, Refused):
        return exc.reason
    if isinstance(exc, HttpError):
        return f"http_{exc.response.status}"
    if isinstance(exc, IgnoreRequest):
        message = str(exc)
        return next((r for m, r in _IGNORE_MESSAGES.items() if message.startswith(m)), "ignored")
    for types, reason in _EXCEPTIONS:
        if isinstance(exc, types):
            return reason
    return f"error_{type(exc).__name__}".lower()
