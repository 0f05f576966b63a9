"""What a spider hands the pipeline: the original bytes and where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ImageItem:
    url: str
    body: bytes = field(repr=False)  # original bytes, stored as they are
    source: str
    class_name: str
    keyword: str
    page_url: str = ""
    license: str | None = None
    license_url: str | None = None
    author: str | None = None
    title: str | None = None

    def summary(self) -> dict:
        """What Scrapy logs and signals carry instead of the bytes."""
        return {"url": self.url, "source": self.source, "class_name": self.class_name}
