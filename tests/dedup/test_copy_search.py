"""Decontamination candidates from copy descriptors (dedup/copy_search.py), on real images:
the window descriptors agree with the index's, and copies cropped between the index's variants
or framed and turned find their item among the few candidates kept."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

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
        assert (rows == row).sum() <= copy_search.TOP_ITEMS
