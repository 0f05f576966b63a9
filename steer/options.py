"""What `kd3 pool score` and the crawl loop are asked to do: the one place their defaults are
written.

Light imports only (stdlib, pydantic): `kd3 --help` reads it.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

MIN_CONFIDENCE = 0.5  # the teacher gives the class at least half its probability
# A new search term's purity (steer/feedback.py). Chosen on a validation split for the loop on
# the teacher's judgement alone (--no-grounded): default KD3 students from the looped web-pool
# testbed, on 5,000 CIFAR-10 *train* images, 36.1% at 0.6 against 29.1% at 0.8
# (bench/results/crawl_loop.txt). A grounded term needs only this or the purity of its class's
# named images, whichever is lower.
MIN_PURITY = 0.6


class ScoreOptions(BaseModel, extra="forbid"):
    min_confidence: float = Field(
        MIN_CONFIDENCE,
        ge=0.0,
        le=1.0,
        description="an image is useful when the teacher agrees with its class at least this "
        "confidently",
    )
    class_map: dict[str, str] = Field(
        {},
        description="rename a class of the pool to the teacher's class (repeat the flag for "
        "more); without it, the pool's classes must be among the teacher's by name",
        json_schema_extra={"metavar": "NAME=TEACHER_NAME"},
    )
    device: str | None = Field(
        None,
        description="where the teacher runs (cpu, cuda, cuda:1, mps)",
        json_schema_extra={"default_help": "the best available"},
    )


class LoopOptions(ScoreOptions):
    """The crawl loop (steer.loop): rounds of crawl, score, and crawl again for thin classes."""

    rounds: int = Field(3, ge=1, le=20, description="crawl rounds at most, the first included")
    useful_per_class: int | None = Field(
        None,
        ge=1,
        description="useful images wanted per class; a class under it is crawled again",
        json_schema_extra={"default_help": "--per-class"},
    )
    min_purity: float = Field(
        MIN_PURITY,
        ge=0.0,
        le=1.0,
        description="a new search term for a class must be on at least this share of the "
        "images the teacher is sure of that carry it (steer/feedback.py)",
    )
    follow_pages: bool = Field(
        False,
        description="also crawl, for a thin class, every image on the pages where the teacher "
        "found it and on the pages they link to (more images, lower precision: "
        "bench/results/crawl_loop.txt)",
    )
    grounded: bool = Field(
        True,
        description="a new search term must also be tied to the class without the teacher: on "
        "a title holding the class's name, a keyword or a term taken before, or on a page "
        "that such a title's page links to and that links back (off: the teacher's judgement "
        "alone, which also finds classes no name finds, at lower precision: "
        "bench/results/crawl_loop.txt)",
    )
    terms_per_round: int = Field(
        5, ge=1, le=50, description="new search terms per thin class and round, at most"
    )
    probe_images: int = Field(
        2000,
        ge=0,
        le=1_000_000,
        description="explore: after each round, crawl up to N images from the pages linked "
        "(2 deep) from the thin classes' own pages (any of the pool's with --no-grounded) into "
        "a side pool, never distilled from, whose images the teacher is sure of give search "
        "terms the pool cannot (0: off; bench/results/crawl_loop.txt)",
        json_schema_extra={"metavar": "N"},
    )

    def score_options(self) -> ScoreOptions:
        return ScoreOptions(**{k: getattr(self, k) for k in ScoreOptions.model_fields})
