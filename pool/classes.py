"""classes.json: class names in the teacher's output order and the keywords crawled for each."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pool.errors import PoolError


@dataclass(frozen=True)
class ClassInfo:
    name: str
    keywords: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ClassList:
    classes: tuple[ClassInfo, ...]

    @classmethod
    def from_names(cls, names, keywords: dict[str, list[str]] | None = None) -> ClassList:
        keywords = keywords or {}
        names = [str(n).strip() for n in names]
        if any(not n for n in names):
            raise PoolError("class names must not be empty")
        if len(set(names)) != len(names):
            raise PoolError(f"duplicate class names in {names}")
        return cls(tuple(ClassInfo(n, tuple(keywords.get(n, ()))) for n in names))

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise PoolError(f"class '{name}' is not one of {self.names}") from None

    def __len__(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        body = {"classes": [{"name": c.name, "keywords": list(c.keywords)} for c in self.classes]}
        return json.dumps(body, indent=2) + "\n"

    @classmethod
    def read(cls, path: Path) -> ClassList:
        try:
            body = json.loads(path.read_text())
            entries = body["classes"]
            return cls.from_names(
                [e["name"] for e in entries], {e["name"]: e.get("keywords", []) for e in entries}
            )
        except FileNotFoundError:
            raise PoolError(f"{path}: missing") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise PoolError(f"{path}: not a classes file ({type(exc).__name__}: {exc})") from None
