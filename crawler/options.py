"""What a crawl is asked to do: the one model behind `kd3 crawl`'s flags, the YAML config's
`crawl:` section, `kd3 submit crawl` and the worker's job file. Every default lives here.

Light imports only (stdlib, pydantic, common, crawler's own light modules): `kd3 --help` reads it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from crawler.addresses import parse_networks
from crawler.allowed_settings import check_settings
from crawler.errors import SettingError

SOURCES = ("wikimedia", "openverse", "flickr", "bing", "site")
DEFAULT_SOURCES = ("wikimedia", "openverse")
CRAWL_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"  # a Redis key part and a folder name


def _refuse(message: str) -> PydanticCustomError:
    """A validation error whose message is shown as it is (no "Value error, " prefix)."""
    return PydanticCustomError("kd3", message)


def check_url(url: str) -> str:
    """`url` if it is http(s) with a host, else the reason as a one-line ValueError."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL with a host")
    return url.strip()


class ClassSpec(BaseModel):
    """A class to collect: its name (as the teacher names it) and extra search keywords.
    A plain string is a class without keywords."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="the class name, in the teacher's wording")
    keywords: list[str] = Field([], description="more search terms for this class")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value):
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _strip(cls, value: str) -> str:
        if not value.strip():
            raise _refuse("a class name must not be blank")
        return value.strip()


class CrawlOptions(BaseModel):
    """How to crawl. Field names are the config's `crawl:` keys; flags are generated from them."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(
        list(DEFAULT_SOURCES),
        description=f"image sources to crawl, from {', '.join(SOURCES)}",
        json_schema_extra={"metavar": "S1,S2"},
    )
    per_class: int = Field(
        100,
        ge=0,
        description="stop collecting a class once the pool holds this many images of it "
        "(0: no limit)",
    )
    seeds: list[str] = Field(
        [],
        description="a start page or sitemap of the site source",
        validate_default=True,  # the site source needs one
        json_schema_extra={"flag": "--seed", "repeat": True, "metavar": "URL"},
    )
    source_urls: dict[str, str] = Field(
        {},
        description="the API or search URL of a source instead of its public one",
        json_schema_extra={"flag": "--source-url", "metavar": "SOURCE=URL"},
    )
    allow_networks: list[str] = Field(
        [],
        description="a non-public network the crawl may connect to, as narrow as possible "
        "(e.g. 127.0.0.1/32 for a local demo)",
        json_schema_extra={"flag": "--allow-network", "repeat": True, "metavar": "CIDR"},
    )
    hosts: dict[str, str] = Field(
        {},
        description="answer this host name with this address before DNS",
        json_schema_extra={"flag": "--host", "metavar": "NAME=IP"},
    )
    settings: dict[str, Any] = Field(
        {},
        description="an allowed crawl setting, JSON value (e.g. DOWNLOAD_DELAY=0.5; the list "
        "is in crawler/allowed_settings.py)",
        json_schema_extra={"flag": "--set", "aliases": ["-s"], "metavar": "NAME=VALUE"},
    )
    shared: bool = Field(
        False,
        description="share the request queue in Redis with the other processes on this crawl "
        "(needs Redis)",
    )

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in SOURCES]
        if unknown or not value:
            raise _refuse(f"unknown sources {unknown}; choose from {', '.join(SOURCES)}")
        return list(dict.fromkeys(value))

    @field_validator("seeds")
    @classmethod
    def _seed_urls(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value and "site" in info.data.get("sources", ()):
            raise _refuse("the site source needs seed URLs (--seed URL)")
        try:
            return [check_url(url) for url in value]
        except ValueError as exc:
            raise _refuse(str(exc)) from None

    @field_validator("source_urls")
    @classmethod
    def _source_urls(cls, value: dict[str, str]) -> dict[str, str]:
        with_url = [s for s in SOURCES if s != "site"]
        for name, url in value.items():
            if name not in with_url:
                raise _refuse(f"{name}: not a source with a URL; choose from {', '.join(with_url)}")
            try:
                check_url(url)
            except ValueError as exc:
                raise _refuse(f"{name}: {exc}") from None
        return {name: url.strip() for name, url in value.items()}

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                parse_networks([network])
            except ValueError as exc:
                raise _refuse(f"{network}: {exc}") from None
        return value

    @field_validator("hosts")
    @classmethod
    def _host_addresses(cls, value: dict[str, str]) -> dict[str, str]:
        for name, address in value.items():
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise _refuse(f"{name}={address}: {address!r} is not an IP address") from None
        return value

    @field_validator("settings")
    @classmethod
    def _allowed_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            return check_settings(value)
        except SettingError as exc:
            raise _refuse(str(exc)) from None


class CrawlJob(BaseModel):
    """One crawl: what `crawler.run.crawl` runs and `python -m crawler.run --job FILE` reads."""

    model_config = ConfigDict(extra="forbid")

    # `flag`: how `kd3 crawl` names the field in an error (its flags are written in crawler.cli).
    classes: list[ClassSpec] = Field(
        min_length=1,
        description="the classes, in the teacher's output order",
        json_schema_extra={"flag": "--classes"},
    )
    options: CrawlOptions = Field(default_factory=CrawlOptions)
    out: str = Field(
        min_length=1,
        description="the pool directory (created if missing)",
        json_schema_extra={"flag": "--out"},
    )
    redis_url: str | None = Field(
        None,
        description="Redis for live stats and shared crawls (stats always go to the pool too)",
        validate_default=True,  # a shared crawl needs one
        json_schema_extra={"flag": "--redis"},
    )
    crawl_id: str | None = Field(
        None,
        description="resume or join this crawl (default: a new id)",
        json_schema_extra={"flag": "--crawl-id"},
    )
    # Set by the crawl loop (steer.loop) for its later rounds; a plain crawl leaves them unset.
    round: int = Field(1, ge=1, le=1000, description="the crawl loop's round (recorded per image)")
    queries: dict[str, list[str]] | None = Field(
        None,
        description="exactly the search terms of each class this round (a class not named is "
        "not searched); default: each class's name and keywords",
    )
    class_targets: dict[str, int] | None = Field(
        None,
        description="images of each class the pool may hold, instead of options.per_class",
    )
    seed_classes: dict[str, tuple[str, int]] | None = Field(
        None,
        description="seed pages of the site source where the teacher found a class: every "
        "image on them and on the pages they link to is taken for that class, links first "
        "from the pages with the highest priority (the teacher's confident images there)",
    )
    record_links: bool = Field(
        False,
        description="the site source records each page it reads and the on-site pages it "
        "links to, in POOL/crawls/<crawl id>/links.json",
    )
    skip_pool: str | None = Field(
        None,
        description="a pool whose images this crawl does not fetch again (by URL); it must "
        "hold `out` (the crawl loop's probe writes inside the pool it explores for)",
    )

    @field_validator("classes")
    @classmethod
    def _distinct(cls, value: list[ClassSpec]) -> list[ClassSpec]:
        names = [c.name for c in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise _refuse(f"class names given twice: {', '.join(repeated)}")
        return value

    @field_validator("crawl_id")
    @classmethod
    def _crawl_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(CRAWL_ID_PATTERN, value):
            raise _refuse(
                f"{value!r}: a crawl id is letters, digits, '.', '_' and '-' (at most 128), "
                "starting with a letter or digit"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _shared_needs_redis(cls, value: str | None, info: ValidationInfo) -> str | None:
        options = info.data.get("options")
        if not value and options is not None and options.shared:
            raise _refuse("a shared crawl (--shared) needs Redis: pass --redis URL")
        return value or None

    @model_validator(mode="after")
    def _skip_pool_holds_out(self):
        from pathlib import Path

        if self.skip_pool and not Path(self.out).resolve().is_relative_to(
            Path(self.skip_pool).resolve()
        ):
            raise _refuse(f"skip_pool {self.skip_pool!r} must be a folder that holds out")
        return self

    @model_validator(mode="after")
    def _known_classes(self):
        names = {c.name for c in self.classes}
        seeded = {c for c, _ in (self.seed_classes or {}).values()}
        for what, given in (("queries", self.queries), ("class_targets", self.class_targets),
                            ("seed_classes", seeded)):  # fmt: skip
            unknown = sorted(set(given or {}) - names)
            if unknown:
                raise _refuse(f"{what} names classes the crawl does not have: {unknown}")
        return self

    def keywords(self) -> dict[str, list[str]]:
        return {c.name: list(c.keywords) for c in self.classes}
