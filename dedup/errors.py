"""Errors the user can fix (bad evaluation set, bad options). Each message is one line."""

from common.errors import UserError


class DedupError(UserError):
    """The dedup input or options are unusable; the pool's manifest was left unchanged."""
