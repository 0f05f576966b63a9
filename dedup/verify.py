"""Second-stage check of a candidate match: does the pool image line up with a crop of the
evaluation image?

Hashes and 8x8 thumbnails cannot tell a 10% crop of an image from an unrelated image with a
similar layout (bench/dedup_quality.py). Candidates from a loose hash radius or similarity are
therefore confirmed here: the pool image's whole 32x32 thumbnail is compared with every square
window of the evaluation image's 32x32 thumbnail whose side is 27 to 32 pixels (all integer
offsets: 91 windows, crops removing up to 5/32 of each side), and with the same windows of its
mirror. Each window and the pool thumbnail are resampled to GRID x GRID colour (RoIAlign: an
area-like average), mean removed and scaled to unit length; the score is the largest correlation
over the 182 windows. Unrelated images rarely exceed 0.96; copies that are resized, re-encoded,
flipped, cropped up to 15% or colour-jittered score above 0.98 (bench/dedup_quality.py).

The same check confirms embedding edges between two pool images (`pair_alignment`), where
either image may be the crop of the other.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

SIZE = 32  # thumbnails are SIZE x SIZE (pool.images.resize_center_crop)
GRID = 12  # descriptor resolution; chosen on the tuning split of bench/dedup_quality.py
MIN_SIDE = 27  # smallest crop window side on the SIZE grid
ITEMS_PER_CHUNK = 256  # evaluation items whose window descriptors are held at once (~80 MB)


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _windows():
    """(W, 4) boxes x0, y0, x1, y1 of every square window with side MIN_SIDE..SIZE."""
    import torch

    boxes = [
        (x, y, x + side, y + side)
        for side in range(SIZE, MIN_SIDE - 1, -1)
        for y in range(SIZE - side + 1)
        for x in range(SIZE - side + 1)
    ]
    return torch.tensor(boxes, dtype=torch.float32)


def _descriptors(thumbs, boxes):
    """RoIAlign each box of each image (boxes: (N*B, 4), B per image) to GRID x GRID, then
    mean-removed unit vectors, shape (N, B, 3 * GRID * GRID)."""
    import torch
    from torchvision.ops import roi_align

    n = len(thumbs)
    per = len(boxes) // max(n, 1)
    owner = torch.arange(n, device=thumbs.device).repeat_interleave(per)[:, None].float()
    crops = roi_align(thumbs, torch.cat([owner, boxes], 1), GRID, aligned=True)
    flat = crops.flatten(1)
    flat = flat - flat.mean(1, keepdim=True)
    return torch.nn.functional.normalize(flat, dim=1, eps=1e-6).view(n, per, -1)


def _as_tensor(thumbs: np.ndarray, device):
    import torch

    if thumbs.shape[1:] != (SIZE, SIZE, 3) or thumbs.dtype != np.uint8:
        raise ValueError(f"thumbnails must be uint8 (N, {SIZE}, {SIZE}, 3), got {thumbs.shape}")
    x = torch.from_numpy(np.ascontiguousarray(thumbs)).to(device)
    return x.permute(0, 3, 1, 2).float() / 255.0


def alignment(
    pool_thumbs: np.ndarray,
    eval_thumbs: np.ndarray,
    pool_rows: np.ndarray,
    eval_rows: np.ndarray,
    progress: bool = False,
    label: str = "verify",
) -> np.ndarray:
    """Alignment score of each pair (pool_thumbs[pool_rows[k]], eval_thumbs[eval_rows[k]])."""
    import torch

    out = np.zeros(len(pool_rows), np.float32)
    if len(pool_rows) == 0:
        return out
    device = _device()
    bar = tqdm(total=len(pool_rows), disable=not progress, desc=label, unit="pair")
    with torch.inference_mode(), bar:
        whole = torch.tensor([[0, 0, SIZE, SIZE]], dtype=torch.float32, device=device)
        pool = _as_tensor(pool_thumbs, device)
        pool_desc = _descriptors(pool, whole.repeat(len(pool), 1))[:, 0]
        windows = _windows().to(device)
        items = np.unique(eval_rows)
        for start in range(0, len(items), ITEMS_PER_CHUNK):
            chunk = items[start : start + ITEMS_PER_CHUNK]
            ev = _as_tensor(eval_thumbs[chunk], device)
            ev = torch.cat([ev, ev.flip(3)])  # the mirrors follow the originals
            desc = _descriptors(ev, windows.repeat(len(ev), 1))
            desc = torch.cat([desc[: len(chunk)], desc[len(chunk) :]], 1)  # (items, 2W, D)
            sel = np.nonzero(np.isin(eval_rows, chunk))[0]
            slot = torch.from_numpy(np.searchsorted(chunk, eval_rows[sel])).to(device)
            rows = torch.from_numpy(pool_rows[sel]).to(device)
            for s in range(0, len(sel), 4096):  # bounded memory: 4096 x 182 x 432 floats
                e = desc[slot[s : s + 4096]]
                p = pool_desc[rows[s : s + 4096]]
                out[sel[s : s + 4096]] = torch.einsum("nwd,nd->nw", e, p).amax(1).cpu().numpy()
                bar.update(len(e))
    return out


def pair_alignment(
    thumbs: np.ndarray, a: np.ndarray, b: np.ndarray, progress: bool = False
) -> np.ndarray:
    """Alignment of each pair of images (thumbs[a[k]], thumbs[b[k]]) of one set, in both
    directions (either may be the cropped one): the larger of the two scores."""
    return np.maximum(
        alignment(thumbs, thumbs, a, b, progress, "verify duplicates (1/2)"),
        alignment(thumbs, thumbs, b, a, progress, "verify duplicates (2/2)"),
    )
