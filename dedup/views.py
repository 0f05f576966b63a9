"""Where the picture is inside a pool image: the views dedup compares.

Web copies often put the picture in a larger frame: a plain border around a shrunk copy
(thumbnails, framed reposts), bars that pad it to another aspect ratio, a page around a
screenshot of it. `content_box` finds the picture's box in such a frame: the background is the
colour most of the outer ring has; the picture is the largest region that differs from it,
after an opening that removes thin strokes (caption text, rules). Images without a plain frame
(most of them) cost one look at their outer ring.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pool.images import resize_center_crop

WORK_SIDE = 128  # the frame is searched on a copy at most this large
TOLERANCE = 18  # a pixel is background when every channel is within this of the frame colour
MIN_FRAME_SHARE = 0.5  # share of the outer ring that must be the frame colour
MIN_AREA = 0.08  # a content box smaller than this share of the image is not trusted
MIN_FILL = 0.8  # share of its box the picture must cover (a 6-degree turn still does)
FULL = 0.96  # a box covering this much of both sides is the whole image


def content_box(img: Image.Image) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the picture inside a plain frame, or None when the image
    has no plain frame (or the picture fills it)."""
    from scipy import ndimage

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
    background = np.median(ring, axis=0)
    if np.mean(np.abs(ring - background).max(1) <= TOLERANCE) < MIN_FRAME_SHARE:
        return None
    mask = np.abs(arr - background).max(2) > TOLERANCE
    mask = ndimage.binary_opening(mask, np.ones((3, 3), bool), iterations=1)
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    biggest = int(np.argmax(sizes))
    rows, cols = ndimage.find_objects(labels)[biggest]
    top, bottom, left, right = rows.start, rows.stop, cols.start, cols.stop
    if (bottom - top) * (right - left) < MIN_AREA * h * w:
        return None
    # a picture is a rectangle (perhaps turned a little); a shape drawn on a plain background
    # (a disc fills 79% of its box) is the image itself, not a picture in a frame
    solid = ndimage.binary_fill_holes(labels[rows, cols] == biggest + 1)
    if solid.mean() < MIN_FILL:
        return None
    if bottom - top >= FULL * h and right - left >= FULL * w:
        return None
    # one working pixel in from each side: the box's edge pixels mix picture and frame
    inv = 1 / scale
    return (
        round((left + 1) * inv),
        round((top + 1) * inv),
        min(img.width, round((right - 1) * inv)),
        min(img.height, round((bottom - 1) * inv)),
    )


def thumbnails(img: Image.Image, size: int) -> list[np.ndarray]:
    """The image's square thumbnail, then, while the picture has a plain frame of its own (a
    framed copy in a screenshot), the thumbnail of the picture inside each frame: at most
    VIEWS in all."""
    out = [np.asarray(resize_center_crop(img, size))]
    while len(out) < VIEWS and (box := content_box(img)) is not None:
        img = img.crop(box)
        out.append(np.asarray(resize_center_crop(img, size)))
    return out


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


def view_descriptors(img: Image.Image, size: int = 32) -> np.ndarray:
    """(VIEWS * 64,) copy descriptors of the image's views, zeros for a view it does not have
    (what dedup caches per pool image)."""
    out = np.zeros((VIEWS, COPY_GRID * COPY_GRID), np.float32)
    thumbs = thumbnails(img, size)
    out[: len(thumbs)] = copy_descriptor(np.stack(thumbs))
    return out.reshape(-1)
