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
purity), skipping a term whose images of the class (those the teacher is sure are of it) are
all images of a term already taken, or of a searched term it is part of (the judged images
give no sign that it finds more of the class: "black" after "black stork"), and terms that
hold every word of a term taken or searched before (a search for them finds a part of what
that term's search finds). On ties the longer term comes first: "black stork" rather than
"black" when the judged images carry both alike, since nothing shows the short one finds more
of the class, and on the web it finds more of everything else (black widows, "black Maria"
police vans).

Grounding (`trusted`): the teacher's judgement is one piece of evidence, and a weak teacher is
confidently wrong about whole topics (bench/results/crawl_loop.txt: spiny lobsters as frogs,
rugby balls as horses). A grounded term must also be tied to the class by the web's own text
and links, without the teacher:
- it is on a title that holds one of the class's trusted terms (its name, keywords and terms
  taken before: "tabby" on "tabby cat"); the pages of such titles are the class's home pages;
- or it is on a page on a short cycle of links through a home page: reached from one within
  CYCLE - 1 links, and linking to one (`links`, from the probe's crawl: the "bullfrog" gallery,
  linked from and back to the "tailed frog" one). One link is not enough: pages link to
  unrelated pages too (the "tailed frog" gallery to "spiny lobster", which the benchmark's
  teacher calls a frog), and a topic the web relates to the class links back;
- a class no title names (the web pool's "bird": geese, storks, penguins) has no home page.
  Its anchors are then the pages where it is the teacher's judgement of most confident images,
  and a term is grounded on such a page that is on a short cycle through other such pages about
  something else (no title word in common): two topics the teacher puts in the class that the
  web also relates to each other, where one confident mistake (a page of rugby balls as horses)
  stands alone.
Trust so grows from the class names, round by round.

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
CYCLE = 3  # links in the longest cycle through a class's pages that ties a page to it
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
    links: dict[str, list[str]] | None = None,
) -> dict[str, list[Term]]:
    """Up to `per_class` new terms for each of `classes`, from a scored manifest (steer.score);
    `used` holds the terms already searched (normalised). With `trusted` (per class, its
    trusted terms, normalised), only grounded terms are taken; `links` ({page: pages it links
    to}) are the pages' links a crawl recorded."""
    scored = table.column_names
    if "teacher_id" not in scored or "title" not in scored:
        return {c: [] for c in classes}
    columns = ["title", "status", "teacher_id", "teacher_class", "teacher_confidence"]
    rows = table.select(columns + [c for c in ["page_url"] if c in scored]).to_pylist()
    grounded = None
    if trusted is not None:
        known = {c: trusted.get(c, set()) for c in classes}
        grounded = grounded_terms(rows, known, links or {}, teacher_id, min_confidence)
    confident_any: Counter = Counter()  # term -> confident images (any class) holding it
    # class -> term -> the images holding the term that the teacher confidently puts in the class
    evidence: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    # class -> its named images (titles with a trusted term) the teacher is sure of, and of those
    # the ones it puts in the class
    named: dict[str, list[int]] = {c: [0, 0] for c in trusted or {}}
    for i, row in enumerate(rows):
        if row["status"] != "kept" or row["teacher_id"] != teacher_id or not row["title"]:
            continue
        terms = title_terms(row["title"])
        if row["teacher_confidence"] >= min_confidence:
            for term in terms:
                evidence[row["teacher_class"]][term].add(i)
            confident_any.update(terms)
            for c in named:
                if terms & trusted[c]:
                    named[c][0] += 1
                    named[c][1] += row["teacher_class"] == c
    out = {}
    for c in classes:
        mine = evidence.get(c, {})
        candidates = [
            Term(term, len(images), len(images) / confident_any[term])
            for term, images in mine.items()
            if len(images) >= min_support
            and term not in used
            and (grounded is None or term in grounded[c])
        ]
        least = min_purity
        if c in named and named[c][0]:
            least = min(least, named[c][1] / named[c][0])
        candidates = [t for t in candidates if t.purity >= least and t.support
                      >= max(len(e.get(t.text, ())) for e in evidence.values())]  # fmt: skip
        candidates.sort(key=lambda t: (-t.score, -len(t.text.split()), t.text))
        taken: list[Term] = []
        searched = [set(t.split()) for t in used]
        for term in candidates:
            if len(taken) == per_class:
                break
            words = set(term.text.split())
            wider = [t.text for t in taken] + [u for u in used if words < set(u.split())]
            if any(mine[term.text] <= mine.get(t, set()) for t in wider) or any(
                words >= s for s in searched + [set(t.text.split()) for t in taken]
            ):
                continue
            taken.append(term)
        out[c] = taken
    return out


def grounded_terms(rows: list[dict], trusted: dict[str, set[str]], links: dict[str, list[str]],
                   teacher_id: str, min_confidence: float) -> dict[str, set[str]]:  # fmt: skip
    """Per class, the title terms tied to it by text or links (see the module's docstring)."""
    out: dict[str, set[str]] = {c: set() for c in trusted}
    on_page: dict[str, set[str]] = defaultdict(set)  # page -> the title terms of its images
    for row in rows:
        terms = title_terms(row["title"] or "")
        for c, known in trusted.items():
            if terms & known:
                out[c] |= terms
        if row.get("page_url"):
            on_page[row["page_url"]] |= terms
    homes = home_pages(rows, trusted)
    votes = page_votes(rows, teacher_id, min_confidence)
    for c in trusted:
        if homes[c]:
            reached = _within(links, homes[c], CYCLE - 1)
            for page, targets in links.items():
                if page in reached and page not in homes[c] and homes[c] & set(targets):
                    out[c] |= on_page[page]
            continue
        anchors = teacher_pages(votes, c)
        for page in anchors & links.keys():
            # the other anchors about something else, on a cycle with it
            near = {a for a in anchors - {page} if not on_page[a] & on_page[page]}
            if near & set(links[page]) and page in _within(links, near, CYCLE - 1):
                out[c] |= on_page[page]
    return out


def home_pages(rows: list[dict], trusted: dict[str, set[str]]) -> dict[str, set[str]]:
    """Per class, its home pages: the pages of titles holding one of its trusted terms."""
    homes: dict[str, set[str]] = {c: set() for c in trusted}
    for row in rows:
        if row.get("page_url"):
            terms = title_terms(row["title"] or "")
            for c, known in trusted.items():
                if terms & known:
                    homes[c].add(row["page_url"])
    return homes


def page_votes(rows: list[dict], teacher_id: str, min_confidence: float) -> dict[str, Counter]:
    """Per page, how many of its images the teacher confidently puts in each class."""
    votes: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        if (row.get("page_url") and row["status"] == "kept" and row["teacher_id"] == teacher_id
                and row["teacher_confidence"] >= min_confidence):  # fmt: skip
            votes[row["page_url"]][row["teacher_class"]] += 1
    return votes


def teacher_pages(votes: dict[str, Counter], c: str) -> set[str]:
    """The pages where class c is most of the teacher's confident judgements (at least
    MIN_SUPPORT images): an orphan class's anchors."""
    return {p for p, v in votes.items() if v[c] >= MIN_SUPPORT and 2 * v[c] > v.total()}


def _within(links: dict[str, list[str]], start: set[str], steps: int) -> set[str]:
    """The pages reached from `start` in 1..steps links."""
    reached, frontier = set(), set(start)
    for _ in range(steps):
        frontier = {t for p in frontier for t in links.get(p, ())} - reached
        reached |= frontier
    return reached
