"""The crawler's user-facing error (kept free of heavy imports for the `kd3` command line)."""

from common.errors import UserError


class CrawlError(UserError):
    """The crawl cannot start as asked (bad source, no Redis, ...); one line for the user."""


class SettingError(CrawlError, ValueError):
    """A crawl setting that may not be set, or a bad value for one; the line names the setting."""
