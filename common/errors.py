"""The base of every error a user can cause and fix (bad input, bad config, an unreachable
service). The command line prints one as a single line and exits with status 2; a failed job
records its message without a type prefix. Each stage subclasses it (PoolError, CrawlError...)."""


class UserError(Exception):
    """A problem with what the user gave; the message is one line that names what is wrong."""
