"""The teacher in the loop, end to end with real parts: a generated web on loopback (a search
API in Openverse's shape and galleries), real crawls in child processes, a real redis-server
and a real (tiny) teacher.

The generated world: four colour classes (tests/distill/synthetic.py), each drawn under fine
labels whose captions rarely say the class name ("crimson", "red crimson"), as the web captions
a golden retriever rather than a dog.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from crawler.localweb import LocalWeb
from crawler.options import CrawlJob, CrawlOptions
from crawler.testbed import Testbed
from pool.store import Pool
from steer.feedback import expand, title_terms
from steer.loop import crawl_loop
from steer.options import LoopOptions, ScoreOptions
from steer.score import score_pool
from tests.distill.synthetic import NAMES, make_images
from workers.local_redis import RedisServer

ROOT = Path(__file__).resolve().parents[2]
torch.set_num_threads(1)

# fine labels per class: (synset names, class index); the last is a distractor (noise)
SYNSETS = [
    ("crimson, red crimson", 0),
    ("scarlet", 0),
    ("emerald, green emerald", 1),
    ("lime", 1),
    ("navy, navy blue", 2),
    ("azure", 2),
    ("lemon, lemon yellow", 3),
    ("gold", 3),
    ("tv static, red static", -1),
]
PER_SYNSET = 24
FAST = {
    "AUTOTHROTTLE_ENABLED": False,
    "CONCURRENT_REQUESTS_PER_DOMAIN": 8,
    "KD3_FLUSH_SECONDS": 0.3,
    "KD3_STATS_FLUSH_SECONDS": 0.3,
    "KD3_QUERY_TEMPLATES": ["{}"],
    "LOG_LEVEL": "WARNING",
}


def world_images(seed: int):
    """(images, synset of each): PER_SYNSET images per synset, 32x32."""
    x, y = make_images(8 * PER_SYNSET * 3, size=32, seed=seed, distractors=PER_SYNSET)
    images, synsets = [], []
    for s, (_, label) in enumerate(SYNSETS):
        pick = np.nonzero(y == label)[0][: PER_SYNSET if label >= 0 else None]
        if label >= 0:  # two synsets share a class: take different images for each
            pick = np.nonzero(y == label)[0][(s % 2) * PER_SYNSET : (s % 2 + 1) * PER_SYNSET]
        images.append(x[pick])
        synsets += [s] * len(pick)
    return np.concatenate(images), np.array(synsets)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    from distill.data import load_images
    from distill.trainer import TrainConfig, Trainer
    from tests.distill.synthetic import write_npz

    root = tmp_path_factory.mktemp("steer-teacher")
    train = write_npz(root / "train.npz", 256, size=32, seed=1)
    cfg = TrainConfig(method="supervised", student="resnet8", epochs=3, batch_size=64, lr=0.05)
    Trainer(cfg, load_images(train, 32), root / "run", log=lambda _m: None).run(
        final_name="teacher.pt"
    )
    return root / "run" / "teacher.pt"


@pytest.fixture
def web():
    images, synsets = world_images(seed=5)
    bed = Testbed(images, synsets, [n for n, _ in SYNSETS], seed=0)
    with LocalWeb() as server:
        yield bed.serve(server)


def job(out: Path, bed: Testbed, redis_url: str | None = None, per_class: int = 40) -> CrawlJob:
    options = CrawlOptions(
        sources=["openverse"],
        per_class=per_class,
        source_urls={"openverse": bed.api_url},
        allow_networks=["127.0.0.1/32"],
        settings=FAST,
    )
    return CrawlJob(classes=NAMES, options=options, out=str(out), redis_url=redis_url)


def test_the_testbed_captions_by_fine_label_and_searches_caption_words(web):
    crimson = [i for i, s in enumerate(web.synsets) if s == 0]
    said_red = [i for i in crimson if web.captions[i] == "red crimson"]
    assert 0 < len(said_red) < len(crimson)  # the class name finds only some of its images
    assert set(web.search("red")) >= set(said_red)
    assert set(web.search("crimson")) == set(crimson)
    assert web.search("scarlet red") == []  # every query word must be a caption word
    url = web.web.url(f"/img/{crimson[0]}.png")
    assert web.image_of(url) == crimson[0]


def test_title_terms_are_word_runs_without_stop_words():
    assert title_terms("My golden retriever, 2024") == {"golden", "retriever", "golden retriever"}
    assert "the dog" not in title_terms("the dog")


def test_pool_score_writes_columns_and_yields_and_rescoring_is_incremental(tmp_path, teacher):
    from pool.importer import import_into_pool
    from pool.options import ImportOptions
    from tests.distill.synthetic import write_npz

    npz = write_npz(tmp_path / "pool.npz", 60, size=32, seed=9, distractors=10)
    pool = tmp_path / "pool"
    import_into_pool(npz, pool, ImportOptions())
    result = score_pool(pool, teacher, ScoreOptions(min_confidence=0.5))
    assert result.scored_now == 70
    table = Pool.open(pool).manifest()
    for name in ("teacher_class", "teacher_confidence", "teacher_class_prob", "teacher_agrees"):
        assert table[name].null_count == (10 if name == "teacher_class_prob" else 0), name
    y = {r["sha256"]: r["class_name"] for r in table.to_pylist()}
    agree = [r["teacher_class"] == y[r["sha256"]] for r in table.to_pylist() if y[r["sha256"]]]
    assert np.mean(agree) > 0.9  # the teacher knows these classes
    by = result.by_name()
    assert sum(c.crawled for c in result.classes) == 60  # the noise has no class
    assert all(by[n].useful <= by[n].kept <= by[n].crawled for n in NAMES)
    assert sum(by[n].useful for n in NAMES) > 50
    assert score_pool(pool, teacher).scored_now == 0  # same teacher: nothing to do again

    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "pool", "score", str(pool), "--teacher", str(teacher)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "useful" in out.stdout and "red" in out.stdout
    report = json.loads((pool / "score" / "report.json").read_text())
    assert {c["name"] for c in report["classes"]} == set(NAMES)
    page = (pool / "score" / "report.html").read_text()
    assert page.count("<img") >= 8 and "../images/" in page


def test_pool_score_refuses_a_teacher_of_other_classes(tmp_path, teacher):
    from pool.classes import ClassList

    pool = Pool.create(tmp_path / "pool", ClassList.from_names(["cat", "dog"]))
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "pool", "score", str(pool.root), "--teacher",
         str(teacher)], capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cat" in lines[0] and "Traceback" not in out.stderr


def test_the_loop_finds_more_for_thin_classes_with_terms_from_confident_images(
    tmp_path, web, teacher
):
    with RedisServer() as redis:
        result = crawl_loop(job(tmp_path / "pool", web, redis.url), teacher,
                            LoopOptions(rounds=3, useful_per_class=40, probe_images=0), log=lambda _m: None)  # fmt: skip
        loop = redis.client().hgetall(f"kd3:crawl:{result.crawl_id}:loop")
        round_two = redis.client().hgetall(f"kd3:crawl:{result.crawl_id}-r2:stats")
    first, second = result.rounds[0], result.rounds[1]
    # Round 1 searched the class names; "red" finds only the crimson images captioned so.
    assert first.queries["red"] == ["red"]
    assert second.queries["red"][0] == "crimson"
    assert 0 < first.useful["red"] < second.useful["red"] <= PER_SYNSET  # all the crimson
    table = Pool.open(tmp_path / "pool").manifest()
    later = table.filter(pc.equal(table["crawl_round"], 2))
    assert later.num_rows == second.stored > 0
    assert set(later["keyword"].to_pylist()) <= {t for ts in second.queries.values() for t in ts}
    # every image found in round 2 for "red" is a crimson one (hidden truth of the testbed)
    for row in later.filter(pc.equal(later["class_name"], "red")).to_pylist():
        assert web.synsets[web.image_of(row["url"])] == 0
    assert result.stopped  # it ended by itself, and says why
    assert int(loop[b"rounds"]) == len(result.rounds)
    assert loop[b"stopped"].decode() == result.stopped
    assert int(loop[b"round:2:useful:red"]) == second.useful["red"]
    assert int(round_two[b"images_stored"]) == second.stored
    # later rounds skip what earlier rounds stored: no image is fetched twice
    assert all(web.web.hits(f"/img/{i}.png") <= 1 for i in range(len(web.images)))
    saved = json.loads((tmp_path / "pool" / "crawls" / result.crawl_id / "loop.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [r.round for r in result.rounds]


def test_a_round_that_finds_nothing_new_ends_the_loop_cleanly(tmp_path, teacher):
    # Every red image says "red ruby": round 1 finds them all, the term "ruby" only finds them
    # again.
    images, labels = make_images(80, size=32, seed=3)
    ruby = images[labels == 0][:12]
    bed = Testbed(ruby, np.zeros(len(ruby), int), ["red ruby"], seed=0)
    with LocalWeb() as server:
        bed.serve(server)
        result = crawl_loop(job(tmp_path / "pool", bed, per_class=40), teacher,
                            LoopOptions(rounds=4, probe_images=0), log=lambda _m: None)  # fmt: skip
    assert len(result.rounds) == 2
    assert result.rounds[1].queries == {"red": ["ruby"]}
    assert result.rounds[1].stored == 0
    assert result.stopped == "the round found nothing new"


def test_expansion_prefers_pure_terms_and_skips_redundant_ones():
    import pyarrow as pa

    rows = []
    for i, (title, top) in enumerate([
        ("German shepherd dog", "dog"), ("German shepherd dog", "dog"),
        ("German police dog", "dog"), ("German police dog", "dog"),
        ("police van", "truck"), ("police van", "truck"), ("police van", "truck"),
    ]):  # fmt: skip
        rows.append({"sha256": f"{i}", "title": title, "status": "kept", "teacher_id": "t",
                     "teacher_class": top, "teacher_confidence": 0.9})  # fmt: skip
    table = pa.Table.from_pylist(rows)
    found = expand(table, ["dog", "truck"], "t", 0.5, {"dog", "truck"}, 5)
    dog = [t.text for t in found["dog"]]
    assert dog[0] == "german"  # all four dogs, and nothing else
    assert "police" not in dog  # also on the vans
    assert "german shepherd" not in dog  # a subset of what "german" searches
    assert [t.text for t in found["truck"]][:1] == ["police van"]  # the vans say no more
    # A term holding every word of one searched before finds part of what that search found.
    again = [t.text for t in expand(table, ["dog"], "t", 0.5, {"dog", "german"}, 5)["dog"]]
    assert again and not any(set(t.split()) >= {"german"} for t in again)


def test_following_pages_takes_the_images_of_pages_where_the_teacher_found_a_thin_class(
    tmp_path, teacher
):
    images, synsets = world_images(seed=5)
    groups = [label for _, label in SYNSETS]  # a gallery links to its class's other gallery
    bed = Testbed(images, synsets, [n for n, _ in SYNSETS], groups=groups, seed=0)
    with LocalWeb() as server:
        bed.serve(server)
        result = crawl_loop(job(tmp_path / "pool", bed), teacher,
                            LoopOptions(rounds=2, useful_per_class=40, follow_pages=True, probe_images=0),
                            log=lambda _m: None)  # fmt: skip
        galleries = server.hits(bed.gallery_path(1))  # scarlet: no caption says "red"
    table = Pool.open(tmp_path / "pool").manifest()
    taken = table.filter(pc.equal(table["keyword"], "page")).to_pylist()
    assert galleries >= 1 and taken
    assert all(r["crawl_round"] == 2 and "/gallery/" in r["page_url"] for r in taken)
    scarlet = [r for r in taken if bed.synsets[bed.image_of(r["url"])] == 1]
    assert scarlet  # reached through gallery links only: no search finds it
    thin = {n for n, u in result.rounds[0].useful.items() if u < 40}
    assert {r["class_name"] for r in taken} <= thin  # taken for the class whose page led there
    assert sum(result.rounds[1].useful.values()) > sum(result.rounds[0].useful.values())


def test_a_pipeline_with_a_loop_crawls_again_then_scores(tmp_path, web, teacher):
    # `kd3 run` of crawl (looping with score's teacher) -> score: the worker's stage functions.
    from workers.config import PipelineConfig
    from workers.jobs import JobStore
    from workers.run_local import run_pipeline

    crawl = job(tmp_path / "unused", web).options
    config = PipelineConfig(
        name="looped",
        classes=[{"name": n} for n in NAMES],
        crawl=crawl,
        loop=LoopOptions(rounds=2, useful_per_class=40),
        score={"teacher": str(teacher)},
    )
    with RedisServer() as redis:
        parent, (crawled, scored) = run_pipeline(
            config, tmp_path / "artifacts", redis.url, log=lambda _m: None
        )
        crawl_id = crawled.metrics["crawl_id"]
        loop = redis.client().hgetall(f"kd3:crawl:{crawl_id}:loop")
        events = JobStore(redis.client()).events(crawled.id)
    assert parent.status == "succeeded", [(j.kind, j.error) for j in (crawled, scored)]
    m = crawled.metrics
    assert m["rounds"] == 2 == int(loop[b"rounds"]) and m["stopped"]
    assert m["images_stored"] == sum(m["stored_per_round"]) and m["stored_per_round"][1] > 0
    assert max(json.loads(f.get("round", "0")) for _id, f in events) >= 1  # progress: the round
    pool = tmp_path / "artifacts" / crawled.artifacts["pool"]
    table = Pool.open(pool).manifest()
    assert set(table["crawl_round"].to_pylist()) == {1, 2}
    # score ran after the loop on the whole pool: its useful count is the loop's last
    useful = {c["name"]: c["useful"] for c in scored.metrics["classes"]}
    assert useful == m["useful"]


def test_a_probe_beyond_the_pool_finds_terms_no_pool_image_carries(tmp_path, teacher):
    # "scarlet" images are red, but no caption says red: no search of round 1 finds them and no
    # pool title carries "scarlet". The probe walks the galleries linked from the pool's pages
    # into a side pool, where the teacher is sure of the scarlet images.
    images, synsets = world_images(seed=5)
    groups = [label for _, label in SYNSETS]
    bed = Testbed(images, synsets, [n for n, _ in SYNSETS], groups=groups, seed=0)
    with LocalWeb() as server:
        bed.serve(server)
        result = crawl_loop(job(tmp_path / "pool", bed), teacher,
                            LoopOptions(rounds=2, useful_per_class=40, probe_images=200),
                            log=lambda _m: None)  # fmt: skip
        table = Pool.open(tmp_path / "pool").manifest()
        before = table.filter(pc.equal(table["crawl_round"], 1))["url"].to_pylist()
        # the probe walked the pool's pages without fetching the pool's images again
        assert before and all(server.hits(urlsplit(u).path) == 1 for u in before)
    first, second = result.rounds
    assert first.probe_stored > 0 and first.probe_requests >= first.probe_stored
    assert "scarlet" in second.queries["red"]
    found = table.filter(pc.equal(table["keyword"], "scarlet")).to_pylist()
    assert found and all(bed.synsets[bed.image_of(r["url"])] == 1 for r in found)
    assert second.useful["red"] > first.useful["red"]
    # the side pool is gone; what it cost is in loop.json
    assert not list((tmp_path / "pool" / "crawls").glob("*/probe-r*"))
    saved = json.loads((tmp_path / "pool" / "crawls" / result.crawl_id / "loop.json").read_text())
    assert saved["rounds"][0]["probe_stored"] == first.probe_stored


def test_grounded_expansion_needs_the_webs_text_or_links_beside_the_teacher():
    import pyarrow as pa

    rows = []
    for title, tops, page in [
        ("tailed frog", ["frog"] * 3, "frog"),  # holds the class name: "tailed" is tied to frog
        ("spiny lobster", ["frog"] * 3, "lobster"),  # the teacher's confident mistake
        ("bullfrog", ["frog"] * 3, "bullfrog"),  # linked both ways with the frog page
        ("German police dog", ["dog"] * 2 + ["cat"] * 4, "shepherd"),  # unsure of dogs
        ("chihuahua", ["dog", "dog", "cat", "truck"], "chihuahua"),
        ("goose", ["bird"] * 3, "goose"),  # no title says bird: two topics linked both ways
        ("black stork", ["bird"] * 3, "stork"),
        ("rugby ball", ["horse"] * 3, "rugby-1"),  # a mistake linked only with more of itself
        ("rugby ball", ["horse"] * 3, "rugby-2"),
    ]:  # fmt: skip
        for top in tops:
            rows.append({"title": title, "status": "kept", "teacher_id": "t", "page_url": page,
                         "teacher_class": top, "teacher_confidence": 0.9})  # fmt: skip
    table = pa.Table.from_pylist(rows)
    links = {"frog": ["lobster", "bullfrog"], "lobster": ["rugby-1"], "bullfrog": ["frog"],
             "shepherd": ["chihuahua"], "chihuahua": ["shepherd"], "goose": ["stork"],
             "stork": ["goose", "rugby-1"], "rugby-1": ["rugby-2"], "rugby-2": ["rugby-1"]}  # fmt: skip
    classes = ["frog", "dog", "bird", "horse"]

    def taken(**kw):
        found = expand(table, classes, "t", 0.5, set(classes), 10, **kw)
        return {c: {t.text for t in terms} for c, terms in found.items()}

    alone = taken()  # the teacher's judgement alone
    assert "spiny lobster" in alone["frog"] and alone["horse"] <= {"rugby", "ball", "rugby ball"}
    assert alone["horse"]
    assert "chihuahua" not in alone["dog"]  # under MIN_PURITY
    grounded = taken(trusted={c: {c} for c in classes}, links=links)
    assert {"tailed", "bullfrog"} <= grounded["frog"]
    assert not any("lobster" in t or "spiny" in t for t in grounded["frog"])
    # A third of the named dogs agree: a grounded term at half is enough (not MIN_PURITY), but
    # "police" and "german", where the teacher mostly says cat, are not.
    assert grounded["dog"] == {"chihuahua"}
    assert "goose" in grounded["bird"] and grounded["bird"] & {"black", "stork", "black stork"}
    assert grounded["horse"] == set()
    assert taken(trusted={c: {c} for c in classes})["bird"] == set()  # without the links


def test_the_probe_takes_terms_from_pages_linked_both_ways_with_a_classs_own_pages(
    tmp_path, teacher
):
    # crimson ("red crimson") links to scarlet and to rust; scarlet links back, rust does not.
    # Rust images are red to the teacher, but no red page's text or links vouch for them.
    x, y = make_images(8 * PER_SYNSET * 3, size=32, seed=5)
    red, green = np.nonzero(y == 0)[0], np.nonzero(y == 1)[0]
    images = np.concatenate([x[red[: 3 * PER_SYNSET]], x[green[:PER_SYNSET]]])
    synsets = np.repeat(np.arange(4), PER_SYNSET)
    names = ["crimson, red crimson", "scarlet", "rust", "emerald, green emerald"]
    bed = Testbed(images, synsets, names, seed=0)
    bed.related = {0: [1, 2], 1: [0], 2: [3], 3: [2]}
    out = {}
    with LocalWeb() as server:
        bed.serve(server)
        for grounded in (True, False):
            result = crawl_loop(job(tmp_path / f"pool-{grounded}", bed), teacher,
                                LoopOptions(rounds=2, useful_per_class=40, probe_images=200,
                                            grounded=grounded), log=lambda _m: None)  # fmt: skip
            out[grounded] = (
                result.rounds[1].queries.get("red", []) if len(result.rounds) > 1 else []
            )
        rust_visits = server.hits(bed.gallery_path(2))
    assert rust_visits >= 2  # both probes judged the rust gallery
    assert "scarlet" in out[True] and "rust" not in out[True]
    assert "rust" in out[False]  # the teacher alone takes it


def test_a_site_crawl_records_the_links_of_the_pages_it_reads(tmp_path):
    from crawler.stats import links_path
    from steer.loop import _crawl

    images, synsets = world_images(seed=5)
    bed = Testbed(images, synsets, [n for n, _ in SYNSETS], seed=0)
    with LocalWeb() as server:
        bed.serve(server)
        start = server.url(bed.gallery_path(0))
        crawl = job(tmp_path / "pool", bed)
        options = crawl.options.model_copy(update={"sources": ["site"], "seeds": [start],
                                                   "settings": {**FAST, "KD3_SITE_DEPTH": 1}})  # fmt: skip
        for record in (True, False):
            _crawl(crawl.model_copy(update={"options": options, "record_links": record,
                                            "crawl_id": f"links-{record}"}))  # fmt: skip
    links = json.loads(links_path(tmp_path / "pool", "links-True").read_text())
    assert sorted(links[start]) == sorted(server.url(bed.gallery_path(s)) for s in bed.related[0])
    assert set(links) == {start} | set(links[start])  # the seed and the pages one link away
    assert not links_path(tmp_path / "pool", "links-False").exists()


def test_a_class_no_title_names_is_found_through_pages_the_teacher_is_sure_of(tmp_path, teacher):
    # No caption says red. The probe walks from the green pages (emerald -> lime -> crimson) and
    # the teacher is sure of the crimson page, a lead; a second pass from it finds crimson and
    # scarlet linked both ways, two topics the teacher puts in red: their names become searches.
    x, y = make_images(8 * PER_SYNSET * 3, size=32, seed=5)
    red, green = np.nonzero(y == 0)[0], np.nonzero(y == 1)[0]
    images = np.concatenate([x[green[: 2 * PER_SYNSET]], x[red[: 2 * PER_SYNSET]]])
    synsets = np.repeat(np.arange(4), PER_SYNSET)
    bed = Testbed(images, synsets, ["emerald, green emerald", "lime", "crimson", "scarlet"], seed=0)
    bed.related = {0: [1], 1: [2], 2: [3], 3: [2]}
    with LocalWeb() as server:
        bed.serve(server)
        result = crawl_loop(job(tmp_path / "pool", bed), teacher,
                            LoopOptions(rounds=2, useful_per_class=40, probe_images=200),
                            log=lambda _m: None)  # fmt: skip
        scarlet_pages = server.hits(bed.gallery_path(3))
    first, second = result.rounds
    assert first.useful["red"] == 0 and scarlet_pages >= 1
    assert set(second.queries["red"]) >= {"crimson", "scarlet"}
    assert "lime" not in second.queries.get("green", [])  # linked one way only
    table = Pool.open(tmp_path / "pool").manifest()
    found = table.filter(pc.equal(table["class_name"], "red")).to_pylist()
    assert found and all(bed.synsets[bed.image_of(r["url"])] in (2, 3) for r in found)
    assert second.useful["red"] > 0
