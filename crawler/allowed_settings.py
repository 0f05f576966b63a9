"""The crawl settings a job spec (`crawl.settings`) or `kd3 crawl -s NAME=VALUE` may set.

A job spec is data, not power: only the settings named below, each typed and bounded, are
accepted. Everything else is refused by name, before anything runs: Scrapy's component settings
(middlewares, extensions, pipelines, spider loader, scheduler, download handlers) load code,
telnet and the like open ports, feeds, log files and job directories write files; kd3's pool,
Redis, crawl id and address policy come only from their own options (--out, --redis, --crawl-id,
--allow-network, ...). `check_settings` is applied by crawler.options.CrawlOptions (flags,
config, job files) and again by `crawler.run.build_settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from crawler.errors import SettingError

Seconds = Annotated[float, Field(ge=0, le=3600)]
Count = Annotated[int, Field(ge=0, le=10**9)]  # CLOSESPIDER_* limits: 0 means none
Printable = StringConstraints(pattern=r"^[\x20-\x7e]*$", max_length=512)  # no CR/LF in headers
HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")]
Template = Annotated[str, StringConstraints(pattern=r"^[^{}]*\{\}[^{}]*$", max_length=100)]

# Set only through their own (validated) options, never as a setting.
DEDICATED = {
    "KD3_POOL": "--out",
    "KD3_CRAWL_ID": "--crawl-id",
    "KD3_REDIS_URL": "--redis",
    "KD3_PER_CLASS": "--per-class",
    "KD3_SEEDS": "--seed",
    "KD3_SOURCE_URLS": "--source-url",
    "KD3_ALLOWED_NETWORKS": "--allow-network (allow_networks in a job spec)",
    "KD3_STATIC_HOSTS": "--host",
    "KD3_SHARED": "--shared",
    "KD3_FLICKR_API_KEY": "the FLICKR_API_KEY environment variable",
    "KD3_ROUND": "the crawl loop (steer.loop)",
    "KD3_CLASS_QUERIES": "the crawl loop (steer.loop)",
    "KD3_CLASS_TARGETS": "the crawl loop (steer.loop)",
    "KD3_SEED_CLASSES": "the crawl loop (steer.loop)",
    "KD3_RECORD_LINKS": "the crawl loop (steer.loop)",
    "KD3_SKIP_POOL": "the crawl loop (steer.loop)",
}


class CrawlSettings(BaseModel):
    """Defaults live in crawler/settings.py; a field here is only what may be overridden."""

    model_config = ConfigDict(extra="forbid")

    # Scrapy: load, politeness, limits
    CONCURRENT_REQUESTS: int = Field(None, ge=1, le=256)
    CONCURRENT_REQUESTS_PER_DOMAIN: int = Field(None, ge=1, le=64)
    CONCURRENT_ITEMS: int = Field(None, ge=1, le=100)
    DOWNLOAD_DELAY: float = Field(None, ge=0, le=60)
    RANDOMIZE_DOWNLOAD_DELAY: bool = None
    DOWNLOAD_TIMEOUT: float = Field(None, gt=0, le=300)
    DOWNLOAD_MAXSIZE: int = Field(None, ge=1, le=100 * 1024 * 1024)  # Scrapy's 0 means no limit
    DNS_TIMEOUT: float = Field(None, gt=0, le=60)
    RETRY_ENABLED: bool = None
    RETRY_TIMES: int = Field(None, ge=0, le=10)
    REDIRECT_MAX_TIMES: int = Field(None, ge=0, le=10)
    USER_AGENT: Annotated[str, Printable] = Field(None, min_length=1)
    DEFAULT_REQUEST_HEADERS: dict[HeaderName, Annotated[str, Printable]] = Field(
        None, max_length=20
    )
    AUTOTHROTTLE_ENABLED: bool = None
    AUTOTHROTTLE_START_DELAY: float = Field(None, ge=0, le=60)
    AUTOTHROTTLE_MAX_DELAY: float = Field(None, ge=0, le=300)
    AUTOTHROTTLE_TARGET_CONCURRENCY: float = Field(None, gt=0, le=64)
    CLOSESPIDER_TIMEOUT: float = Field(None, ge=0, le=7 * 86400)  # 0 means none
    CLOSESPIDER_TIMEOUT_NO_ITEM: Seconds = None
    CLOSESPIDER_ITEMCOUNT: Count = None
    CLOSESPIDER_PAGECOUNT: Count = None
    CLOSESPIDER_PAGECOUNT_NO_ITEM: Count = None
    CLOSESPIDER_ERRORCOUNT: Count = None
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = None

    # kd3: what to collect, validation, storage, retries, scale-out
    KD3_QUERY_TEMPLATES: list[Template] = Field(None, min_length=1, max_length=10)
    KD3_MAX_PAGES: int = Field(None, ge=1, le=100)
    KD3_WIKIMEDIA_THUMB_WIDTH: int = Field(None, ge=1, le=4096)
    KD3_SITE_DEPTH: int = Field(None, ge=0, le=10)
    KD3_MAX_PIXELS: int = Field(None, ge=1, le=100_000_000)  # decompression-bomb guard
    KD3_MIN_SIDE: int = Field(None, ge=1, le=4096)
    KD3_ALLOWED_FORMATS: list[Literal["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"]] = Field(
        None, min_length=1
    )
    KD3_FLUSH_ITEMS: int = Field(None, ge=1, le=10_000)
    KD3_FLUSH_SECONDS: float = Field(None, gt=0, le=60)
    KD3_STATS_FLUSH_SECONDS: float = Field(None, gt=0, le=60)
    KD3_RETRY_BACKOFF_BASE: float = Field(None, ge=0, le=60)
    KD3_RETRY_BACKOFF_MAX: float = Field(None, ge=0, le=600)
    KD3_RETRY_AFTER_MAX: Seconds = None
    KD3_IDLE_CLOSE_SECONDS: Seconds = None
    KD3_SHARED_POLL_SECONDS: float = Field(None, gt=0, le=10)


ALLOWED = tuple(CrawlSettings.model_fields)


def check_settings(settings: Mapping | None) -> dict:
    """`settings` checked and typed, or SettingError naming every refused setting in one line."""
    settings = dict(settings or {})
    problems = [
        f"{name}: set it with {DEDICATED[name]}, not as a crawl setting"
        if name in DEDICATED
        else f"{name}: not an allowed crawl setting"
        for name in settings
        if name not in ALLOWED
    ]
    if any(name not in ALLOWED and name not in DEDICATED for name in settings):
        problems.append(f"allowed: {', '.join(ALLOWED)}")
    if not problems:
        try:
            return CrawlSettings.model_validate(settings).model_dump(exclude_unset=True)
        except ValidationError as exc:
            problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    raise SettingError("; ".join(problems))
