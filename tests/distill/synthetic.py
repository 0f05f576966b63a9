"""Generated images for the distill tests: each class is a colour and a stripe direction."""

from __future__ import annotations

import numpy as np

COLOURS = np.array([[200, 40, 40], [40, 180, 40], [40, 60, 200], [200, 200, 40]], dtype=np.float32)
NAMES = ["red", "green", "blue", "yellow"]


def make_images(n: int, size: int = 16, seed: int = 0, distractors: int = 0):
    """(x uint8 (n+distractors, size, size, 3), y int64 with -1 for the distractors)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(COLOURS), n)
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = np.stack([np.sin(xx), np.sin(yy), np.sin(xx + yy), np.sin(xx - yy)])  # per class
    base = COLOURS[y][:, None, None, :] * (0.75 + 0.25 * stripes[y][..., None])
    x = base + rng.normal(0, 25, (n, size, size, 3))
    if distractors:
        noise = rng.uniform(0, 255, (distractors, size, size, 3))
        x = np.concatenate([x, noise])
        y = np.concatenate([y, np.full(distractors, -1)])
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


def write_npz(path, n, size=16, seed=0, distractors=0, labels=True):
    x, y = make_images(n, size, seed, distractors)
    arrays = {"x": x, "class_names": np.array(NAMES)}
    if labels:
        arrays["y"] = y
    np.savez(path, **arrays)
    return path
