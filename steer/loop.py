"""The crawl loop: crawl, let the teacher score the pool, and crawl again for the classes that
have too few useful images, with search terms the teacher's judgement found.

Round 1 is the crawl as asked (class names and keywords). After each round every new kept image
is scored (steer.score); a class is thin while its useful images are under the target. The
next round searches, for each thin class only, new terms from the titles of the images the
teacher confidently puts in that class (steer.feedback: relevance feedback), and may store up
to twice the missing count of new images for it. By default (`grounded`) a term must also be
tied to the class by the web's text and links, not only by the teacher (steer.feedback): the
teacher's confident mistakes (spiny lobsters as frogs) would otherwise become searches that
fill the class with them. With `follow_pages`, it also crawls (site
source, one link deep) the pages where the teacher found most images of a thin class, taking
every image there for the teacher to judge: focused crawling, off by default because the
benchmark found it lowers precision. With `probe_images`, after each round a probe crawls that
many images from the pages linked (two deep) from the thin classes' pages into a side pool, the
teacher scores them, and their titles join the pool's for relevance feedback: terms for a thin
class no pool image carries (the "bullfrog" gallery linked both ways with the "tailed frog"
one); the side pool is then removed, never distilled from. Each round is its own crawl (crawl id
<id>-r<k>, its own stats in POOL/crawls/ and in Redis) run in a child process (a Twisted reactor
runs once per process), with the same options, so the politeness limits hold in every round.

The loop stops by itself: every class at its target, the rounds used, no new term to search for
any thin class, or a round that stored nothing new. Every image records its round (manifest
column crawl_round) and the term that found it (keyword); POOL/crawls/<id>/loop.json and, with a
Redis, the hash kd3:crawl:<id>:loop record each round's terms, requests and yields.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from common.files import atomic_write
from crawler.errors import CrawlError
from crawler.keywords import normalise, terms
from crawler.options import CrawlJob
from crawler.run import new_crawl_id
from pool.classes import ClassInfo
from pool.store import Pool
from steer import feedback
from steer.options import LoopOptions
from steer.score import PoolScore, score_pool

NEW_PER_MISSING = 2  # a thin class may store this many new images per missing useful one
SEED_PAGES = 8  # pages per thin class the next round's site crawl starts from
FOCUS_DEPTH = 1  # links followed from those pages
PROBE_SEEDS = 10  # pool pages a probe starts from
PROBE_DEPTH = 2  # links it follows from them


@dataclass
class Round:
    round: int
    crawl_id: str
    queries: dict[str, list[str]]  # the terms searched per class (round 1: names and keywords)
    stored: int = 0  # new images stored
    requests: int = 0  # HTTP requests made
    useful: dict[str, int] = field(default_factory=dict)  # per class, after the round
    terms: dict[str, list[dict]] = field(default_factory=dict)  # next terms, with their support
    probe_stored: int = 0  # images the probe after the round crawled into its side pool
    probe_requests: int = 0


@dataclass
class LoopResult:
    crawl_id: str
    pool: str
    target: int
    rounds: list[Round] = field(default_factory=list)
    stopped: str = ""  # why the loop ended
    score: PoolScore | None = None

    def to_dict(self) -> dict:
        body = asdict(self)
        body["score"] = self.score.to_dict() if self.score else None
        return body

    def summary(self) -> str:
        lines = [f"crawl loop {self.crawl_id}: {len(self.rounds)} rounds, stopped: {self.stopped}"]
        names = list(self.rounds[0].useful) if self.rounds else []
        width = max([len("class"), *(len(n) for n in names)])
        lines.append(f"{'class':<{width}} " + " ".join(f"{'r' + str(r.round):>6}"
                                                       for r in self.rounds))  # fmt: skip
        for name in names:
            lines.append(f"{name:<{width}} " + " ".join(f"{r.useful[name]:>6}"
                                                        for r in self.rounds))  # fmt: skip
        lines.append(f"{'requests':<{width}} " + " ".join(f"{r.requests:>6}" for r in self.rounds))
        return "\n".join(lines)


def crawl_loop(
    job: CrawlJob,
    teacher: str | Path,
    options: LoopOptions | None = None,
    *,
    teacher_load: dict | None = None,
    log: Callable[[str], None] = print,
) -> LoopResult:
    options = options or LoopOptions()
    base = job.crawl_id or new_crawl_id()
    target = options.useful_per_class or job.options.per_class
    if not target:
        raise CrawlError("the crawl loop needs a target: --useful-per-class or --per-class")
    result = LoopResult(base, job.out, target)
    seen: set[str] = set()  # pages already crawled from
    used = {c.name: {normalise(t) for t in terms(ClassInfo(c.name, tuple(c.keywords)))}
            for c in job.classes}  # fmt: skip
    queries = None  # round 1: the classes' names and keywords
    targets = seeds = None
    leads: dict[str, set[str]] = {}  # per class, pages where the teacher found most of it
    for k in range(1, options.rounds + 1):
        crawl_id = f"{base}-r{k}"
        this = _round_job(job, k, crawl_id, queries, targets, seeds)
        record = Round(k, crawl_id, queries or {c.name: sorted(used[c.name]) for c in job.classes})
        stats = _crawl(this)
        record.stored = int(stats.get("images_stored", 0))
        record.requests = int(stats.get("requests", 0))
        score = score_pool(job.out, teacher, options.score_options(), teacher_load=teacher_load,
                           log=log)  # fmt: skip
        result.score = score
        record.useful = {c.name: c.useful for c in score.classes}
        result.rounds.append(record)
        log(f"round {k}: {record.stored} new images, {record.requests} requests; useful "
            + ", ".join(f"{n} {u}" for n, u in record.useful.items()))  # fmt: skip
        thin = [c.name for c in score.classes if c.useful < target]
        stop = _why_stop(k, options.rounds, thin, record)
        if not stop:
            table = Pool.open(job.out).manifest()
            judged, links = table, {}
            trusted = used if options.grounded else None
            homes = _home_pages(table, thin, trusted) if trusted is not None else {}
            # explore beyond the pool for terms it cannot give; a second pass starts at once
            # from the pages the first found for a class no page names (its leads)
            only = None
            for tag in (f"r{k}", f"r{k}b") if options.probe_images else ():
                probe = _probe(job, base, tag, table, only or thin, options.probe_images, seen,
                               homes, leads if trusted is not None else None)  # fmt: skip
                if probe is None:
                    break
                stats = _crawl(probe)
                record.probe_stored += int(stats.get("images_stored", 0))
                record.probe_requests += int(stats.get("requests", 0))
                score_pool(probe.out, teacher, options.score_options(), teacher_load=teacher_load,
                           log=log)  # fmt: skip
                judged = _together(judged, Pool.open(probe.out).manifest())
                links |= _links(probe)
                shutil.rmtree(probe.out)  # what it found is in `judged`; it is no pool to keep
                log(f"round {k} probe: {record.probe_stored} images judged")
                votes = feedback.page_votes(judged.to_pylist(), score.teacher_id,
                                            options.min_confidence)  # fmt: skip
                for c in thin:
                    leads.setdefault(c, set()).update(feedback.teacher_pages(votes, c))
                only = [c for c in thin if c not in homes and leads[c] - seen]
                if trusted is None or not only:
                    break
            found = feedback.expand(judged, thin, score.teacher_id, options.min_confidence,
                                    set().union(*used.values()), options.terms_per_round,
                                    min_purity=options.min_purity, trusted=trusted,
                                    links=links)  # fmt: skip
            record.terms = {c: [asdict(t) for t in found[c]] for c in thin if found[c]}
            queries = {c: [t.text for t in found[c]] for c in thin if found[c]}
            seeds = {}
            if options.follow_pages:
                seeds = _seed_pages(table, thin, score.teacher_id, options.min_confidence, seen)
            seen |= set(seeds)
            stop = "" if queries or seeds else "no new search term or page for the thin classes"
            for c, new in queries.items():
                used[c] |= set(new)
            targets = _targets(table, score, thin, target)
        _record(result, job, stop)
        if stop:
            break
    return result


def _round_job(job: CrawlJob, k: int, crawl_id: str, queries, targets, seeds) -> CrawlJob:
    """Round k's crawl: the job as asked for round 1; later, exactly the new terms of the thin
    classes and, when the teacher found them on pages, a site crawl from those pages."""
    update = {"crawl_id": crawl_id, "round": k, "queries": queries, "class_targets": targets}
    if seeds:
        options = job.options.model_copy(update={
            "sources": list(dict.fromkeys([*job.options.sources, "site"])),
            "seeds": list(seeds),
            "settings": {**job.options.settings, "KD3_SITE_DEPTH": FOCUS_DEPTH},
        })  # fmt: skip
        update |= {"options": options, "seed_classes": seeds}
    return job.model_copy(update=update)


def _probe(job: CrawlJob, base: str, tag: str, table, thin: list[str], images: int,
           seen: set[str], homes: dict[str, list[str]],
           leads: dict[str, set[str]] | None) -> CrawlJob | None:  # fmt: skip
    """The crawl of a probe (`tag`: r<round>, r<round>b for a second pass): up to `images` images
    into a side pool (POOL/crawls/<base>/probe-<tag>) that the teacher scores for new terms,
    then removed: it is never distilled from. It follows links PROBE_DEPTH deep and records
    them (feedback's grounding), from up to PROBE_SEEDS pages per class not crawled from before:
    - grounded (`leads` given), for each thin class, its home pages (`homes`: a title holding
      one of its trusted terms); for a class without one, the pages where an earlier probe
      found the teacher sure of it (`leads`: the cycles through them ground its terms);
    - for the thin classes with neither, or when not grounded: any of the pool's pages.
    An image is filed under the class whose pages led to it, only to be taken: the teacher's
    judgement is what counts. The pool's own images are not fetched again. None when there is
    no page to start from."""
    if "page_url" not in table.column_names:
        return None
    rng = np.random.default_rng(list(tag.encode()))
    starts = {c: homes[c] for c in thin if c in homes}
    if leads is not None:
        starts |= {c: sorted(leads[c] - seen) for c in thin
                   if c not in starts and leads.get(c, set()) - seen}  # fmt: skip
    orphans = [c for c in thin if not starts.get(c)]
    if orphans:  # explore from anywhere for the classes no page of the pool names
        starts[orphans[0]] = sorted({p for p in table["page_url"].to_pylist() if _on_web(p)})
    seeds: dict[str, tuple[str, int]] = {}
    for c, pages in starts.items():
        pages = [p for p in pages if p not in seen and p not in seeds]
        for i in rng.choice(len(pages), min(PROBE_SEEDS, len(pages)), False):
            seeds[pages[i]] = (c, 0)
    if not seeds:
        return None
    seen |= set(seeds)
    classes = {c for c, _ in seeds.values()}
    options = job.options.model_copy(update={
        "sources": ["site"], "seeds": list(seeds), "per_class": -(-images // len(classes)),
        "settings": {**job.options.settings, "KD3_SITE_DEPTH": PROBE_DEPTH},
    })  # fmt: skip
    return job.model_copy(update={
        "options": options, "out": str(Path(job.out) / "crawls" / base / f"probe-{tag}"),
        "crawl_id": f"{base}-probe-{tag}", "round": 1, "queries": None, "class_targets": None,
        "seed_classes": seeds,
        "record_links": True,
        "skip_pool": job.out,  # judged already
    })  # fmt: skip


def _on_web(page: str | None) -> bool:
    return bool(page) and page.startswith(("http://", "https://"))


def _home_pages(table, classes: list[str], trusted: dict[str, set[str]]) -> dict[str, list[str]]:
    """Per class that has any, the pool's web pages that are its home pages (feedback)."""
    if "page_url" not in table.column_names:
        return {}
    rows = [r for r in table.select(["page_url", "title"]).to_pylist() if _on_web(r["page_url"])]
    homes = feedback.home_pages(rows, {c: trusted.get(c, set()) for c in classes})
    return {c: sorted(pages) for c, pages in homes.items() if pages}


def _together(*tables):
    """The columns relevance feedback reads, of several scored manifests, as one table."""
    import pyarrow as pa

    cols = ["title", "status", "teacher_id", "teacher_class", "teacher_confidence", "page_url"]
    return pa.concat_tables([t.select(cols) for t in tables])


def _links(probe: CrawlJob) -> dict[str, list[str]]:
    """The probe's pages and the pages each links to ({} when it recorded none)."""
    from crawler.stats import links_path

    try:
        return json.loads(links_path(probe.out, probe.crawl_id).read_text())
    except FileNotFoundError:
        return {}


def _seed_pages(table, thin: list[str], teacher_id: str, min_confidence: float,
                seen: set[str]) -> dict[str, tuple[str, int]]:  # fmt: skip
    """Per thin class, the SEED_PAGES pages (not crawled from before) where the teacher is sure
    of the most images of it: {page: (class, how many)}."""
    if "page_url" not in table.column_names:
        return {}
    rows = table.select(["page_url", "status", "teacher_id", "teacher_class",
                         "teacher_confidence"]).to_pylist()  # fmt: skip
    counts: dict[str, Counter] = {c: Counter() for c in thin}
    for r in rows:
        if (r["status"] == "kept" and r["teacher_id"] == teacher_id and r["page_url"]
                and r["teacher_class"] in counts and r["teacher_confidence"] >= min_confidence
                and _on_web(r["page_url"])):  # fmt: skip
            counts[r["teacher_class"]][r["page_url"]] += 1
    out: dict[str, tuple[str, int]] = {}
    for c in thin:
        for page, n in counts[c].most_common():
            if len([p for p in out.values() if p[0] == c]) == SEED_PAGES:
                break
            if page not in seen and page not in out:
                out[page] = (c, n)
    return out


def _why_stop(k: int, rounds: int, thin: list[str], record: Round) -> str:
    if not thin:
        return "every class has its useful images"
    if k > 1 and record.stored == 0:
        return "the round found nothing new"
    if k == rounds:
        return f"all {rounds} rounds used"
    return ""


def _targets(table, score: PoolScore, thin: list[str], target: int) -> dict[str, int]:
    """Per class, the images the pool may hold after the next round: what it holds now, plus
    NEW_PER_MISSING per missing useful image for a thin class."""
    kept = table.filter(pc.equal(table["status"], "kept"))
    held = {c.name: 0 for c in score.classes}
    for name in kept["class_name"].to_pylist():
        if name in held:
            held[name] += 1
    missing = {c.name: target - c.useful for c in score.classes}
    return {n: held[n] + (NEW_PER_MISSING * missing[n] if n in thin else 0) for n in held}


def _crawl(job: CrawlJob) -> dict:
    """Run one round's crawl in a child process; its stats."""
    from crawler.stats import read_pool_stats

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.json"
        path.write_text(job.model_dump_json())
        done = subprocess.run([sys.executable, "-m", "crawler.run", "--job", str(path)],
                              capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"the crawler exited with {done.returncode}"
        raise CrawlError(f"round {job.round}: {last.removeprefix('crawl: error: ')}")
    return read_pool_stats(Path(job.out), job.crawl_id)


def _record(result: LoopResult, job: CrawlJob, stop: str) -> None:
    """loop.json in the pool, and the hash kd3:crawl:<id>:loop in Redis when there is one."""
    result.stopped = stop
    path = Path(job.out) / "crawls" / result.crawl_id / "loop.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(result.to_dict(), indent=2) + "\n").encode())
    if job.redis_url:
        from common.services import redis_client

        last = result.rounds[-1]
        client = redis_client(job.redis_url)
        key = f"kd3:crawl:{result.crawl_id}:loop"
        client.hset(key, mapping={
            "rounds": len(result.rounds),
            "stopped": stop,
            f"round:{last.round}:crawl_id": last.crawl_id,
            f"round:{last.round}:queries": json.dumps(last.queries),
            f"round:{last.round}:stored": last.stored,
            f"round:{last.round}:requests": last.requests,
            f"round:{last.round}:probe_stored": last.probe_stored,
            **{f"round:{last.round}:useful:{n}": u for n, u in last.useful.items()},
        })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """`python -m steer.loop --job FILE --teacher CKPT [--options JSON] [--teacher-arch A]`:
    the crawl loop in a child process (the worker's crawl stage, when a pipeline loops), with
    crawler.run's conventions: the last stdout line is a summary, a user error is one last
    stderr line `crawl: error: MESSAGE` with exit 2, an interrupt exits 130."""
    import argparse

    from common.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m steer.loop")
    parser.add_argument("--job", required=True, help="a CrawlJob as JSON")
    parser.add_argument("--teacher", required=True, help="the teacher checkpoint")
    parser.add_argument("--teacher-arch", help="its architecture, for a bare state_dict")
    parser.add_argument("--options", default="{}", help="LoopOptions as JSON")
    args = parser.parse_args(argv)
    try:
        job = CrawlJob.model_validate_json(Path(args.job).read_text())
        options = LoopOptions.model_validate_json(args.options)
        load = {"arch": args.teacher_arch} if args.teacher_arch else None
        result = crawl_loop(job, args.teacher, options, teacher_load=load,
                            log=lambda line: print(line, file=sys.stderr, flush=True))  # fmt: skip
    except UserError as exc:
        print(f"crawl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(" ".join(result.summary().splitlines()[:1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
