"""Query expansion by relevance feedback: search terms for a class, taken from the titles of the
images the teacher confidently puts in it.

A term is a run of one to MAX_WORDS words of a title (normalised: lower case, punctuation as
spaces), without stop words at either end. For class c, each term has
    support  the confident images of c whose title holds it (crawled for any class: the pool
             often holds images of c crawled for another class, and their titles name c in
             words the class name does not use)
    purity   support / the confident images of any class whose title holds it (an image the
             teacher confidently puts in another class counts against the term; one it is
             unsure of is no evidence either way)
Terms with support >= MIN_SUPPORT and purity >= MIN_PURITY are taken best first (support x
purity, shorter first on ties), skipping a term whose images are all images of a term already
taken, and terms that hold every word of a term taken or searched before (a search for
them finds a part of what that term's search finds).

Grounding (`trusted`): the teacher's judgement is one piece of evidence, and a weak teacher is
confidently wrong about whole topics (bench/results/crawl_loop.txt: spiny lobsters as frogs,
rugby balls as horses). A grounded term must also be tied to the class by the web's own text
and links, without the teacher: it is on a title that holds one of the class's trusted terms
(its name, keywords and terms taken before: "tabby" on "tabby cat"), or on an image the crawl
reached from a page holding such a title, on a page that links back to one (the `linked_for`
column: the "bullfrog" gallery, linked from and back to the "tailed frog" gallery). One link
is not enough: pages link to unrelated pages too (the "tailed frog" gallery to "spiny
lobster", which the benchmark's teacher calls a frog), and a topic the web relates to the class
links both ways. Trust so grows from the class names, round by round, and a class no text ties
to anything gets no new terms.

With that second piece of evidence, the teacher's need not be absolute: a grounded term's
purity must reach MIN_PURITY or the purity of the class's own named images (those whose title
holds a trusted term), whichever is lower, and the class must still be the teacher's most
frequent confident judgement of the term's images. A teacher that agrees with only a third of
the German shepherds the name "dog" finds is as sure of a Chihuahua linked both ways with them;
"police" (on "German police dog") is refused once police vans are judged.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import pyarrow as pa

from crawler.keywords import normalise
from steer.options import MIN_PURITY

MAX_WORDS = 3
MIN_SUPPORT = 2
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "at",
        "by",
        "for",
        "from",
        "in",
        "into",
        "is",
        "it",
        "of",
        "on",
        "or",
        "the",
        "to",
        "with",
        "my",
        "our",
        "your",
        "this",
        "that",
        "photo",
        "image",
        "picture",
        "jpg",
        "jpeg",
        "png",
        "file",
    ]
)


@dataclass(frozen=True)
class Term:
    text: str
    support: int
    purity: float

    @property
    def score(self) -> float:
        return self.support * self.purity


def title_terms(title: str) -> set[str]:
    words = normalise(title).split()
    out = set()
    for n in range(1, MAX_WORDS + 1):
        for i in range(len(words) - n + 1):
            run = words[i : i + n]
            if run[0] in STOP_WORDS or run[-1] in STOP_WORDS or any(w.isdigit() for w in run):
                continue
            if n == 1 and len(run[0]) < 3:
                continue
            out.add(" ".join(run))
    return out


def expand(
    table: pa.Table,
    classes: list[str],
    teacher_id: str,
    min_confidence: float,
    used: set[str],
    per_class: int,
    *,
    min_support: int = MIN_SUPPORT,
    min_purity: float = MIN_PURITY,
    trusted: dict[str, set[str]] | None = None,
) -> dict[str, list[Term]]:
    """Up to `per_class` new terms for each of `classes`, from a scored manifest (steer.score);
    `used` holds the terms already searched (normalised). With `trusted` (per class, its
    trusted terms, normalised), only grounded terms are taken."""
    scored = table.column_names
    if "teacher_id" not in scored or "title" not in scored:
        return {c: [] for c in classes}
    columns = ["title", "status", "teacher_id", "teacher_class", "teacher_confidence"]
    rows = table.select(columns + [c for c in ["linked_for"] if c in scored]).to_pylist()
    grounded = None if trusted is None else grounded_terms(rows, {c: trusted.get(c, set())
                                                                  for c in classes})  # fmt: skip
    images_of: dict[str, set[int]] = defaultdict(set)  # term -> scored images holding it
    confident_any: Counter = Counter()  # term -> confident images (any class) holding it
    confident: dict[str, Counter] = defaultdict(Counter)  # class -> term -> confident images
    # class -> its named images (titles with a trusted term) the teacher is sure of, and of those
    # the ones it puts in the class
    named: dict[str, list[int]] = {c: [0, 0] for c in trusted or {}}
    for i, row in enumerate(rows):
        if row["status"] != "kept" or row["teacher_id"] != teacher_id or not row["title"]:
            continue
        terms = title_terms(row["title"])
        for term in terms:
            images_of[term].add(i)
        if row["teacher_confidence"] >= min_confidence:
            confident[row["teacher_class"]].update(terms)
            confident_any.update(terms)
            for c in named:
                if terms & trusted[c]:
                    named[c][0] += 1
                    named[c][1] += row["teacher_class"] == c
    out = {}
    for c in classes:
        candidates = [
            Term(term, n, n / confident_any[term])
            for term, n in confident[c].items()
            if n >= min_support and term not in used and (grounded is None or term in grounded[c])
        ]
        least = min_purity
        if c in named and named[c][0]:
            least = min(least, named[c][1] / named[c][0])
        candidates = [t for t in candidates if t.purity >= least
                      and t.support >= max(confident[o][t.text] for o in confident)]  # fmt: skip
        candidates.sort(key=lambda t: (-t.score, len(t.text.split()), t.text))
        taken: list[Term] = []
        searched = [set(t.split()) for t in used]
        for term in candidates:
            if len(taken) == per_class:
                break
            words = set(term.text.split())
            if any(images_of[term.text] <= images_of[t.text] for t in taken) or any(
                words >= s for s in searched + [set(t.text.split()) for t in taken]
            ):
                continue
            taken.append(term)
        out[c] = taken
    return out


def grounded_terms(rows: list[dict], trusted: dict[str, set[str]]) -> dict[str, set[str]]:
    """Per class, the title terms tied to it without the teacher: those of every title holding
    one of its trusted terms, and of every image the crawl found linked both ways with a page
    of such a title (`linked_for`)."""
    out: dict[str, set[str]] = {c: set() for c in trusted}
    for row in rows:
        if not row["title"]:
            continue
        terms = title_terms(row["title"])
        for c, known in trusted.items():
            if row.get("linked_for") == c or terms & known:
                out[c] |= terms
    return out
