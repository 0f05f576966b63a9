"""Decontamination candidates from copy descriptors (dedup/copy_search.py), on real images:
the window descriptors agree with the index's, and copies cropped between the index's variants,
framed and turned, or blurred on a page find their item among the few candidates kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from dedup import copy_search, decontaminate, views
from dedup.evalset import EvalSet
from tests.dedup.dedup_testkit import crop, textured

torch.set_num_threads(1)


def thumbs(images) -> np.ndarray:
    return np.stack([np.asarray(i.resize((32, 32), Image.Resampling.BICUBIC)) for i in images])


def test_the_whole_window_is_the_copy_descriptor_and_the_mirror_follows():
    t = thumbs([textured(k) for k in range(3)])
    desc = copy_search.window_descriptors(t).numpy()
    whole = copy_search._windows()[:, 0, 0].tolist().index(1.0)  # side 32, not turned
    np.testing.assert_allclose(desc[:, whole], views.copy_descriptor(t), atol=1e-4)
    mirrored = views.copy_descriptor(t[:, :, ::-1])
    np.testing.assert_allclose(desc[:, len(copy_search._windows()) + whole], mirrored, atol=1e-4)


def test_copies_between_the_index_variants_or_framed_and_turned_find_their_item():
    items = [textured(500 + k) for k in range(60)]
    evalset = EvalSet([f"e{k}" for k in range(60)], [None] * 60, lambda i: items[i])
    index = decontaminate.prepare(evalset, "phash")
    framed = Image.new("RGB", (96, 96), (250, 250, 250))
    framed.paste(items[3].resize((64, 64), Image.Resampling.BICUBIC), (16, 16))
    copies = {
        1: crop(items[1].resize((96, 96), Image.Resampling.BICUBIC), 0.15, 0.5, 0.0),
        2: ImageOps.mirror(crop(items[2], 0.06, 1.0, 0.3)),
        3: framed.rotate(7, Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)),
    }
    pool = list(copies.values())
    rows, found = copy_search.candidates(index, np.stack([views.view_descriptors(p) for p in pool]))
    for row, item in enumerate(copies):
        assert item in found[rows == row], (item, found[rows == row])
        assert (rows == row).sum() <= copy_search.TOP_ITEMS * len(views.pictures(pool[row]))


def page(picture: Image.Image) -> Image.Image:
    """A gallery page: title bar, the picture, caption rules."""
    out = Image.new("RGB", (96, 96), (235, 235, 230))
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, 0, 96, 9), fill=(30, 40, 120))
    out.paste(picture.resize((44, 44), Image.Resampling.BICUBIC), (26, 20))
    for k in range(3):
        draw.rectangle((8, 72 + 7 * k, 88, 75 + 7 * k), fill=(60, 60, 60))
    return out


def test_a_blurred_page_keeps_the_item_its_picture_finds_beside_pages_like_it():
    """The evaluation set holds two pages of the same gallery with other pictures: a blurred
    copy of the page with item 3 resembles them as a whole more than its blurred picture
    resembles item 3, yet item 3 stays a candidate (the top items are kept per view)."""
    items = [textured(500 + k) for k in range(58)] + [page(textured(900)), page(textured(901))]
    evalset = EvalSet([f"e{k}" for k in range(60)], [None] * 60, lambda i: items[i])
    index = decontaminate.prepare(evalset, "phash", learned=False)
    copy = page(items[3]).filter(ImageFilter.GaussianBlur(2))
    assert len(views.pictures(copy)) == 2
    rows, found = copy_search.candidates(index, views.view_descriptors(copy)[None])
    assert {3, 58, 59} <= set(found.tolist())


def test_top_per_group_keeps_each_groups_best_distinct_items_whatever_the_order():
    rng = np.random.default_rng(0)
    group = rng.integers(0, 50, 4000)
    item = rng.integers(0, 30, 4000)
    sim = rng.random(4000).astype(np.float32)
    shuffled = rng.permutation(4000)
    got = copy_search._top_per_group(group[shuffled], item[shuffled], sim[shuffled], 3)
    best: dict[tuple[int, int], float] = {}
    for g, i, s in zip(group.tolist(), item.tolist(), sim.tolist(), strict=True):
        best[g, i] = max(best.get((g, i), -1.0), s)
    for g in range(50):
        ranked = sorted((-s, i) for (gg, i), s in best.items() if gg == g)
        assert got[1][got[0] == g].tolist() == [i for _, i in ranked[:3]]


def test_search_chunks_come_query_by_query_best_first(monkeypatch):
    from dedup import embeddings

    monkeypatch.setattr(embeddings, "SEARCH_CHUNK", 7)
    rng = np.random.default_rng(1)
    db, queries = rng.standard_normal((300, 16)), rng.standard_normal((40, 16))
    chunks = list(embeddings.similar_chunks(db, queries, -1.0, k=10))
    assert len(chunks) == 6
    for m in chunks:
        assert (np.diff(m.query) >= 0).all()
        same = np.diff(m.query) == 0
        assert (np.diff(m.sim)[same] <= 0).all()
    whole = embeddings.similar(db, queries, -1.0, k=10)
    assert whole.query.tolist() == np.concatenate([m.query for m in chunks]).tolist()
    assert whole.query.tolist() == np.repeat(np.arange(40), 10).tolist()


def test_the_learned_runner_up_is_the_next_item_of_the_view_that_finds_the_item():
    """A page whose whole view is near item 1 (0.85) while its picture's view finds item 0
    (0.9, the next item there 0.3): the backing asks how far item 0 stands out in the picture's
    view (0.6 above the next), not over the whole page (0.05)."""
    from types import SimpleNamespace

    from dedup import copy_net

    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((copy_net.DIM, 4)))[0].T
    index = SimpleNamespace(net=np.repeat(basis[:3], copy_net.PER_ITEM, axis=0))  # + mirrors
    page = 0.5 * basis[0] + 0.85 * basis[1] + np.sqrt(1 - 0.25 - 0.7225) * basis[3]
    picture = 0.9 * basis[0] + 0.3 * basis[2] + np.sqrt(1 - 0.81 - 0.09) * basis[3]
    net = np.zeros((1, views.VIEWS, copy_net.DIM), np.float32)
    net[0, 0], net[0, 1] = page, picture
    net = net.reshape(1, -1)
    item = np.array([0])
    learned, view = decontaminate._learned_similarity(index, net, np.array([0]), item)
    assert learned[0] == pytest.approx(0.9, abs=1e-5) and view.tolist() == [1]
    near_views = copy_search.learned_nearest_views(index, net)
    other = decontaminate._learned_runner_up(near_views, view, item)
    assert other[0] == pytest.approx(0.3, abs=1e-5)
    assert decontaminate._learned_sure(learned, other)[0]
    # over the whole image, the page's item 1 would be the runner-up and hide the picture's
    rows, found, sim = copy_search.learned_nearest(index, net)
    assert found.tolist() == [0, 1] and sim[1] == pytest.approx(0.85, abs=1e-5)
    assert not decontaminate._learned_sure(learned, sim[1:])[0]
