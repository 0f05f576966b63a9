"""A small learned copy descriptor: a second source of decontamination candidates.

A CNN (8 conv layers, GeM pooling, 128-d, about 310k parameters) trained SSCD-style (InfoNCE plus
a KoLeo spread term) to map an image and its web edits (bench/web_edits.py: crops, borders,
screenshots, turns, overlays, colour, blur, JPEG, alone and in pairs) to nearby unit vectors.
It looks at the whole image squashed to SIDE x SIDE, so it needs no picture finder: a copy
shrunk into a page or turned still lands near its source, where the 8x8 luminance descriptors of
dedup/copy_search.py often do not. A pool image is also described as each picture
dedup/views.py finds inside its frames (`view_descriptors`): a picture that fills a third of a
screenshot is much nearer its source alone (on bench/dedup_quality.py's copies, 97% of
screenshots reach a similarity of 0.7 with their source by the best view, 82% whole). It
proposes candidates and backs verification; dedup/verify.py decides.

Trained by bench/learned_copy_descriptor.py on CIFAR-10 *train* images and half of the web pool
(the tuning half of bench/dedup_quality.py), never on the images it is measured on. The weights
ship with the package (weights/copy_net.pt, float16, about 0.6 MB).
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from dedup.errors import DedupError
from dedup.views import VERSION, VIEWS

WEIGHTS = Path(__file__).parent / "weights" / "copy_net.pt"
SIDE = 64  # every image is squashed to SIDE x SIDE
DIM = 128
PER_ITEM = 2  # descriptors per evaluation item: itself and its mirror
BATCH = 256


def build(width: int = 16, dim: int = DIM):
    """The network (untrained)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def block(i: int, o: int, stride: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)
        )

    class CopyNet(nn.Module):
        def __init__(self):
            super().__init__()
            w = width
            self.body = nn.Sequential(
                block(3, w, 2), block(w, w, 1), block(w, 2 * w, 2), block(2 * w, 2 * w, 1),
                block(2 * w, 4 * w, 2), block(4 * w, 4 * w, 1), block(4 * w, 8 * w, 2),
                block(8 * w, 8 * w, 1),
            )  # fmt: skip
            self.head = nn.Linear(8 * w, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """uint8 (N, SIDE, SIDE, 3) -> unit vectors (N, dim)."""
            x = x.permute(0, 3, 1, 2).float().div(255).sub(0.45).div(0.25)
            h = self.body(x.contiguous(memory_format=torch.channels_last))
            h = h.float().clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)  # GeM
            return F.normalize(self.head(h), dim=1)

    return CopyNet()


def squash(img: Image.Image) -> np.ndarray:
    """The network's input: the whole image, squashed to SIDE x SIDE (uint8 HWC)."""
    return np.asarray(img.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR))


@functools.cache
def _loaded():
    import torch

    try:
        saved = torch.load(io.BytesIO(_weights()), map_location="cpu", weights_only=True)
        net = build(saved["width"], saved["dim"])
        net.load_state_dict({k: v.float() for k, v in saved["state"].items()})
    except (pickle.UnpicklingError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise _unusable(exc) from exc
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return net.eval().to(device, memory_format=torch.channels_last)


@functools.cache
def key() -> str:
    """Names the cache of pool descriptors: new weights, or other views found, make new
    descriptors."""
    return f"copy-net-{hashlib.sha256(_weights()).hexdigest()[:12]}-views{VIEWS}v{VERSION}"


def _weights() -> bytes:
    try:
        return WEIGHTS.read_bytes()
    except OSError as exc:
        raise _unusable(exc) from exc


def _unusable(exc: Exception) -> DedupError:
    return DedupError(
        f"cannot load the learned copy descriptor's weights ({WEIGHTS}: {type(exc).__name__}: "
        f"{exc}); reinstall kd3 or restore the file"[:400]
    )


def item_descriptors(squashed: list[np.ndarray]) -> np.ndarray:
    """(len(squashed) * PER_ITEM, dim) from evaluation images' `squash`: each image, then its
    mirror (rows 2i, 2i+1)."""
    if not squashed:
        return np.zeros((0, DIM), np.float32)
    images = np.stack(squashed)
    both = np.stack([images, images[:, :, ::-1]], 1)
    return describe(both.reshape(-1, SIDE, SIDE, 3))


def view_descriptors(squashed: list[list[np.ndarray]]) -> np.ndarray:
    """(len(squashed), VIEWS * dim): the descriptors of each pool image's views (`squash` of
    each of dedup/views.py `pictures`), zeros for a view it does not have."""
    out = np.zeros((len(squashed), VIEWS, DIM), np.float32)
    counts = [len(v) for v in squashed]
    if sum(counts):
        described = describe(np.stack([v for views in squashed for v in views]))
        rows = np.repeat(np.arange(len(squashed)), counts)
        out[rows, np.concatenate([np.arange(c) for c in counts])] = described
    return out.reshape(len(squashed), -1)


def describe(squashed: np.ndarray) -> np.ndarray:
    """uint8 (N, SIDE, SIDE, 3) -> float32 (N, dim) unit vectors."""
    import torch

    net = _loaded()
    device = next(net.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(squashed), BATCH):
            batch = torch.from_numpy(np.ascontiguousarray(squashed[start : start + BATCH]))
            out.append(net(batch.to(device)).cpu())
    if not out:
        return np.zeros((0, DIM), np.float32)
    return torch.cat(out).numpy().astype(np.float32)
