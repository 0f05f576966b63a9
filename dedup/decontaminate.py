"""Evaluation-set decontamination: which pool images match an evaluation image.

Two stages. Candidates: the evaluation side is the small one, so it is augmented: each evaluation
image is indexed as itself, as crops (removing 10% and 20% of each side, at the corners and
centre) and turned by ROTATIONS (the central part, without the corners the turn empties), each
also mirrored. The pool side is normalised instead: each pool image is looked at whole and, when
it has a plain frame (a border, letterbox bars, a page around a screenshot), as the picture
inside it (dedup/views.py). A pool image is a candidate for an evaluation item when its views'
copy descriptors (8x8 luminance) find the item (dedup/copy_search.py), when the learned copy
descriptors of its views (dedup/copy_net.py) put the item among their nearest, when its hash is
within CANDIDATE_RADIUS (inclusive) of one of the item's codes, or when its features reach
`candidate_sim` against one of the item's features.

Verification (dedup/verify.py): a candidate pair is a match when a view of the pool image lines
up with a window of the evaluation image (cropped, turned, mirrored), with an alignment score
>= `verify_sim`, or >= `verify_sim_hash` when the hash is also within `radius`, or
>= VERIFY_SIM_LEARNED when the learned descriptor rates the pair >= LEARNED_SURE and LEARNED_GAP
above the next nearest item of the same view (two independent pieces of evidence). Same bytes
or same pixels always match. A pair whose item the learned descriptor rates LEARNED_VETO or more
below another item is refused however well it lines up: a same-class drawing lines up with many.

The threshold rises for a pool image that lines up well with other items (its cohort: the
COHORT items nearest its view by copy descriptor, its own candidate left out): a plain or
blurry image lines up fairly well with many items, so lining up with one more is weak proof of
a copy, while a detailed image lines up with none but its source. The rise is COHORT_WEIGHT x
(the cohort's best alignment - COHORT_START), when positive: score normalisation against
impostors, as speaker verification and SSCD do. The learned backing does not count for an item
with less fine detail than LEARNED_MIN_DETAIL (a smooth field of a few grey levels, unlike any
photograph the descriptor was trained on, fools it). Only pairs in the grey zone, whose
decision the cohort can change, are aligned with their cohort. A cohort item that
lines up with the candidate item itself at verify_sim is left out: it is the same picture
(CIFAR-10 holds series of one photo shoot), and a copy of one lines up with all of them.

A pair the learned descriptor backs that lines up short of VERIFY_SIM_LEARNED also matches
when its score with colour left out (luminance and edges alone, at the best window) reaches
VERIFY_SIM_SHAPE plus the cohort's rise: a colour edit can pull the colour part of a copy's
score far down, and the learned descriptor, trained on colour edits, still singles it out.

A pair the learned descriptor backs that still lines up poorly may be a zoomed-out copy whose
frame dedup/views.py could not cut (a caption or a logo across the border, a busy page): its
pool image is searched for the picture at every size from half its side up
(verify.zoom_alignment), and the better score kept. Such a match always needs the learned
backing: an unrelated image offers so many windows that one of them lines up too often.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from dedup import binary_index, copy_net, copy_search, embeddings, verify, views
from dedup.evalset import EvalSet
from dedup.hashing import HASH_KINDS, pixel_digest, to_codes
from pool.images import resize_center_crop

CROPS = [
    (frac, fx, fy) for frac in (0.1, 0.2) for fx, fy in ((0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5))
]
ROTATIONS = (-8.0, -4.0, 4.0, 8.0)  # degrees; verification searches its own finer angles
ROTATION_KEEP = 0.86  # central share of a turned image's side that holds no emptied corner
# Candidate and verification thresholds, chosen on the tuning split (even CIFAR-10 test indices,
# even web-pool indices) of bench/dedup_quality.py; its report split is disjoint. The main
# verification threshold is the user's option (DedupOptions.verify_sim).
CANDIDATE_RADIUS = 8
CANDIDATE_SIM = 0.85
# An item whose pHash is within the radius of a pool image is a second, independent piece of
# evidence: the pair matches from VERIFY_SIM_HASH. On the tune splits of bench/dedup_quality.py
# (--tune-from 0.84, seeds 0 and 1; rows "hash-assisted"), 0.84-0.89 catch the most copies at
# no more false positives than 0.93 (untouched images within radius 4 of an item are few and
# line up poorly); the highest of those is kept
VERIFY_SIM_HASH = 0.89
MOVED_MARGIN = 0.01  # extra alignment asked of a cropped or turned window (accepts)
PAIR_CHUNK = 50_000
COHORT = 8  # other items each grey-zone pool view is aligned with
COHORT_WEIGHT = 0.3  # threshold rise per unit of the cohort's best alignment ...
COHORT_START = 0.8  # ... above this one
# The learned backing: a learned-descriptor similarity (dedup/copy_net.py) of LEARNED_SURE, and
# LEARNED_GAP above the next nearest item of the same view, lets a pair match from an alignment of
# VERIFY_SIM_LEARNED, and a pair whose item the learned descriptor rates LEARNED_VETO below
# another item is refused. Chosen together on the tune splits of bench/dedup_quality.py
# (--tune-from 0.84, seeds 0 and 1; sure 0.65-0.75 x from 0.84-0.87 x veto): the best lowest
# family in pairs with tune FP <= 0.05%; the lowest FP of the ties. The backing is ignored for
# an item whose fine detail (verify.fine_detail) is below LEARNED_MIN_DETAIL: smooth fields of a
# few grey levels fool the learned descriptor (tests/dedup/test_dedup_verify.py; they have at
# most 0.03), while every CIFAR-10 test image and web-pool image has at least 0.066.
LEARNED_SURE = 0.65
LEARNED_GAP = 0.1
VERIFY_SIM_LEARNED = 0.86
LEARNED_VETO = 0.05
LEARNED_MIN_DETAIL = 0.05
# Score with colour left out that a pair the learned descriptor backs needs. On the tune splits
# of bench/dedup_quality.py (--tune-from 0.84, seeds 0 and 1), 0.93-0.96 find the same copies
# (one more on each seed than without) at the same false positives; the highest is kept
VERIFY_SIM_SHAPE = 0.96


def variants(img: Image.Image, crops: bool = True) -> list[Image.Image]:
    """The image, its crops and turns (when `crops`), and the mirror of each."""
    out = [img]
    if crops:
        w, h = img.size
        for frac, fx, fy in CROPS:
            cw, ch = round(w * (1 - frac)), round(h * (1 - frac))
            x, y = round((w - cw) * fx), round((h - ch) * fy)
            out.append(img.crop((x, y, x + cw, y + ch)))
        big = img.resize((3 * w, 3 * h), Image.Resampling.BICUBIC)  # turn without blurring
        mx, my = 3 * w * (1 - ROTATION_KEEP) / 2, 3 * h * (1 - ROTATION_KEEP) / 2
        for angle in ROTATIONS:
            turned = big.rotate(angle, Image.Resampling.BICUBIC)
            out.append(turned.crop((mx, my, 3 * w - mx, 3 * h - my)))
    return out + [ImageOps.mirror(v) for v in out]


@dataclass
class EvalIndex:
    """Everything matched against: codes and features of every variant, with their owner item."""

    evalset: EvalSet
    byte_sha: dict[str, int]
    pixel_sha: dict[str, int]
    codes: np.ndarray  # (M * V, 8) uint8
    copy: np.ndarray  # (M * V, 64) float32 copy descriptors (dedup/views.py)
    features: np.ndarray | None  # (M * V, D) float32, raw extractor output (not normalised)
    per_item: int  # V: variants per item; rows of item i are i*V .. (i+1)*V-1
    thumbs: np.ndarray  # (M, 32, 32, 3) uint8 thumbnails for verification
    net: np.ndarray | None = None  # (M * copy_net.PER_ITEM, D) learned descriptors (copy_net.py)


def prepare(
    evalset: EvalSet,
    hash_kind: str,
    extractor=None,
    crops: bool = True,
    progress: bool = False,
    learned: bool = True,
) -> EvalIndex:
    hash_fn = HASH_KINDS[hash_kind]
    size = getattr(extractor, "input_size", 32)
    byte_sha = {s: i for i, s in enumerate(evalset.byte_sha256) if s}
    pixel_sha, hexes, thumbs, feats, own, copy, whole = {}, [], [], [], [], [], []
    per_item = 0
    for i in tqdm(range(len(evalset)), disable=not progress, desc="evaluation set"):
        img = evalset.load(i)
        pixel_sha.setdefault(pixel_digest(img), i)
        own.append(np.asarray(resize_center_crop(img, verify.SIZE)))
        if learned:
            whole.append(copy_net.squash(img))
        vs = variants(img, crops)
        per_item = len(vs)
        hexes.extend(str(hash_fn(v)) for v in vs)
        copy.append(
            views.copy_descriptor(np.stack([np.asarray(resize_center_crop(v, 32)) for v in vs]))
        )
        if extractor is not None:
            thumbs.extend(np.asarray(resize_center_crop(v, size)) for v in vs)
            if len(thumbs) >= 4096:
                feats.append(np.asarray(extractor(np.stack(thumbs)), np.float32))
                thumbs = []
    if extractor is not None and thumbs:
        feats.append(np.asarray(extractor(np.stack(thumbs)), np.float32))
    features = np.concatenate(feats) if feats else None
    copy = np.concatenate(copy) if copy else np.zeros((0, views.COPY_GRID**2), np.float32)
    return EvalIndex(
        evalset,
        byte_sha,
        pixel_sha,
        to_codes(hexes),
        copy,
        features,
        per_item,
        np.stack(own),
        copy_net.item_descriptors(whole) if learned else None,
    )


@dataclass
class Overlap:
    eval_item: int
    reason: str  # exact-bytes, exact-pixels, or aligned (a verified candidate)
    hamming: int  # smallest Hamming distance to the item's variants
    similarity: float | None  # largest cosine similarity to the item's variants
    alignment: float | None  # verification score (dedup/verify.py)
    view: int | None = None  # the pool image's best view (0 whole, 1 inside a frame, ...)
    window: int | None = None  # the best window (dedup/verify.py window_shape)
    cohort: float | None = None  # best alignment with another item (None: not needed)
    learned: float | None = None  # learned-descriptor similarity (dedup/copy_net.py)
    learned_other: float | None = None  # ... of the nearest other item in the same view
    zoomed: bool = False  # the window is a part of the pool image (verify.zoom_alignment)
    shape: float | None = None  # score at the best window with colour left out (None: not kept)

    @property
    def evidence_note(self) -> str:
        """The other evidence: ", best other item 0.7100" where the cohort was needed, ", shapes
        0.9712 (colour left out)" where that score was kept, and ", learned 0.912
        (next item 0.650)" where the learned descriptor was computed."""
        out = "" if self.cohort is None else f", best other item {self.cohort:.4f}"
        if self.shape is not None:
            out += f", shapes {self.shape:.4f} (colour left out)"
        if self.learned is not None:
            out += f", learned {self.learned:.3f}"
        if self.learned_other is not None:
            out += f" (next item {self.learned_other:.3f})"
        return out

    @property
    def how(self) -> str:
        """The best view and window in words, e.g. "picture in a frame, crop 12%, mirrored"."""
        return "" if self.window is None else describe(self.view, self.window, self.zoomed)


@dataclass
class Candidates:
    """Every verified candidate pair (parallel arrays), accepted or not: for tuning and reports."""

    row: np.ndarray
    item: np.ndarray
    hamming: np.ndarray
    similarity: np.ndarray | None
    alignment: np.ndarray
    view: np.ndarray  # the best view of the pool image (0 whole, 1 inside a frame, ...)
    window: np.ndarray  # the best window (dedup/verify.py describe)
    cohort: np.ndarray  # best alignment with a cohort item, NaN outside the grey zone
    learned: np.ndarray  # learned-descriptor similarity (dedup/copy_net.py), NaN without one
    learned_other: np.ndarray  # ... of the nearest other item in the same view
    zoomed: np.ndarray  # whether the best window is a part of the pool image (zoom_alignment)
    item_detail: np.ndarray  # the item's fine detail (verify.fine_detail)
    shape: np.ndarray  # the alignment with colour left out, NaN where not needed


def find_overlaps(
    index: EvalIndex,
    byte_sha: list[str],
    pixel_sha: list[str],
    codes: np.ndarray,
    features: np.ndarray | None,
    copy: np.ndarray,
    load_views: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    radius: int,
    verify_sim: float,
    verify_sim_hash: float = VERIFY_SIM_HASH,
    candidate_sim: float = CANDIDATE_SIM,
    method: str = "auto",
    progress: bool = False,
    net: np.ndarray | None = None,
) -> tuple[dict[int, Overlap], Candidates]:
    """{pool row: Overlap} for every pool image that matches an evaluation item, and the
    candidates that were checked. `features` (pool) and `index.features` must be normalised
    the same way; `copy` holds each pool row's view_descriptors (dedup/views.py);
    `load_views(rows)` returns the 32x32 uint8 thumbnails of the rows' views and, for each, its
    position in `rows`; `net` holds each pool row's learned descriptor (dedup/copy_net.py)."""
    nearest = near_views = None
    if net is not None and index.net is not None and len(net):
        near_views = copy_search.learned_nearest_views(index, net, progress)
        nearest = copy_search.nearest_per_row(near_views, net, index)
    rows, items = _candidate_pairs(
        index, codes, features, copy, nearest, candidate_sim, method, progress
    )
    ham, sim = _pair_scores(index, codes, features, rows, items)
    learned, learned_view = _learned_similarity(index, net, rows, items)
    learned_other = _learned_runner_up(near_views, learned_view, items)
    item_detail = verify.fine_detail(index.thumbs)[items] if len(items) else np.zeros(0)
    align, view, window, cohort, zoomed, shape = _best_view_alignment(
        index,
        rows,
        items,
        load_views,
        lambda a: _needs_cohort(
            a, ham, learned, learned_other, radius, verify_sim, verify_sim_hash
        ),
        verify_sim,
        progress,
        lambda a: _needs_zoom(a, learned, learned_other),
    )
    accept = accepts(
        align,
        ham,
        window,
        cohort,
        radius,
        verify_sim,
        verify_sim_hash,
        learned=learned,
        learned_other=learned_other,
        zoomed=zoomed,
        item_detail=item_detail,
        shape=shape,
    )
    out: dict[int, Overlap] = {}
    order = np.argsort(-align, kind="stable")
    for k in order[accept[order]]:
        row = int(rows[k])
        if row not in out:  # the best-aligned accepted item
            similarity = float(sim[k]) if sim is not None else None
            out[row] = Overlap(
                int(items[k]),
                "aligned",
                int(ham[k]),
                similarity,
                float(align[k]),
                int(view[k]),
                int(window[k]),
                None if np.isnan(cohort[k]) else float(cohort[k]),
                None if np.isnan(learned[k]) else float(learned[k]),
                None if np.isnan(learned_other[k]) else float(learned_other[k]),
                bool(zoomed[k]),
                None if np.isnan(shape[k]) else float(shape[k]),
            )
    for row, (pixels, data) in enumerate(zip(pixel_sha, byte_sha, strict=True)):
        item, reason = index.byte_sha.get(data), "exact-bytes"
        if item is None:
            item, reason = index.pixel_sha.get(pixels), "exact-pixels"
        if item is not None:
            h, s = _pair_scores(index, codes, features, np.array([row]), np.array([item]))
            out[row] = Overlap(item, reason, int(h[0]), None if s is None else float(s[0]), None)
    return out, Candidates(
        rows, items, ham, sim, align, view, window, cohort, learned, learned_other, zoomed,
        item_detail, shape,
    )  # fmt: skip


def accepts(
    align: np.ndarray,
    ham: np.ndarray,
    window: np.ndarray,
    cohort: np.ndarray,
    radius: int,
    verify_sim: float,
    verify_sim_hash: float,
    moved_margin: float = MOVED_MARGIN,
    cohort_weight: float = COHORT_WEIGHT,
    learned: np.ndarray | None = None,
    learned_other: np.ndarray | None = None,
    learned_sure: float = LEARNED_SURE,
    verify_sim_learned: float = VERIFY_SIM_LEARNED,
    zoomed: np.ndarray | None = None,
    learned_veto: float = LEARNED_VETO,
    item_detail: np.ndarray | None = None,
    learned_min_detail: float = LEARNED_MIN_DETAIL,
    shape: np.ndarray | None = None,
    verify_sim_shape: float = VERIFY_SIM_SHAPE,
) -> np.ndarray:
    """Which verified pairs match: alignment >= the least threshold that applies to the pair
    (_least_threshold; the learned descriptor's backing counts only for an item with
    `learned_min_detail` of fine detail or more, `item_detail`); `moved_margin` more when the
    best window is cropped, turned or a zoomed part of the pool image (one of many windows
    tried, so an unrelated image reaches a high score there more easily), and
    `cohort_weight` x (cohort - COHORT_START) more where that is positive (cohort NaN: the
    pair has none, no rise). A `zoomed` pair matches only with the learned backing; a pair the
    learned descriptor rates `learned_veto` below the nearest other item of its view never
    does. A backed pair whose `shape` (alignment with colour left out) reaches
    `verify_sim_shape` plus the cohort's rise matches too."""
    zoomed = np.zeros(len(align), bool) if zoomed is None else zoomed
    rise = np.nan_to_num(cohort_weight * np.maximum(cohort - COHORT_START, 0), nan=0.0)
    need = moved_margin * (_moved(window) | zoomed) + rise
    sure = _learned_sure(learned, learned_other, learned_sure)
    if sure is not None and item_detail is not None:  # smooth fields fool the learned descriptor
        sure &= item_detail >= learned_min_detail
    least = _least_threshold(ham, sure, radius, verify_sim, verify_sim_hash, verify_sim_learned)
    backed = np.zeros(len(align), bool) if sure is None else sure
    least = np.where(zoomed & ~backed, np.inf, least)
    refused = _learned_refuses(len(align), learned, learned_other, learned_veto)
    by_shape = np.zeros(len(align), bool)
    if shape is not None:
        by_shape = backed & (np.nan_to_num(shape, nan=-np.inf) >= verify_sim_shape + rise)
    return ((align >= least + need) | by_shape) & ~refused


def _learned_refuses(n: int, learned, learned_other, veto: float) -> np.ndarray:
    """Whether the learned descriptor puts another item `veto` or more above each of the n
    pairs' own (where both are known)."""
    if learned is None or learned_other is None:
        return np.zeros(n, bool)
    known = ~np.isnan(learned) & ~np.isnan(learned_other)
    return known & (np.nan_to_num(learned_other) - np.nan_to_num(learned) >= veto)


def _learned_sure(learned, learned_other, learned_sure=LEARNED_SURE) -> np.ndarray | None:
    """Whether the learned descriptor backs each pair: similarity >= learned_sure, and
    LEARNED_GAP above the nearest other item of the same view (a bland image is near many)."""
    if learned is None:
        return None
    other = np.full(len(learned), np.nan) if learned_other is None else learned_other
    learned, other = np.nan_to_num(learned, nan=-2.0), np.nan_to_num(other, nan=-1.0)
    return (learned >= learned_sure) & (learned - other >= LEARNED_GAP)


def _least_threshold(ham, sure, radius, verify_sim, verify_sim_hash, verify_sim_learned):
    """Per pair: verify_sim; verify_sim_hash when the hash is also within `radius`;
    verify_sim_learned where the learned descriptor is `sure` (a second, independent piece of
    evidence lowers the alignment a match needs)."""
    least = np.where(ham <= radius, min(verify_sim, verify_sim_hash), verify_sim)
    if sure is not None:
        least = np.where(sure, np.minimum(least, verify_sim_learned), least)
    return least


def _needs_cohort(align, ham, learned, learned_other, radius, verify_sim, verify_sim_hash):
    """The pairs whose decision a cohort can change: alignment from the least threshold that
    applies to the pair up to verify_sim raised as far as the best possible cohort (1.0)
    raises it, plus the moved margin."""
    sure = _learned_sure(learned, learned_other)
    least = _least_threshold(ham, sure, radius, verify_sim, verify_sim_hash, VERIFY_SIM_LEARNED)
    return (align >= least) & (
        align < verify_sim + MOVED_MARGIN + COHORT_WEIGHT * (1 - COHORT_START)
    )


def _needs_zoom(align, learned, learned_other):
    """The pairs worth a zoom search and whose score with colour left out is kept: the learned
    descriptor backs them and their views line up short of what the backing asks
    (VERIFY_SIM_LEARNED plus the moved margin)."""
    sure = _learned_sure(learned, learned_other)
    if sure is None:
        return np.zeros(len(align), bool)
    return sure & (align < VERIFY_SIM_LEARNED + MOVED_MARGIN)


def _moved(window: np.ndarray) -> np.ndarray:
    """Whether each best window is cropped or turned (dedup/verify.py window_shape)."""
    crop, angle, _ = verify.window_shape(window)
    return (crop > 0) | (angle != 0)


def _best_view_alignment(
    index, rows, items, load_views, needs_cohort, same_picture, progress, needs_zoom=None
):
    """Alignment of each (pool row, item) pair, the best over the row's views and, for the
    pairs `needs_zoom(alignments)` picks, over the parts of the whole image
    (verify.zoom_alignment); what the best view and window say about the copy (`describe`);
    for the pairs `needs_cohort(alignments)` picks, the best view's cohort alignment (items
    aligned with the pair's item at `same_picture` left out); whether the best window is a
    zoomed part; and, for the pairs `needs_zoom` picks, the best view's score at its best window
    with colour left out (verify.alignment with_window="shape"; NaN for the others)."""
    if not len(rows):
        none, empty = np.zeros(0, np.int64), np.zeros(0, np.float32)
        return empty, none, none, empty, np.zeros(0, bool), empty
    need = np.unique(rows)
    thumbs, owner = load_views(need)
    # every view of each candidate row against each of the row's items
    first = np.searchsorted(owner, np.arange(len(need)))
    count = np.bincount(owner, minlength=len(need))
    local = np.searchsorted(need, rows)
    pair = np.repeat(np.arange(len(rows)), count[local])
    rank = _ranks_within(count[local])
    score, window, shape_all = verify.alignment(
        thumbs,
        index.thumbs,
        first[local].repeat(count[local]) + rank,
        items[pair],
        progress,
        "verify overlap candidates",
        with_window="shape",
    )
    order = np.lexsort((score, pair))
    last = np.append(pair[order][1:] != pair[order][:-1], True)  # each pair's best view
    top = order[last]
    align, view, window = score[top], rank[top], window[top]
    zoomed = np.zeros(len(rows), bool)
    ask = np.nonzero(needs_zoom(align))[0] if needs_zoom is not None else np.zeros(0, int)
    shape = np.full(len(rows), np.nan, np.float32)  # kept where the learned backing falls short
    shape[ask] = shape_all[top[ask]]
    if len(ask):  # the first view of a row is its whole image
        zoom, zoom_window = verify.zoom_alignment(
            thumbs, index.thumbs, first[local[ask]], items[ask], progress
        )
        better = zoom > align[ask]
        ask = ask[better]
        align[ask], view[ask], window[ask], zoomed[ask] = zoom[better], 0, zoom_window[better], True
    cohort = np.full(len(rows), np.nan, np.float32)
    zone = np.nonzero(needs_cohort(align))[0]
    if len(zone):
        best_thumbs = thumbs[first[local[zone]] + view[zone]]
        cohort[zone] = _cohort_alignment(index, best_thumbs, items[zone], same_picture, progress)
    return align, view, window, cohort, zoomed, shape


def _cohort_alignment(index, thumbs, items, same_picture: float, progress=False):
    """For each pool view thumbnail, its best alignment with the COHORT evaluation items
    nearest it by copy descriptor, leaving out its own candidate item and the items that line
    up with that item at `same_picture` (checked only where the score could raise a threshold)."""
    group, cohort = copy_search.nearest_items(index, views.copy_descriptor(thumbs), COHORT + 1)
    other = cohort != items[group]
    group, cohort = group[other], cohort[other]
    score = verify.alignment(thumbs, index.thumbs, group, cohort, progress, "verify cohorts")
    high = np.nonzero(score > COHORT_START)[0]
    same = verify.alignment(
        index.thumbs, index.thumbs, cohort[high], items[group[high]], progress, "cohort series"
    )
    score[high[same >= same_picture]] = -1.0
    out = np.full(len(thumbs), -1.0, np.float32)
    np.maximum.at(out, group, score)
    return out


EDIT_KINDS = ("exact", "framed", "turned", "cropped", "mirrored", "retouched")


def edit_kind(overlap: Overlap) -> str:
    """The first of EDIT_KINDS that describes how the pool image differs from its item:
    exact (same bytes or pixels), framed (a picture inside a frame), turned, cropped, mirrored,
    or retouched (resized, re-encoded, recoloured, overlaid: lined up as a whole)."""
    if overlap.window is None:
        return "exact"
    if overlap.zoomed:
        return "framed"
    crop, angle, mirrored = verify.window_shape(overlap.window)
    for kind, applies in (
        ("framed", overlap.view > 0),
        ("turned", angle != 0),
        ("cropped", crop > 0),
        ("mirrored", mirrored),
    ):
        if applies:
            return kind
    return "retouched"


def describe(view: int, window: int, zoomed: bool = False) -> str:
    """The best view and window of a verified pair in words."""
    if zoomed:
        return verify.describe_zoom(window)
    frame = ["", "picture in a frame, ", "picture in a frame in a frame, "][view]
    return frame + verify.describe(window)


def _ranks_within(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for each c in counts, concatenated."""
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum())) - starts


def _candidate_pairs(index, codes, features, copy, nearest, candidate_sim, method, progress=False):
    """Unique (pool row, evaluation item) pairs from the copy descriptors' nearest items, the
    learned descriptor's nearest items, the loose hash radius and the feature similarity."""
    rows, items = [], []
    if len(copy):
        row, item = copy_search.candidates(index, copy, progress)
        rows.append(row)
        items.append(item)
    if nearest is not None:
        row, item = copy_search.learned_candidates(nearest)
        rows.append(row)
        items.append(item)
    if features is not None and index.features is not None:
        found = embeddings.similar(
            index.features, features, candidate_sim, progress=progress, desc="overlap features"
        )
        rows.append(found.query)
        items.append(found.db // index.per_item)
    if len(codes):
        bindex = binary_index.build_index(
            index.codes,
            binary_index.choose_method(len(index.codes), len(codes), CANDIDATE_RADIUS, method),
            CANDIDATE_RADIUS,
        )
        found = binary_index.range_search(
            bindex, codes, CANDIDATE_RADIUS, progress=progress, desc="overlap hashes"
        )
        rows.append(found.query)
        items.append(found.db // index.per_item)
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pairs = np.unique(np.stack([np.concatenate(rows), np.concatenate(items)], 1), axis=0)
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)


def _learned_runner_up(near_views, views_of_pairs, items) -> np.ndarray:
    """For each (pool view, item) pair, the learned similarity of the view's nearest other item
    (from its NET_TOP nearest, `learned_nearest_views`; NaN without the learned descriptor).
    Measured in the view where the pair's item is best, not over the image: a page whose
    whole view resembles another item does not make its picture's item stand out less."""
    out = np.full(len(views_of_pairs), np.nan, np.float32)
    if near_views is None or not len(near_views[0]):
        return out
    near_view, near_item, near_sim = near_views
    at = np.searchsorted(near_view, views_of_pairs)  # the view's best, then its second best
    for rank in (1, 0):  # the best other: the first whose item is not the pair's own
        k = np.minimum(at + rank, len(near_view) - 1)
        other = (near_view[k] == views_of_pairs) & (near_item[k] != items)
        out[other] = near_sim[k[other]]
    return out


def _learned_similarity(index, net, rows, items) -> tuple[np.ndarray, np.ndarray]:
    """Learned-descriptor similarity of each pool row to its item (or the item's mirror), by
    the row's best view (an absent view's zero descriptor scores 0), and that view's number
    (row x views per row + its place; -1 without the learned descriptor)."""
    if net is None or index.net is None:
        return np.full(len(rows), np.nan, np.float32), np.full(len(rows), -1, np.int64)
    dim = index.net.shape[1]
    per_item = index.net.reshape(-1, copy_net.PER_ITEM, dim)
    per_row = net.reshape(len(net), -1, dim)
    out = np.empty(len(rows), np.float32)
    best_view = np.empty(len(rows), np.int64)
    for s in range(0, len(rows), PAIR_CHUNK):
        r, it = rows[s : s + PAIR_CHUNK], items[s : s + PAIR_CHUNK]
        sim = np.einsum("nwd,nvd->nwv", per_item[it], per_row[r]).max(axis=1)
        out[s : s + PAIR_CHUNK] = sim.max(axis=1)
        best_view[s : s + PAIR_CHUNK] = r * per_row.shape[1] + sim.argmax(axis=1)
    return out, best_view


def _pair_scores(index, codes, features, rows, items):
    """Smallest Hamming distance and largest similarity of each pool row to its item's variants."""
    per = index.per_item
    ham = np.zeros(len(rows), np.int32)
    sim = None if features is None or index.features is None else np.zeros(len(rows), np.float32)
    eval_codes = index.codes.reshape(-1, per, 8)
    for s in range(0, len(rows), PAIR_CHUNK):
        r, it = rows[s : s + PAIR_CHUNK], items[s : s + PAIR_CHUNK]
        xor = eval_codes[it] ^ codes[r][:, None]
        ham[s : s + PAIR_CHUNK] = np.bitwise_count(xor).sum(axis=2).min(axis=1)
        if sim is not None:
            f = index.features.reshape(-1, per, index.features.shape[1])[it]
            sim[s : s + PAIR_CHUNK] = np.einsum("nvd,nd->nv", f, features[r]).max(axis=1)
    return ham, sim
