"""Errors the user can fix (bad evaluation set, bad options). Each message is one line."""


class DedupError(Exception):
    """The dedup input or options are unusable; the pool's manifest was left unchanged."""
