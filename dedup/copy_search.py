"""Decontamination candidates from copy descriptors: which evaluation items a pool image may be
a copy of.

Two steps. First the index: each view of a pool image (dedup/views.py) looks up its NEIGHBOURS
nearest evaluation variants (dedup/decontaminate.py variants: crops, turns, mirrors) by 8x8
luminance descriptor, giving each view its WIDE_ITEMS most similar items. The index holds few
variants per item, so a copy cropped between them (a 15% crop off-centre) often ranks its own
item below unrelated ones there. Then a finer look at those items only: each is compared as
many windows (WINDOW_SIDES x WINDOW_STEPS^2 positions x WINDOW_ANGLES, mirrored or not), and
each view's TOP_ITEMS items whose best window reaches FLOOR become candidates for verification
(dedup/verify.py). Measured on bench/dedup_quality.py's tune split.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from tqdm import tqdm

from dedup import embeddings, views

NEIGHBOURS = 64  # variants looked up per view
NPROBE = 32  # inverted lists searched when the variant index is IVF
WIDE_ITEMS = 16  # items per view looked at window by window
TOP_ITEMS = 2  # candidates kept per view of a pool image
FLOOR = 0.7  # least window similarity of a candidate
WINDOW_SIDES = (32, 30, 28, 26, 24)  # on the 32 px thumbnail
WINDOW_STEPS = 3  # positions per axis of each smaller window: both edges and the centre
WINDOW_ANGLES = (-8.0, -4.0, 0.0, 4.0, 8.0)  # degrees
SIZE = 32
NET_TOP = 2  # candidates kept per pool image from the learned descriptor (dedup/copy_net.py)
NET_FLOOR = 0.7  # least learned-descriptor similarity of such a candidate (bench/dedup_quality.py:
# 2.6% of untouched web images reach it, so few are decoded again to verify; 96% of copies do)
NET_FLOOR_ALONE = 0.5  # ... of a pool image's nearest item that stands NET_STANDOUT above the
NET_STANDOUT = 0.1  # next: 3.4% of untouched web images against 2.3% at NET_FLOOR alone, and the
# copies a busy page or a heavy blur leaves in 0.5-0.7 (their own item is still the nearest)


def candidates(index, copy: np.ndarray, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(pool row, item) candidate pairs; `copy` holds each pool row's view_descriptors and
    `index` is a decontaminate.EvalIndex (its variant descriptors and thumbnails)."""
    dim = views.COPY_GRID**2
    per_view = copy.reshape(-1, dim)
    present = _present(per_view)
    nearest = []  # (view, item) pairs, WIDE_ITEMS per view, reduced chunk by chunk
    for found in embeddings.similar_chunks(
        index.copy,
        per_view[present],
        -1.0,
        k=NEIGHBOURS,
        nprobe=NPROBE,
        progress=progress,
        desc="overlap copies",
    ):
        view, item = present[found.query], found.db // index.per_item
        nearest.append(_first_items(view, item, WIDE_ITEMS))
    if not nearest:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    view, item = (np.concatenate(a) for a in zip(*nearest, strict=True))
    sim = _window_similarity(per_view, index.thumbs, view, item, progress)
    keep = sim >= FLOOR
    # kept per view, not per image: each view is a guess at where the picture is, and a
    # blurred page's whole view finds bland items more alike than the picture's own
    view, item = _top_per_group(view[keep], item[keep], sim[keep], TOP_ITEMS)
    pairs = np.unique(np.stack([view // views.VIEWS, item], 1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def learned_nearest(index, net: np.ndarray, progress: bool = False):
    """(pool row, item, similarity): the NET_TOP evaluation items nearest each pool row's learned
    descriptors in `net` (dedup/copy_net.py view_descriptors, zeros for absent views, or one
    descriptor per row), by the item or its mirror in `index.net` and the row's best view,
    best first. Those at NET_FLOOR or above are candidates."""
    return nearest_per_row(learned_nearest_views(index, net, progress), net, index)


def learned_nearest_views(index, net: np.ndarray, progress: bool = False):
    """(view, item, similarity): the NET_TOP evaluation items nearest each present view's
    learned descriptor in `net` (as learned_nearest), best first; a view is numbered pool row
    x views per row + its place. Its runner-up tells how much a view's item stands out there."""
    from dedup import copy_net

    dim = index.net.shape[1]
    per_view = net.reshape(-1, dim)
    present = _present(per_view)
    out = []
    for found in embeddings.similar_chunks(
        index.net,
        per_view[present],
        -1.0,
        k=copy_net.PER_ITEM * NET_TOP,
        nprobe=NPROBE,
        progress=progress,
        desc="overlap learned",
    ):  # a chunk holds whole queries, so each view's items come in one chunk
        out.append(_best_per_row(present[found.query], found.db // copy_net.PER_ITEM, found.sim))
    if not out:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return tuple(np.concatenate(a) for a in zip(*out, strict=True))


def nearest_per_row(nearest_views, net: np.ndarray, index):
    """learned_nearest_views' items gathered per pool row of `net`: each row's NET_TOP nearest
    by its best view, best first."""
    view, item, sim = nearest_views
    return _best_per_row(view // (net.shape[1] // index.net.shape[1]), item, sim)


def _present(per_view: np.ndarray) -> np.ndarray:
    """The rows of a (views, dim) descriptor array that a pool image has (an absent view is
    stored as zeros)."""
    return np.nonzero(np.abs(per_view).sum(1) > 0)[0]


def learned_candidates(nearest) -> tuple[np.ndarray, np.ndarray]:
    """(pool row, item) candidates among `learned_nearest`'s: those at NET_FLOOR, and a row's
    nearest item from NET_FLOOR_ALONE when it stands NET_STANDOUT above the row's next."""
    row, item, sim = nearest
    same = row[1:] == row[:-1]  # the next entry is the same row's runner-up
    first = np.concatenate([[True], ~same])
    following = np.concatenate([np.where(same, sim[1:], -1.0), [-1.0]])
    alone = first & (sim >= NET_FLOOR_ALONE) & (sim - following >= NET_STANDOUT)
    keep = (sim >= NET_FLOOR) | alone
    return row[keep], item[keep]


def _best_per_row(row, item, sim):
    """The NET_TOP most similar distinct items of each row (by their best similarity), ordered
    by row and, within a row, best first."""
    order = np.lexsort((-sim, row))
    row, item, sim = row[order], item[order], sim[order]
    keep = _first_places(row, item, NET_TOP)
    return row[keep], item[keep], sim[keep]


def nearest_items(index, desc: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(query, item) pairs: the `count` distinct evaluation items nearest each copy descriptor
    in `desc` (by their nearest variant), best first."""
    out = [
        _first_items(found.query, found.db // index.per_item, count)
        for found in embeddings.similar_chunks(
            index.copy, desc, -1.0, k=NEIGHBOURS, nprobe=NPROBE, desc="cohort copies"
        )
    ]
    if not out:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return tuple(np.concatenate(a) for a in zip(*out, strict=True))


def _top_per_group(group, item, sim, top):
    """The `top` most similar distinct items of each group (best similarity per item)."""
    order = np.lexsort((-sim, group))
    return _first_items(group[order], item[order], top)


def _first_items(group, item, top):
    """The first `top` distinct items of each group, for pairs ordered by group and, within a
    group, best first (as a FAISS search returns them)."""
    keep = _first_places(group, item, top)
    return group[keep], item[keep]


def _first_places(group, item, top) -> np.ndarray:
    """The positions of those pairs (_first_items)."""
    key = group * (int(item.max(initial=0)) + 1) + item
    first = np.sort(np.unique(key, return_index=True)[1])  # stable: each pair's first place
    rank = np.arange(len(first)) - np.searchsorted(group[first], group[first], side="left")
    return first[rank < top]


@functools.cache
def _windows():
    """(W, 2, 3) affine_grid matrices of every window, in [-1, 1] coordinates."""
    import torch

    out = []
    for angle in WINDOW_ANGLES:
        for side in WINDOW_SIDES:
            offsets = np.linspace(0, SIZE - side, WINDOW_STEPS if side < SIZE else 1)
            for y in offsets:
                for x in offsets:
                    t, h = math.radians(angle), side / SIZE
                    c, s = math.cos(t), math.sin(t)
                    cx, cy = (x + side / 2) / (SIZE / 2) - 1, (y + side / 2) / (SIZE / 2) - 1
                    out.append([[h * c, -h * s, cx], [h * s, h * c, cy]])
    return torch.tensor(out, dtype=torch.float32)


def window_descriptors(thumbs: np.ndarray):
    """uint8 (N, 32, 32, 3) -> torch (N, 2W, 64): the copy descriptor (views.copy_descriptor)
    of every window of each thumbnail, then of every window of its mirror."""
    import torch
    import torch.nn.functional as F

    luma = torch.from_numpy(np.ascontiguousarray(thumbs)).float() @ torch.tensor(
        [0.299, 0.587, 0.114]
    )
    luma = torch.cat([luma, luma.flip(2)])[:, None]  # (2N, 1, S, S), mirrors last
    theta = _windows()
    grid = F.affine_grid(theta, (len(theta), 1, 16, 16), align_corners=False)
    n, w = len(thumbs), len(theta)
    out = torch.empty(2 * n, w, 64)
    for i in range(2 * n):  # one image's windows at a time: (W, 1, 16, 16)
        sampled = F.grid_sample(luma[i : i + 1].expand(w, -1, -1, -1), grid, align_corners=False)
        out[i] = F.avg_pool2d(sampled, 2).reshape(w, 64)  # 8x8 cells, as copy_descriptor
    out -= out.mean(-1, keepdim=True)
    out = F.normalize(out, dim=-1, eps=1e-6)
    return torch.cat([out[:n], out[n:]], 1)


ITEMS_PER_CHUNK = 256


def _window_similarity(per_view, eval_thumbs, view, item, progress=False) -> np.ndarray:
    """For each (pool view, item) pair, the best similarity of the view's descriptor to one of
    the item's windows."""
    import torch

    out = np.zeros(len(view), np.float32)
    order = np.argsort(item, kind="stable")
    items, starts = np.unique(item[order], return_index=True)
    bounds = np.append(starts, len(order))
    chunks = range(0, len(items), ITEMS_PER_CHUNK)
    with torch.inference_mode():
        for c in tqdm(chunks, disable=not progress, desc="overlap windows", unit="chunk"):
            chunk = items[c : c + ITEMS_PER_CHUNK]
            desc = window_descriptors(eval_thumbs[chunk])
            for k in range(len(chunk)):
                sel = order[bounds[c + k] : bounds[c + k + 1]]
                pool = torch.from_numpy(per_view[view[sel]])
                out[sel] = (pool @ desc[k].T).amax(1).numpy()
    return out
