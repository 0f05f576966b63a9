"""Errors raised by the pool contract. Each message is one line and names the file at fault."""

from common.errors import UserError


class PoolError(UserError):
    """A pool, its manifest or an input to it is unusable; the pool was left unchanged."""


class InvalidImage(PoolError):
    """Bytes that are not an acceptable image. `reason` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
