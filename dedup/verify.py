"""Second-stage check of a candidate match: does the pool image line up with a crop of the
evaluation image, turned by a small angle, mirrored or not?

Hashes and thumbnail features cannot tell a copy from an unrelated image with a similar layout
(bench/dedup_quality.py), so every candidate is confirmed here. The pool image's 32x32
thumbnail (or the thumbnail of the picture inside its frame, dedup/views.py) is compared with
square windows of the evaluation image's thumbnail: sides MIN_SIDE..32 px at every integer
offset (crops removing up to 22% of a side), each turned by every angle in ANGLES and mirrored.
Both sides are sampled on a GRID x GRID grid over the central INNER share of the window (so the
fill a rotation leaves in the corners is not compared), in luminance after a 3x3 blur (so
grayscale and colour-shifted copies compare like the original); each sample vector is made
zero-mean and unit length.

A pool image with little of the item's fine detail (less than SOFT_GATE of it: a blurred copy)
is compared a second time with both sides blurred more (SOFT_BLUR), and the better score kept;
sharp images are not, since softened unrelated images line up more often.

The score is a trimmed correlation at the best window: the samples that differ most (a
caption, a logo, a watermark's letters) are left out and the correlation recomputed. At least
the TRIM share is left out, and up to MAX_TRIM where that many samples are outliers (a residual
over OUTLIER times the median: an overlay differs from the picture much more than the rest of
a copy does). Copies under the edits of bench/web_edits.py score above 0.9; unrelated images
rarely do. The threshold is the user's option (DedupOptions.verify_sim).

The same check confirms links between two pool images (`pair_alignment`), either of which may
be the crop of the other.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from tqdm import tqdm

SIZE = 32  # thumbnails are SIZE x SIZE (pool.images.resize_center_crop)
GRID = 12  # samples per side of a window
INNER = 0.84  # share of each window side that is sampled
MIN_SIDE = 25  # smallest window side on the SIZE grid
PAIR_MIN_SIDE = 27  # the same for two pool images (pair_alignment)
ANGLES = (-10.0, -5.0, 0.0, 5.0, 10.0)  # degrees
MIN_CHROMA = 0.02  # colour-difference size (RMS) below which an image counts as grayscale
TRIM = 0.15  # least share of samples left out of the final correlation
MAX_TRIM = 0.3  # most share left out, where that many samples are outliers
OUTLIER = 2.5  # a sample whose residual is this many times the median residual is an outlier
SOFT_BLUR = 7  # box side of the second, softer comparison (blurred copies)
SOFT_GATE = 0.6  # ... made only when the pool image has less than this share of the item's detail
ZOOM_MIN_SIDE = 16  # zoom_alignment: the picture may be half the pool image's side
ITEMS_PER_CHUNK = 64  # evaluation items whose window descriptors are held at once
ROWS_PER_CHUNK = 4096  # pool thumbnails turned into descriptors at once (bounded memory)


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sample_points(boxes: list[tuple[float, float, float]], device):
    """(len(boxes), GRID*GRID, 2) grid_sample coordinates of each (centre x, centre y, side,
    angle) window: a GRID x GRID lattice over its central INNER share, turned by the angle."""
    import torch

    steps = (torch.arange(GRID, dtype=torch.float32) + 0.5) / GRID * 2 - 1
    v, u = torch.meshgrid(steps, steps, indexing="ij")
    lattice = torch.stack([u.flatten(), v.flatten()], 1)  # (G, 2) in [-1, 1]
    b = torch.tensor(boxes, dtype=torch.float32)
    cx, cy, half, angle = b[:, 0:1], b[:, 1:2], b[:, 2:3] * INNER / 2, b[:, 3:4] * math.pi / 180
    cos, sin = torch.cos(angle), torch.sin(angle)
    x = cx + half * (cos * lattice[:, 0] - sin * lattice[:, 1])
    y = cy + half * (sin * lattice[:, 0] + cos * lattice[:, 1])
    return (torch.stack([x, y], 2) / SIZE * 2 - 1).to(device)  # pixel -> [-1, 1] (corners)


@functools.cache
def _boxes(min_side: int, angles: tuple[float, ...]) -> np.ndarray:
    """(K, 4) centre x, centre y, side and angle of every window searched."""
    return np.array(
        [
            (x + side / 2, y + side / 2, side, angle)
            for angle in angles
            for side in range(SIZE, min_side - 1, -1)
            for y in range(SIZE - side + 1)
            for x in range(SIZE - side + 1)
        ]
    )


def window_shape(window, min_side: int = MIN_SIDE, angles: tuple[float, ...] = ANGLES):
    """(share of the side cropped, turn in degrees, mirrored) of a best window index returned
    by `alignment(..., with_window=True)`, or of each of an array of them."""
    boxes = _boxes(min_side, angles)
    window = np.asarray(window)
    _, _, side, angle = boxes[window % len(boxes)].T
    return 1 - side / SIZE, angle, window >= len(boxes)


def describe(window: int, min_side: int = MIN_SIDE, angles: tuple[float, ...] = ANGLES) -> str:
    """The window in words, e.g. "crop 12%, turned +5 deg, mirrored" ("whole" when it is the
    whole image, as it is)."""
    crop, angle, mirrored = window_shape(window, min_side, angles)
    parts = [f"crop {crop:.0%}"] if crop else []
    if angle:
        parts.append(f"turned {angle:+g} deg")
    if mirrored:
        parts.append("mirrored")
    return ", ".join(parts) or "whole"


def _luma(thumbs, device, soft: bool = False):
    """uint8 (N, SIZE, SIZE, 3) -> (N, 4, SIZE, SIZE): blurred luminance in [0, 1], its edge
    strength and two colour differences; blurred more (SOFT_BLUR) when `soft`."""
    import torch

    if thumbs.ndim != 4 or thumbs.shape[1:] != (SIZE, SIZE, 3) or thumbs.dtype != np.uint8:
        raise ValueError(f"thumbnails must be uint8 (N, {SIZE}, {SIZE}, 3), got {thumbs.shape}")
    x = torch.from_numpy(np.ascontiguousarray(thumbs)).to(device).float() / 255.0
    k = SOFT_BLUR if soft else 3
    x = torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), k, 1, k // 2, count_include_pad=False)
    y = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    gx = torch.nn.functional.pad(y[..., :, 2:] - y[..., :, :-2], (1, 1, 0, 0), mode="replicate")
    gy = torch.nn.functional.pad(y[..., 2:, :] - y[..., :-2, :], (0, 0, 1, 1), mode="replicate")
    return torch.cat([y, (gx.square() + gy.square()).sqrt(), x[:, 2:3] - y, x[:, 0:1] - y], 1)


def fine_detail(thumbs, device=None):
    """(N,) fine detail of each thumbnail: the spread of luminance minus its 3x3 blur, as a
    share of the luminance spread (a blurred copy keeps little of its original's; a smooth
    field of a few grey levels has next to none)."""
    import torch

    device = device or _device()
    x = torch.from_numpy(np.asarray(thumbs, np.float32)).to(device)
    y = (x @ torch.tensor([0.299, 0.587, 0.114], device=device))[:, None]
    fine = y - torch.nn.functional.avg_pool2d(y, 3, 1, 1, count_include_pad=False)
    return (fine.flatten(1).std(1) / y.flatten(1).std(1).clamp_min(1e-3)).cpu().numpy()


def _unit(v, keep):
    """Zero-mean, unit-length over the kept samples (keep: 1 or 0 per sample); 0 elsewhere."""
    import torch

    v = (v - _kept_mean(v, keep)) * keep
    return torch.nn.functional.normalize(v, dim=-1, eps=1e-6)


def _kept_mean(v, keep):
    """The mean of v over the kept samples (last axis), keeping that axis."""
    return (v * keep).sum(-1, keepdim=True) / keep.sum(-1, keepdim=True)


def _sample(images, points):
    """images (N, 4, S, S), points (N, K, G, 2) -> descriptors (N, K, 4, G): luminance and
    edge strength, each zero-mean and unit length; the two colour differences as they are
    (absolute colour: a disc on green is not a disc on purple), jointly unit length, or zero
    where the image has next to no colour (grayscale)."""
    import torch

    out = torch.nn.functional.grid_sample(images, points, align_corners=False)  # (N, 4, K, G)
    shape = out[:, :2]  # in place: these tensors are the bulk of an evaluation check's work
    shape -= shape.mean(-1, keepdim=True)
    shape /= shape.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    colour = out[:, 2:]
    norm = colour.square().sum((1, 3), keepdim=True).sqrt()  # (N, 1, K, 1)
    grey = norm < MIN_CHROMA * math.sqrt(colour.shape[1] * colour.shape[3])  # RMS below
    colour /= norm.clamp_min(1e-6)
    colour.masked_fill_(grey, 0)
    return out.transpose(1, 2)


def _unit_pair(v, keep, centre: bool):
    """(n, 2, G) colour differences -> jointly unit length over the kept samples, each channel
    zero-mean there if `centre`."""
    import torch

    if centre:
        v = v - _kept_mean(v, keep)
    return torch.nn.functional.normalize((v * keep).flatten(1), dim=1, eps=1e-9).view_as(v)


def _kept(residual):
    """(n, G) residuals -> (n, 1, G) 1/0: the samples the score uses. The OUTLIER samples
    (residual above OUTLIER x the median: where an overlay covers the picture) are left out,
    at least the TRIM share and at most MAX_TRIM."""
    g = residual.shape[-1]
    median = residual.median(-1, keepdim=True).values
    outliers = (residual > OUTLIER * median).sum(-1)
    trim = outliers.clamp(int(TRIM * g), int(MAX_TRIM * g))
    rank = residual.argsort(-1).argsort(-1)  # 0 for the smallest residual
    return (rank < (g - trim)[:, None]).double()[:, None]


def _score(pool, window):
    """Trimmed correlation of (n, 4, G) descriptor pairs: the grid points where the two differ
    most over all parts (where a caption, logo or watermark sits, `_kept`) are left out, then
    the mean of the parts' correlations on the rest; the colour part counts when both images
    have colour. Also the same with colour left out (luminance and edges only: the shapes)."""
    import torch

    # float64: a near-perfect copy must not round up to a score of 1
    keep = _kept((pool - window).abs().sum(1))
    p, w = pool.double(), window.double()
    luma_edge = (_unit(p[:, :2], keep) * _unit(w[:, :2], keep)).sum(2)  # (n, 2)
    has_colour = (pool[:, 2:].abs().sum((1, 2)) > 0) & (window[:, 2:].abs().sum((1, 2)) > 0)
    # the colours must agree as they are and in their pattern (where it is greener, bluer)
    same = (_unit_pair(p[:, 2:], keep, False) * _unit_pair(w[:, 2:], keep, False)).sum((1, 2))
    pattern = (_unit_pair(p[:, 2:], keep, True) * _unit_pair(w[:, 2:], keep, True)).sum((1, 2))
    colour = torch.minimum(same, pattern)
    return (luma_edge.sum(1) + colour * has_colour) / (2 + has_colour.double()), luma_edge.mean(1)


def alignment(
    pool_thumbs: np.ndarray,
    eval_thumbs: np.ndarray,
    pool_rows: np.ndarray,
    eval_rows: np.ndarray,
    progress: bool = False,
    label: str = "verify",
    min_side: int = MIN_SIDE,
    angles: tuple[float, ...] = ANGLES,
    with_window: bool | str = False,
    soft: bool = True,
    mirrors: bool = True,
):
    """Alignment score of each pair (pool_thumbs[pool_rows[k]], eval_thumbs[eval_rows[k]]),
    searching windows of side >= `min_side` turned by each of `angles`, and (with `mirrors`)
    the same windows of the evaluation image's mirror; with `with_window`, also the index of
    each pair's best window (for `describe`), with `with_window="dot"` also the raw
    similarity the best window was chosen by, and with `with_window="shape"` instead the score
    at the best window with colour left out (a recoloured copy's shapes still line up)."""
    import torch

    out = np.zeros(len(pool_rows), np.float32)
    best_window = np.zeros(len(pool_rows), np.int64)
    best_dot = np.zeros(len(pool_rows), np.float32)  # how the best window was chosen
    shape = np.zeros(len(pool_rows), np.float32)  # the score with colour left out
    if len(pool_rows) == 0:
        return _returned(out, best_window, best_dot, shape, with_window)
    device = _device()
    bar = tqdm(total=len(pool_rows), disable=not progress, desc=label, unit="pair")
    with torch.inference_mode(), bar:
        need = np.unique(pool_rows)
        windows = _sample_points(_boxes(min_side, angles), device)
        levels = (False, True) if soft else (False,)
        order = np.argsort(eval_rows, kind="stable")
        items, starts = np.unique(eval_rows[order], return_index=True)
        bounds = np.append(starts, len(order))
        local = np.searchsorted(need, pool_rows)
        pool_desc = [_centre_descriptors(pool_thumbs, need, device, False)]  # (n, 4, G)
        # the softened comparison, for copies with little of their item's detail (blurred)
        softened = np.zeros(len(pool_rows), bool)
        if soft:
            item_detail = fine_detail(eval_thumbs[items], device)
            pool_detail = np.concatenate(
                [fine_detail(pool_thumbs[r], device) for r in _row_chunks(need)]
            )
            softened = (
                pool_detail[local] < SOFT_GATE * item_detail[np.searchsorted(items, eval_rows)]
            )
            soft_rows = np.unique(local[softened])  # local rows softened, in order
            pool_desc.append(_centre_descriptors(pool_thumbs, need[soft_rows], device, True))
        for c in range(0, len(items), ITEMS_PER_CHUNK):
            chunk = items[c : c + ITEMS_PER_CHUNK]
            in_chunk = order[bounds[c] : bounds[c + len(chunk)]]
            descs = [
                _window_descriptors(eval_thumbs[chunk], windows, device, lv, mirrors)
                if lv == 0 or softened[in_chunk].any()
                else None
                for lv in levels
            ]
            for k in range(len(chunk)):
                sel = order[bounds[c + k] : bounds[c + k + 1]]
                out[sel], best_window[sel], best_dot[sel], shape[sel] = _best(
                    pool_desc[0], local[sel], descs[0][k], device
                )
                soft_sel = sel[softened[sel]]
                if len(soft_sel):
                    soft_local = np.searchsorted(soft_rows, local[soft_sel])
                    score, window, _, soft_shape = _best(
                        pool_desc[1], soft_local, descs[1][k], device
                    )
                    better = score > out[soft_sel]
                    out[soft_sel[better]] = score[better]
                    best_window[soft_sel[better]] = window[better]
                    shape[soft_sel[better]] = soft_shape[better]
                bar.update(len(sel))
    return _returned(out, best_window, best_dot, shape, with_window)


def _returned(score, window, dot, shape, with_window):
    """What `alignment` returns for its `with_window`."""
    if with_window == "dot":
        return score, window, dot
    if with_window == "shape":
        return score, window, shape
    return (score, window) if with_window else score


def _row_chunks(rows: np.ndarray):
    return (rows[c : c + ROWS_PER_CHUNK] for c in range(0, len(rows), ROWS_PER_CHUNK))


def _centre_descriptors(thumbs, rows, device, soft: bool):
    """(len(rows), 4, G) descriptors of the whole of each pool thumbnail thumbs[rows]."""
    import torch

    centre = _sample_points([(SIZE / 2, SIZE / 2, SIZE, 0.0)], device)[:, None]  # (1, 1, G, 2)
    parts = [
        _sample(_luma(thumbs[r], device, soft), centre.expand(len(r), -1, -1, -1))[:, 0]
        for r in _row_chunks(rows)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, 4, GRID * GRID, device=device)


def _window_descriptors(thumbs, windows, device, soft: bool, mirrors: bool = True):
    """(items, 2K, 4, G) descriptors of every window of each thumbnail, then of its mirror
    ((items, K, 4, G) without `mirrors`)."""
    import torch

    ev = _luma(thumbs, device, soft)
    if not mirrors:
        return _sample(ev, windows.expand(len(ev), -1, -1, -1))
    ev = torch.cat([ev, ev.flip(3)])  # the mirrors follow the originals
    desc = _sample(ev, windows.expand(len(ev), -1, -1, -1))
    return torch.cat([desc[: len(thumbs)], desc[len(thumbs) :]], 1)


def _best(pool_desc, rows: np.ndarray, item_desc, device):
    """Score, index, raw similarity and score with colour left out of the best window of one
    item for each of the pool descriptors' rows."""
    import torch

    p = pool_desc[torch.from_numpy(rows).to(device)]  # (m, 4, G)
    dot, best = (p.flatten(1) @ item_desc.flatten(1).T).max(1)  # the best window of each
    score, shape = _score(p, item_desc[best])
    return score.cpu().numpy(), best.cpu().numpy(), dot.cpu().numpy(), shape.cpu().numpy()


def zoom_alignment(pool_thumbs, eval_thumbs, pool_rows, eval_rows, progress: bool = False):
    """Alignment of each pair where the picture may fill only part of the pool image: upright
    windows of the pool image (sides ZOOM_MIN_SIDE..SIZE, at every integer offset) against the
    whole evaluation image and its mirror, with the best window of each (a mirrored match is
    numbered as a mirrored window). For a zoomed-out copy whose frame is not plain enough for
    dedup/views.py to cut (a caption or logo across the border, a busy page): `alignment` with
    the two sides' roles swapped. The windows are described per pool image here, not once per
    evaluation item shared by many pairs, so a pair costs far more than in `alignment`: it is
    run for few pairs."""
    n = len(pool_rows)
    # the mirror on the evaluation side: each pool image's windows are described once
    both = np.concatenate([eval_thumbs, eval_thumbs[:, :, ::-1]])
    score, window, dot = alignment(
        both,
        pool_thumbs,
        np.concatenate([eval_rows, eval_rows + len(eval_thumbs)]),
        np.concatenate([pool_rows, pool_rows]),
        progress,
        "verify zoomed-out copies",
        min_side=ZOOM_MIN_SIDE,
        angles=(0.0,),
        with_window="dot",
        soft=False,
        mirrors=False,
    )
    mirrored = dot[n:] > dot[:n]  # as `alignment` chooses among all windows: by raw similarity
    best = np.where(mirrored, score[n:], score[:n])
    window = np.where(mirrored, window[n:] + len(_boxes(ZOOM_MIN_SIDE, (0.0,))), window[:n])
    return best, window


def zoom_share(window):
    """The share of the pool image's side that a `zoom_alignment` window covers (the picture's
    size in the copy), and whether it is mirrored."""
    crop, _, mirrored = window_shape(window, ZOOM_MIN_SIDE, (0.0,))
    return 1 - crop, mirrored


def describe_zoom(window: int) -> str:
    """A `zoom_alignment` window in words, e.g. "picture at 62% of the image, mirrored"."""
    share, mirrored = zoom_share(window)
    return f"picture at {share:.0%} of the image" + (", mirrored" if mirrored else "")


def pair_alignment(
    thumbs: np.ndarray, a: np.ndarray, b: np.ndarray, progress: bool = False
) -> np.ndarray:
    """Alignment of each pair of images (thumbs[a[k]], thumbs[b[k]]) of one set, in both
    directions (either may be the cropped one): the larger of the two scores.

    Pool duplicates are linked by a close hash or feature, so they differ by small crops only:
    windows of side >= PAIR_MIN_SIDE, not turned (about 20 times less work per image than an
    evaluation check, which matters when 10^5 linked pairs are checked)."""
    kw = {"min_side": PAIR_MIN_SIDE, "angles": (0.0,), "soft": False}
    return np.maximum(
        alignment(thumbs, thumbs, a, b, progress, "verify duplicates (1/2)", **kw),
        alignment(thumbs, thumbs, b, a, progress, "verify duplicates (2/2)", **kw),
    )
