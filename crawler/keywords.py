"""Search queries per class (name, user keywords, templates) and keyword matching in page text."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pool.classes import ClassInfo


def terms(info: ClassInfo, with_name: bool = True) -> list[str]:
    """The class name (unless not `with_name`) and its keywords, without repeats."""
    named = (info.name, *info.keywords) if with_name else info.keywords
    return list(dict.fromkeys(t.strip() for t in named if t.strip()))


def queries(
    info: ClassInfo, templates: Sequence[str] = ("{}",), with_name: bool = True
) -> list[tuple[str, str]]:
    """(query, term) pairs: every template applied to every term, without repeated queries."""
    seen: dict[str, str] = {}
    for term in terms(info, with_name):
        for template in templates:
            seen.setdefault(template.format(term), term)
    return list(seen.items())


def normalise(text: str) -> str:
    """Lower case, with anything but letters and digits as single spaces ("Tabby_Cat-1" -> ...)."""
    return " ".join(re.split(r"[\W_]+", text.lower())).strip()


@dataclass(frozen=True)
class Match:
    class_name: str
    keyword: str


class KeywordMatcher:
    """Finds the class whose name or keyword appears as whole words (plural allowed); the longest
    matching term wins ("tabby cat" before "cat")."""

    def __init__(self, classes: Iterable[ClassInfo]):
        patterns = [
            (info.name, term, re.compile(rf"\b{re.escape(normalise(term))}(?:s|es)?\b"))
            for info in classes
            for term in terms(info)
            if normalise(term)
        ]
        self.patterns = sorted(patterns, key=lambda p: -len(p[1]))

    def match(self, *texts: str) -> Match | None:
        text = normalise(" ".join(t for t in texts if t))
        for class_name, term, pattern in self.patterns:
            if pattern.search(text):
                return Match(class_name, term)
        return None
