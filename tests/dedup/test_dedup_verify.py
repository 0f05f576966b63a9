"""The verification stage of decontamination (crop-tolerant alignment) and feature centring,
with real torch modules and real FAISS."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from dedup import verify
from dedup.decontaminate import VERIFY_SIM_HASH, accepts
from dedup.embeddings import TorchExtractor, centred, normalize
from dedup.options import DedupOptions as Opts
from dedup.run import CENTRE_MIN_IMAGES, dedup_pool
from pool.store import NewImage, Pool
from tests.dedup.dedup_testkit import crop, encode, textured

torch.set_num_threads(1)


def thumbs(images) -> np.ndarray:
    return np.stack(
        [np.asarray(i.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)) for i in images]
    )


def test_alignment_scores_crops_and_mirrors_high_and_unrelated_images_low():
    originals = [textured(s) for s in range(6)]
    copies = [
        crop(originals[0], 0.15, 0.0, 1.0),  # 15% crop at a corner
        ImageOps.mirror(crop(originals[1], 0.10, 0.7, 0.2)),  # mirrored off-centre crop
        originals[2].resize((64, 64), Image.Resampling.BICUBIC),
        crop(originals[3], 0.05, 0.5, 0.5),
    ]
    pool, ev = thumbs(copies), thumbs(originals)
    same = verify.alignment(pool, ev, np.arange(4), np.arange(4))
    assert (same >= 0.97).all(), same
    # every copy against every other original: unrelated
    rows, items = np.nonzero(~np.eye(4, 6, dtype=bool))
    other = verify.alignment(pool, ev, rows, items)
    assert other.max() < 0.9, other
    # a crop much larger than the windows cover (40%) is not aligned
    big = verify.alignment(
        thumbs([crop(originals[4], 0.4, 0, 0)]), ev, np.array([0]), np.array([4])
    )
    assert big[0] < same.min()


def test_verification_decides_which_candidates_become_overlaps(tmp_path):
    originals = [textured(100 + s) for s in range(3)]
    np.savez(tmp_path / "eval.npz", x=thumbs(originals))
    pool = Pool.create(tmp_path / "pool")
    copies = [crop(originals[0], 0.14, 1.0, 0.3), ImageOps.mirror(crop(originals[1], 0.08, 0, 0))]
    added = pool.add(
        [NewImage(encode(c), url=f"http://x/{k}") for k, c in enumerate(copies)]
        + [NewImage(encode(textured(200 + k)), url=f"http://x/u{k}") for k in range(4)]
    ).added
    result = dedup_pool(pool.root, Opts(radius=4), eval_set=tmp_path / "eval.npz")
    rows = {r["sha256"]: r for r in pool.manifest().to_pylist()}
    assert [rows[s]["eval_match"] for s in added[:2]] == ["eval.npz#0", "eval.npz#1"]
    assert all(rows[s]["status_reason"].startswith("aligned 0.9") for s in added[:2])
    assert all(rows[s]["status"] == "kept" for s in added[2:])
    cand = result.candidates
    assert len(cand.row) >= 2 and cand.alignment.max() < 1.0

    # the same candidates (less the learned descriptor's) with a stricter verification
    # threshold and no learned evidence: alignment alone accepts nothing; only a candidate
    # whose hash is identical to a variant's is still confirmed
    strict = dedup_pool(
        pool.root, Opts(radius=0, verify_sim=1.0, learned=False), eval_set=tmp_path / "eval.npz"
    )
    assert {0, 1} <= set(strict.candidates.row) <= set(cand.row)
    rows = {r["sha256"]: r for r in pool.manifest().to_pylist()}
    assert rows[added[0]]["status"] == "kept"  # its hash is 10 bits away
    assert all(r["eval_hamming"] == 0 for r in rows.values() if r["status"] == "test_overlap")


def test_a_hash_within_the_radius_lowers_the_alignment_a_match_needs():
    """A pHash within the radius is a second, independent piece of evidence: such a pair
    matches from VERIFY_SIM_HASH, below verify_sim; beyond the radius it needs verify_sim."""
    crop_share, angle, mirrored = verify.window_shape(np.arange(1000))
    whole = int(np.nonzero((crop_share == 0) & (angle == 0) & ~mirrored)[0][0])
    align = np.array([0.9, 0.9, VERIFY_SIM_HASH - 0.01, 0.94])
    ham = np.array([4, 5, 4, 5])
    got = accepts(align, ham, np.full(4, whole), np.full(4, np.nan), 4, 0.93, VERIFY_SIM_HASH)
    assert got.tolist() == [True, False, False, True]


class NonNegativeNet(torch.nn.Module):
    """A small real CNN whose pooled features are all non-negative (ReLU, then 2x2 average
    pooling), like a teacher's penultimate layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 32, 5, stride=2)
        with torch.no_grad():
            self.conv.bias.fill_(0.5)  # most units active for every image: a shared direction

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)


def test_centring_separates_unrelated_images_that_raw_non_negative_features_confuse(tmp_path):
    extractor = TorchExtractor(NonNegativeNet())
    images = [textured(300 + k) for k in range(CENTRE_MIN_IMAGES + 6)]
    feats = extractor(thumbs(images))
    assert (feats >= 0).all()
    raw = normalize(feats) @ normalize(feats).T
    off_diagonal = raw[~np.eye(len(raw), dtype=bool)]
    assert np.median(off_diagonal) > 0.97  # the problem: every pair looks like a duplicate
    cen = centred(feats, feats.mean(axis=0))
    assert np.median((cen @ cen.T)[~np.eye(len(raw), dtype=bool)]) < 0.2

    pool = Pool.create(tmp_path / "pool")
    shas = pool.add(
        [NewImage(encode(im), url=f"http://x/{k}") for k, im in enumerate(images)]
    ).added
    copy = pool.add([NewImage(encode(images[0], "JPEG", quality=90), url="http://x/copy")]).added
    np.savez(tmp_path / "eval.npz", x=thumbs([images[1]]))
    result = dedup_pool(
        pool.root,
        Opts(radius=0, similarity=0.97),
        eval_set=tmp_path / "eval.npz",
        extractor=extractor,
        model_key="nonneg",
    )
    rows = {r["sha256"]: r for r in pool.manifest().to_pylist()}
    assert result.settings["features_centred_on"] == f"mean of {len(images) + 1} pool images"
    assert rows[copy[0]]["status"] == "duplicate" and rows[copy[0]]["duplicate_of"] == shas[0]
    assert rows[copy[0]]["dup_similarity"] >= 0.97  # centred features still see the copy
    assert rows[shas[1]]["status"] == "test_overlap" and rows[shas[1]]["eval_similarity"] > 0.99
    others = [rows[s]["status"] for s in shas[2:]]
    assert others == ["kept"] * len(others)


class QuadrantColourNet(torch.nn.Module):
    """A real non-negative network that sees only each quadrant's mean colour (a 1x1 convolution
    whose bias keeps every ReLU active, then 2x2 average pooling): like a poorly trained teacher,
    it gives unrelated images with the same layout of colours the same features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 1)
        with torch.no_grad():
            self.conv.bias.fill_(2.0)

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)


def colour_twin(img: Image.Image, seed: int) -> Image.Image:
    """An unrelated textured image given img's quadrant mean colours."""
    other, base = np.asarray(textured(seed), np.float32), np.asarray(img, np.float32)
    out = other.copy()
    for y in (0, 16):
        for x in (0, 16):
            q = (slice(y, y + 16), slice(x, x + 16))
            out[q] = 0.5 * (other[q] - other[q].mean((0, 1))) + base[q].mean((0, 1))
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8))


def test_feature_only_duplicates_need_the_alignment_check(tmp_path):
    extractor = TorchExtractor(QuadrantColourNet())
    images = [textured(500 + k) for k in range(CENTRE_MIN_IMAGES)]
    twins = [colour_twin(images[k], 900 + k) for k in range(4)]
    copy = crop(images[10], 0.1, 0.5, 0.5)  # a real duplicate its hash misses at radius 0
    pool = Pool.create(tmp_path / "pool")
    shas = pool.add(
        [NewImage(encode(im), url=f"http://x/{k}") for k, im in enumerate(images + twins)]
    ).added
    copy_sha = pool.add([NewImage(encode(copy), url="http://x/copy")]).added[0]
    feats = extractor(thumbs(images + twins + [copy]))
    assert (feats >= 0).all()
    cen = centred(feats, feats.mean(axis=0))
    # the problem: even centred, each twin's features match its unrelated original's
    assert min(cen[k] @ cen[len(images) + k] for k in range(4)) > 0.99
    assert cen[10] @ cen[-1] >= 0.95

    def run(**kw):
        opts = Opts(radius=0, similarity=0.95, **kw)
        res = dedup_pool(pool.root, opts, extractor=extractor, model_key="quad")
        return res, {r["sha256"]: r for r in pool.manifest().to_pylist()}

    _, unverified = run(verify_sim=-1.0)  # every feature pair accepted: grouping before the check
    assert {unverified[shas[k]]["status"] for k in range(64, 68)} == {"duplicate"}

    result, rows = run()
    assert result.embedding_edges["checked"] >= 5 and result.embedding_edges["confirmed"] == 1
    assert rows[copy_sha]["status"] == "duplicate" and rows[copy_sha]["duplicate_of"] == shas[10]
    assert rows[copy_sha]["status_reason"].startswith("embedding 0.9")
    assert [rows[s]["status"] for s in shas] == ["kept"] * len(shas)  # twins included


def test_small_pools_are_compared_uncentred(tmp_path):
    pool = Pool.create(tmp_path / "pool")
    pool.add([NewImage(encode(textured(400 + k)), url=f"http://x/{k}") for k in range(3)])
    result = dedup_pool(pool.root, extractor=TorchExtractor(NonNegativeNet()), model_key="n")
    assert result.settings["features_centred_on"] is None


@pytest.mark.parametrize("bad", [np.zeros((2, 16, 16, 3), np.uint8), np.zeros((2, 32, 32, 3))])
def test_alignment_rejects_wrong_thumbnails(bad):
    with pytest.raises(ValueError, match="thumbnails must be uint8"):
        verify.alignment(bad, bad.astype(np.uint8), np.array([0]), np.array([0]))


def test_alignment_is_the_same_whatever_the_chunk_of_pool_rows(monkeypatch):
    from PIL import ImageFilter

    originals = [textured(300 + s) for s in range(5)]
    copies = [
        o.filter(ImageFilter.GaussianBlur(2)) if k % 2 else crop(o, 0.1, 0.3, 0.6)
        for k, o in enumerate(originals)
    ]
    pool, ev = thumbs(copies), thumbs(originals)
    rows, items = np.nonzero(np.ones((5, 5), bool))
    whole, window = verify.alignment(pool, ev, rows, items, with_window=True)
    monkeypatch.setattr(verify, "ROWS_PER_CHUNK", 2)
    chunked, chunked_window = verify.alignment(pool, ev, rows, items, with_window=True)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    assert (chunked_window == window).all()
    assert (np.diag(whole.reshape(5, 5)) >= 0.95).all()  # blurred copies too (softened)


def plain(seed: int) -> Image.Image:
    """A bland grey image: a 3x3 field of grey levels smoothly upscaled, much like many others."""
    rng = np.random.default_rng(seed)
    cells = Image.fromarray(rng.integers(0, 256, (3, 3), dtype=np.uint8)).convert("RGB")
    return cells.resize((32, 32), Image.Resampling.BICUBIC)


def test_a_bland_image_needs_more_alignment_than_a_detailed_copy(tmp_path):
    """Bland images line up fairly well with many evaluation images: the cohort raises their
    threshold, so fewer of them are flagged, while real copies (detailed pictures, upscaled
    cropped and re-encoded) still are, also those of a picture the evaluation set holds twice."""
    originals = [textured(1000 + s) for s in range(12)]
    # a series: the evaluation set also holds a slightly cropped shot of each of the first 3
    series = [crop(o, 0.06, 0.5, 0.5) for o in originals[:3]]
    np.savez(tmp_path / "eval.npz", x=thumbs([plain(s) for s in range(300)] + originals + series))
    pool = Pool.create(tmp_path / "pool")
    copies = [
        encode(
            crop(o, 0.1, 0.2, 0.8).resize((64, 64), Image.Resampling.BICUBIC), "JPEG", quality=30
        )
        for o in originals
    ]
    bland = [encode(plain(5000 + s)) for s in range(60)]
    added = pool.add(
        [NewImage(data, url=f"http://x/{k}") for k, data in enumerate(bland + copies)]
    ).added
    result = dedup_pool(pool.root, Opts(embeddings=False), eval_set=tmp_path / "eval.npz")
    cand = result.candidates
    args = (cand.alignment, cand.hamming, cand.window, cand.cohort, 4, 0.93, 0.93)
    learned = {
        "learned": cand.learned,
        "learned_other": cand.learned_other,
        "zoomed": cand.zoomed,
        "item_detail": cand.item_detail,
    }
    is_bland = cand.row < len(bland)
    without_cohort = np.unique(cand.row[accepts(*args, cohort_weight=0, **learned) & is_bland])
    rows = {r["sha256"]: r for r in pool.manifest().to_pylist()}
    flagged = [rows[s]["status"] == "test_overlap" for s in added]
    assert sum(flagged[: len(bland)]) < len(without_cohort) / 2, (flagged, without_cohort)
    assert all(flagged[len(bland) :])
    reasons = [rows[s]["status_reason"] or "" for s in added]
    assert any("best other item" in r for r in reasons), "no decision recorded its cohort"


def test_the_zoom_search_equals_the_swapped_alignment_with_mirrored_windows():
    """zoom_alignment mirrors the evaluation image instead of every window of the pool image
    (half the work); the scores and the best windows must be those of the direct search."""
    originals = [textured(400 + s) for s in range(6)]
    pool = [
        ImageOps.mirror(o) if k % 2 else o.resize((20, 20)).crop((-6, -3, 26, 29))
        for k, o in enumerate(originals)
    ] + [textured(900 + k) for k in range(6)]
    pool_thumbs, eval_thumbs = thumbs(pool), thumbs(originals)
    rows, items = np.arange(12), np.arange(12) % 6
    direct = verify.alignment(
        eval_thumbs, pool_thumbs, items, rows, min_side=verify.ZOOM_MIN_SIDE, angles=(0.0,),
        with_window=True, soft=False,
    )  # fmt: skip
    score, window = verify.zoom_alignment(pool_thumbs, eval_thumbs, rows, items)
    assert np.allclose(score, direct[0], atol=1e-5)
    assert np.array_equal(verify.zoom_share(window)[0], verify.zoom_share(direct[1])[0])
    assert np.array_equal(verify.zoom_share(window)[1], verify.zoom_share(direct[1])[1])
    assert score[:6].min() > 0.9 and score[6:].max() < 0.8, score
