"""Where the picture is inside a pool image: the views dedup compares.

Web copies often put the picture in a larger frame: a plain border around a shrunk copy
(thumbnails, framed reposts), bars that pad it to another aspect ratio, a page around a
screenshot of it, and the frame may be turned with the picture. `find_picture` finds the
picture in such a frame: the background is the colour most of the outer ring has; the picture
is the largest region that differs from it, after an opening that removes thin strokes (caption
text, rules). Its turn is the angle at which its box is smallest, and its box
keeps the rows and columns the region mostly covers (a rectangle covers them alike, a disc does
not), so a logo or caption touching the picture does not widen it. Images
without a plain frame (most of them) cost one look at their outer ring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pool.images import resize_center_crop

# Bumped whenever the views found change: it names the caches of what is computed from them
# (dedup/run.py copy descriptors, dedup/copy_net.py learned descriptors)
VERSION = 5
WORK_SIDE = 128  # the frame is searched on a copy at most this large
TOLERANCE = 18  # a pixel is background when every channel is within this of the frame colour
MIN_FRAME_SHARE = 0.5  # share of the outer ring that must be the frame colour
MIN_AREA = 0.04  # a picture smaller than this share of the image (a fifth of its side) is not
# trusted; a thumbnail on a page can be nearly that small
MAX_TURN = 12  # degrees either way a framed picture may be turned
TURN_STEP = 0.5
EDGE_TRIM = 2  # percent of outline points at each end left out of the box (small protrusions)
AREA_TIE = 0.998  # boxes this close to the smallest count as smallest (the least turn wins)
COVERED = 0.5  # a row (column) belongs to the picture when the region covers this share of it
FLAT = 0.8  # a picture's rows (columns) are covered alike: the 10th percentile >= FLAT * median
SECOND_SHARE = 0.1  # a second plain colour on this share of the ring is background too
RAMP = 0.1  # share of a side a blurred picture may fade into its frame over
FULL = 0.96  # a box covering this much of both sides is the whole image
EXTENT = 0.03  # share of a row (column) unlike the frame that puts it in the picture's extent
EDGE_BAND = 0.05  # share of the extent's side that is its edge band
EXTENT_MARGIN = 3  # a pixel is unlike the frame beyond the frame's own noise plus this
EDGE_PARTS = 8  # ... cut along into this many parts
EDGE_SPREAD = 0.6  # ... of which this share holds some of the picture, on all four sides
PLAIN_NOISE = 6  # a page cut into blocks has a plain frame: its noise is at most this


@dataclass(frozen=True)
class Picture:
    """The picture inside a frame: its centre and upright size in image pixels, and the angle
    (degrees counter-clockwise, as PIL's rotate) it is turned by."""

    cx: float
    cy: float
    width: float
    height: float
    angle: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the upright picture (of the image turned upright)."""
        return (
            round(self.cx - self.width / 2),
            round(self.cy - self.height / 2),
            round(self.cx + self.width / 2),
            round(self.cy + self.height / 2),
        )

    def crop(self, img: Image.Image) -> Image.Image:
        """The picture, turned upright and cut out of its frame."""
        if self.angle:
            img = img.rotate(-self.angle, Image.Resampling.BICUBIC, center=(self.cx, self.cy))
        return img.crop(self.box)


def find_picture(img: Image.Image) -> Picture | None:
    """The picture inside a plain frame, or None when the image has no plain frame (or the
    picture fills it)."""
    scale = min(1.0, WORK_SIDE / max(img.size))
    small = (
        img
        if scale == 1.0
        else img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BOX
        )
    )
    arr = np.asarray(small.convert("RGB"), np.int16)
    h, w = arr.shape[:2]
    if min(h, w) < 8:
        return None
    ring = np.concatenate([arr[0], arr[-1], arr[1:-1, 0], arr[1:-1, -1]])
    frame = np.median(ring, axis=0)
    is_frame = np.abs(ring - frame).max(1) <= TOLERANCE
    if is_frame.mean() < MIN_FRAME_SHARE:
        return None
    backgrounds = [[frame]]
    rest = ring[~is_frame]
    if len(rest) >= SECOND_SHARE * len(ring):
        # a turned frame leaves the corners another plain colour (the turn's fill)
        fill = np.median(rest, axis=0)
        if np.mean(np.abs(rest - fill).max(1) <= TOLERANCE) >= MIN_FRAME_SHARE:
            backgrounds.append([frame, fill])
    # the background that leaves the most rectangular picture
    found = [box for colours in backgrounds if (box := _picture_box(arr, colours)) is not None]
    if found:
        _, cx, cy, bw, bh, angle = max(found)
        if angle == 0:
            cx, cy, bw, bh = _without_blur_ramp(np.abs(arr - frame).max(2), cx, cy, bw, bh)
    elif (extent := _extent_box(arr, frame, (noise := _frame_noise(ring, frame)))) is not None:
        cx, cy, bw, bh, angle = extent
    elif noise <= PLAIN_NOISE and (block := _layout_box(arr, backgrounds[-1], noise)) is not None:
        cx, cy, bw, bh, angle = block
    else:
        return None
    if bw * bh < MIN_AREA * h * w or (bw >= FULL * w and bh >= FULL * h):
        return None
    # one working pixel in from each side: the box's edge pixels mix picture and frame
    inv = 1 / scale
    if min(bw, bh) - 2 < COPY_GRID * scale:  # narrower than the copy descriptor's grid
        return None
    return Picture(cx * inv, cy * inv, (bw - 2) * inv, (bh - 2) * inv, angle)


def _frame_noise(ring: np.ndarray, frame: np.ndarray) -> float:
    """How far the frame's own pixels stray from its colour (re-encoding, resampling): the
    95th percentile over the ring pixels within TOLERANCE of it."""
    off = np.abs(ring - frame).max(1)
    return float(np.percentile(off[off <= TOLERANCE], 95))


def _extent_box(arr: np.ndarray, frame: np.ndarray, noise: float):
    """(centre x, centre y, width, height, 0) of the rows and columns that hold any of the
    picture (EXTENT share of their pixels unlike the frame), or None: the fallback for a
    picture with much of the frame's colour in it (a grey picture on grey, an object on
    white), whose region is not one solid rectangle."""
    unlike = _unlike(arr, [frame], noise)
    rows = np.nonzero(unlike.mean(1) >= EXTENT)[0]
    cols = np.nonzero(unlike.mean(0) >= EXTENT)[0]
    if len(rows) == 0 or len(cols) == 0:
        return None
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if not _reaches_edges(unlike[top:bottom, left:right]):
        return None
    return (left + right) / 2, (top + bottom) / 2, float(right - left), float(bottom - top), 0.0


def _unlike(arr: np.ndarray, colours: list[np.ndarray], noise: float) -> np.ndarray:
    """Where the image is unlike every background colour (beyond the frame's own noise plus
    EXTENT_MARGIN), thin strokes (caption text, rules) opened away."""
    from scipy import ndimage

    unlike = np.ones(arr.shape[:2], bool)
    for colour in colours:
        unlike &= np.abs(arr - colour).max(2) > noise + EXTENT_MARGIN
    return ndimage.binary_opening(unlike, np.ones((3, 3), bool))


def _reaches_edges(box: np.ndarray) -> bool:
    """Whether the picture mask `box` reaches its box's edges all along them (if sparsely),
    as a picture does; a disc or a triangle touches them at points."""
    bh, bw = box.shape
    dy, dx = max(1, round(EDGE_BAND * bh)), max(1, round(EDGE_BAND * bw))
    along = (box[:dy].any(0), box[-dy:].any(0), box[:, :dx].any(1), box[:, -dx:].any(1))
    return min(_spread(edge) for edge in along) >= EDGE_SPREAD


def _layout_box(arr: np.ndarray, colours: list[np.ndarray], noise: float):
    """(centre x, centre y, width, height, 0) of the largest block of a page laid out in
    blocks (a title, the picture, caption lines) separated by rows or columns of plain
    background, found by cutting at those gaps (XY-cut), or None when the page holds a single
    block that does not reach its box's edges all along them (an object on a plain ground)."""
    unlike = _unlike(arr, colours, noise)
    top, bottom, left, right = 0, unlike.shape[0], 0, unlike.shape[1]
    blocks = 1
    for _ in range(4):  # rows then columns, until stable: each cut may open gaps for the next
        before = (top, bottom, left, right)
        for axis in (0, 1):
            cut = _largest_run(unlike[top:bottom, left:right], axis)
            if cut is None:
                return None
            a, b, runs = cut
            blocks = max(blocks, runs)
            if axis == 0:
                top, bottom = top + a, top + b
            else:
                left, right = left + a, left + b
        if (top, bottom, left, right) == before:
            break
    if blocks == 1 and not _reaches_edges(unlike[top:bottom, left:right]):
        return None
    return (left + right) / 2, (top + bottom) / 2, float(right - left), float(bottom - top), 0.0


def _largest_run(mask: np.ndarray, axis: int) -> tuple[int, int, int] | None:
    """(start, end, number of runs) of the run of occupied rows (axis 0) or columns (axis 1)
    of `mask` that holds the most of it, where occupied means at least EXTENT of the line is
    set; None when no line is."""
    per_line = mask.sum(1 - axis)
    occupied = mask.mean(1 - axis) >= EXTENT
    edges = np.diff(np.concatenate([[0], occupied.astype(np.int8), [0]]))
    runs = list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0], strict=True))
    if not runs:
        return None
    a, b = max(runs, key=lambda r: per_line[r[0] : r[1]].sum())
    return int(a), int(b), len(runs)


def _spread(edge: np.ndarray) -> float:
    """Share of EDGE_PARTS equal parts of an edge that hold any of the picture."""
    return float(np.mean([part.any() for part in np.array_split(edge, EDGE_PARTS)]))


def _without_blur_ramp(contrast: np.ndarray, cx, cy, bw, bh):
    """The box with each side moved in to where the picture's contrast with the frame reaches
    half its level inside (at most RAMP of the side): a blurred copy fades into its frame, and
    the box of everything unlike the frame takes in the fade."""
    left, top = round(cx - bw / 2), round(cy - bh / 2)
    right, bottom = left + round(bw), top + round(bh)
    inside = contrast[top:bottom, left:right].astype(np.float32)
    cut = []
    for profile in (
        inside.mean(1),  # rows from the top
        inside.mean(1)[::-1],  # from the bottom
        inside.mean(0),  # columns from the left
        inside.mean(0)[::-1],  # from the right
    ):
        depth = max(1, round(RAMP * len(profile)))
        level = profile[: 2 * depth].max()
        cut.append(min(depth, int(np.argmax(profile[:depth] >= level / 2))))
    top, bottom, left, right = top + cut[0], bottom - cut[1], left + cut[2], right - cut[3]
    return (left + right) / 2, (top + bottom) / 2, right - left, bottom - top


def _picture_box(arr: np.ndarray, colours: list[np.ndarray]):
    """The upright box (_upright_box) of the largest region unlike every background colour."""
    from scipy import ndimage

    mask = np.ones(arr.shape[:2], bool)
    for colour in colours:
        mask &= np.abs(arr - colour).max(2) > TOLERANCE
    mask = ndimage.binary_opening(mask, np.ones((3, 3), bool), iterations=1)
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    biggest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    return _upright_box(ndimage.binary_fill_holes(labels == biggest))


def _upright_box(region: np.ndarray):
    """(share of the box the region fills, centre x, centre y, width, height, angle) of the
    rectangle `region` (a boolean mask) is, in work pixels, or None when it is not a rectangle
    turned by at most MAX_TURN."""
    from scipy import ndimage

    ys, xs = np.nonzero(region)
    ox, oy = xs.mean() + 0.5, ys.mean() + 0.5
    x, y = xs + 0.5 - ox, ys + 0.5 - oy
    # the turn: search the outline's points only (a few hundred), every angle at once
    edge = (region & ~ndimage.binary_erosion(region))[ys, xs]
    angles = np.arange(-MAX_TURN, MAX_TURN + TURN_STEP / 2, TURN_STEP)
    t = np.deg2rad(angles)[:, None]
    # coordinates along the picture's own axes, were it turned by each angle counter-clockwise
    u = x[edge] * np.cos(t) - y[edge] * np.sin(t)
    v = x[edge] * np.sin(t) + y[edge] * np.cos(t)
    lo, hi = np.percentile(u, [EDGE_TRIM, 100 - EDGE_TRIM], axis=1)
    area = hi - lo
    lo, hi = np.percentile(v, [EDGE_TRIM, 100 - EDGE_TRIM], axis=1)
    area *= hi - lo
    # the smallest turn whose box is (next to) the smallest: pixel binning alone makes an
    # upright picture's box a little smaller at some small turn
    near = np.nonzero(area <= area.min() / AREA_TIE)[0]
    angle = float(angles[near[np.argmin(np.abs(angles[near]))]])
    t = np.deg2rad(angle)
    u = x * np.cos(t) - y * np.sin(t)
    v = x * np.sin(t) + y * np.cos(t)
    u0, v0 = u.min(), v.min()
    cols = np.bincount(np.floor(u - u0).astype(int))
    rows = np.bincount(np.floor(v - v0).astype(int))
    spans = []
    for profile in (cols, rows):
        covered = np.nonzero(profile >= COVERED * np.median(profile[profile > 0]))[0]
        lo, hi = covered.min(), covered.max() + 1
        inside = profile[lo:hi]
        if np.percentile(inside, 10) < FLAT * np.median(inside):
            return None
        spans.append((lo, hi))
    (ulo, uhi), (vlo, vhi) = spans
    fill = np.mean((u - u0 >= ulo) & (u - u0 < uhi) & (v - v0 >= vlo) & (v - v0 < vhi))
    fill *= len(u) / ((uhi - ulo) * (vhi - vlo))
    uc, vc = u0 + (ulo + uhi) / 2, v0 + (vlo + vhi) / 2
    # back from the picture's axes to image coordinates
    cx = ox + uc * np.cos(t) + vc * np.sin(t)
    cy = oy - uc * np.sin(t) + vc * np.cos(t)
    return float(fill), cx, cy, float(uhi - ulo), float(vhi - vlo), float(angle)


def pictures(img: Image.Image) -> list[Image.Image]:
    """The views of an image: itself, then, while the picture has a plain frame of its own (a
    framed copy in a screenshot), the picture inside each frame, turned upright: at most VIEWS
    in all."""
    out = [img]
    while len(out) < VIEWS and (picture := find_picture(img)) is not None:
        img = picture.crop(img)
        out.append(img)
    return out


def thumbnails(img: Image.Image, size: int, views: list[Image.Image] | None = None):
    """Square thumbnails (uint8 arrays) of the image's views (`pictures`, or `views` when
    already found)."""
    return [np.asarray(resize_center_crop(v, size)) for v in views or pictures(img)]


COPY_GRID = 8  # the copy descriptor is an 8x8 luminance thumbnail
VIEWS = 3  # the image, the picture inside its frame, the picture inside that one


def copy_descriptor(thumbs: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) thumbnails -> (N, 64) float32: the 8x8 area-averaged luminance, mean
    removed, unit length. Luminance, so grayscale and colour-shifted copies stay close; used to
    find decontamination candidates (dedup/decontaminate.py), which verification then checks."""
    n, s = thumbs.shape[0], thumbs.shape[1]
    luma = thumbs.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    cell = s // COPY_GRID
    small = luma[:, : cell * COPY_GRID, : cell * COPY_GRID]
    small = small.reshape(n, COPY_GRID, cell, COPY_GRID, cell).mean((2, 4)).reshape(n, -1)
    small -= small.mean(1, keepdims=True)
    return small / np.maximum(np.linalg.norm(small, axis=1, keepdims=True), 1e-6)


def view_descriptors(
    img: Image.Image, size: int = 32, views: list[Image.Image] | None = None
) -> np.ndarray:
    """(VIEWS * 64,) copy descriptors of the image's views (`pictures`, or `views` when already
    found), zeros for a view it does not have (what dedup caches per pool image)."""
    out = np.zeros((VIEWS, COPY_GRID * COPY_GRID), np.float32)
    thumbs = thumbnails(img, size, views)
    out[: len(thumbs)] = copy_descriptor(np.stack(thumbs))
    return out.reshape(-1)
