"""The exceptions that mean "the user's input is wrong", from every stage: the command line prints
them as one line (exit status 2) and a failed job records them without a type prefix."""

from crawler.errors import CrawlError
from dedup.errors import DedupError
from distill.errors import DistillError
from pool.errors import PoolError
from workers.artifacts import ArtifactError
from workers.config import ConfigError

USER_ERRORS: tuple[type[Exception], ...] = (
    PoolError,
    CrawlError,
    DedupError,
    DistillError,
    ConfigError,
    ArtifactError,
)
